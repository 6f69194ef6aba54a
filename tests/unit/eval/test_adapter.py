"""Our lm-eval adapter scores a fine-tuning response as training encoded it: apart from its prompt."""

import torch
from lm_eval.api.instance import Instance

from neox.data.tokenizer import load_tokenizer
from neox.eval.adapter import NeoxLM
from neox.model.checkpoint import save_model
from tests.conftest import tiny_model

PROMPT, RESPONSE = "<|user|>\nOnce upon a time?\n<|assistant|>\n", "The quick brown fox."


def request(task: str) -> Instance:
    return Instance("loglikelihood", doc={}, arguments=(PROMPT, RESPONSE), idx=0, metadata=(task, 0, 1))


def test_a_response_is_scored_encoded_apart_from_its_prompt_and_other_tasks_as_lm_eval_pairs_them(
    tmp_path, tokenizer_file
):
    model = tiny_model()
    adapter = NeoxLM(pretrained=str(save_model(model, tmp_path / "m", tokenizer_file=tokenizer_file)))
    tok = load_tokenizer(tokenizer_file)
    prompt, response = tok.encode(PROMPT).ids, tok.encode(RESPONSE).ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([prompt + response[:-1]])), dim=-1)[0]
    expected = float(logprobs[len(prompt) - 1 :].gather(1, torch.tensor(response)[:, None]).sum())
    (ours, _), (paired, _) = adapter.loglikelihood([request("neox_response"), request("neox_lastword")])
    assert abs(ours - expected) < 1e-4
    # lm-eval moves the prompt's trailing newline into the continuation: one more token scored
    assert paired < ours - 1e-3

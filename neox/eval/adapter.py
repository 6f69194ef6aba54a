"""lm-eval's model `neox`: our GPT-NeoX checkpoint evaluated natively, on the current lm-eval.

Tokenization and context handling follow lm-eval's `hf` model exactly (its TemplateLM pair encoding, the same
left truncation to the model's context, the same rolling windows), so a checkpoint scores the same through
this adapter as through `hf` on its Hugging Face export. Requests run longest first in batches; generation
uses our KV cache.

    lm_eval --model neox --model_args pretrained=RUN/final/model,batch_size=16 --tasks ...
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  (the built-in models register first; a model registered before them hides them)
import torch
import torch.nn.functional as F
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from neox.data.tokenizer import eod_id, load_tokenizer
from neox.errors import DataError
from neox.eval.config import RESPONSE_TASK
from neox.model.checkpoint import load_model, parse_dtype, tokenizer_path
from neox.model.generate import SamplingConfig, generate
from neox.runtime.progress import progress


@register_model("neox")
class NeoxLM(TemplateLM):
    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        batch_size: int | str = 8,
        dtype: str = "float32",
        max_gen_toks: int | str = 256,
        **_: object,
    ) -> None:
        super().__init__()
        tokenizer = tokenizer_path(pretrained)
        if tokenizer is None:
            raise DataError(f"{pretrained} has no tokenizer.json: lm-eval needs the checkpoint's tokenizer")
        self.tokenizer = load_tokenizer(tokenizer)
        self.model = load_model(pretrained, dtype=parse_dtype(dtype), device=device).eval()
        self._device = torch.device(device)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.max_length = self.model.cfg.max_position_embeddings
        self._eot = eod_id(self.tokenizer)

    @property
    def eot_token_id(self) -> int:
        return self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: object) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's, without its bar over the tokenizing (milliseconds): the scoring shows ours. A response of
        `neox_response` is encoded apart from its prompt, as fine-tuning encodes them (lm-eval's pair encoding
        would move the prompt's trailing newline into the response, scoring a token training masks)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        apart = [i for i, request in enumerate(requests) if request.task_name == RESPONSE_TASK]
        together = [i for i, request in enumerate(requests) if request.task_name != RESPONSE_TASK]
        if together:
            scored = super().loglikelihood([requests[i] for i in together], disable_tqdm=True)
            for i, result in zip(together, scored, strict=True):
                results[i] = result
        if apart:
            pairs = [requests[i].args for i in apart]
            encoded = [((c, t), self.tok_encode(c) or [self.eot_token_id], self.tok_encode(t)) for c, t in pairs]
            for i, result in zip(apart, self._loglikelihood_tokens(encoded), strict=True):
                results[i] = result
        return results

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_: object) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding yields the continuation) per request. Its bar
        ignores `disable_tqdm`, which lm-eval sets for ranks other than 0 and `loglikelihood` above for its own;
        we evaluate in one process."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        bar = progress(total=len(requests), desc="neox loglikelihood")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :][:-1] for i in chunk]
            width = max(len(x) for x in inputs)
            padded = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, tokens in enumerate(inputs):  # right padding: causal attention keeps it out of real positions
                padded[row, : len(tokens)] = torch.tensor(tokens)
            logprobs = F.log_softmax(self.model(padded.to(self._device)).float(), dim=-1).cpu()
            for row, i in enumerate(chunk):
                continuation = requests[i][2]
                end = len(inputs[row])
                window = logprobs[row, end - len(continuation) : end]
                target = torch.tensor(continuation)
                answer = (float(window.gather(1, target[:, None]).sum()), bool((window.argmax(-1) == target).all()))
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(chunk))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, scored in disjoint windows of the model's context (as `hf`)."""
        windows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            for context, continuation in map(
                utils.make_disjoint_window,
                utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[owner] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with `do_sample` and `temperature`) continuations, cut at the first stop string.
        Prompts of equal token length share a batch, since our KV cache has no padding mask."""
        prepared = []
        for context, kwargs in (request.args for request in requests):
            kwargs = dict(kwargs)
            until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            prompt = self.tok_encode(context)[-(self.max_length - new_tokens) :] or [self.prefix_token_id]
            prepared.append((prompt, until, new_tokens, temperature))
        results: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (-len(prepared[i][0]), prepared[i][2:]))
        bar = progress(total=len(requests), disable=disable_tqdm, desc="neox generate_until")
        while order:
            first = prepared[order[0]]
            same = [i for i in order if len(prepared[i][0]) == len(first[0]) and prepared[i][2:] == first[2:]]
            chunk = same[: self.batch_size]
            taken = set(chunk)
            order = [i for i in order if i not in taken]
            prompts = torch.tensor([prepared[i][0] for i in chunk], device=self._device)
            sampling = SamplingConfig(max_new_tokens=first[2], temperature=first[3], eos_token_id=self.eot_token_id)
            out = generate(self.model, prompts, sampling)[:, prompts.shape[1] :].tolist()
            for row, i in enumerate(chunk):
                tokens = out[row]
                if self.eot_token_id in tokens:
                    tokens = tokens[: tokens.index(self.eot_token_id)]
                text = self.tok_decode(tokens)
                for stop in prepared[i][1]:
                    text = text.split(stop)[0] if stop else text
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(chunk))
        bar.close()
        return results

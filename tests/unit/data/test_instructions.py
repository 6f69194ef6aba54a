"""Instruction data: rendered with the chat template, prompt tokens labelled -100, stored as gpt-neox stores it."""

import gzip
import json

import numpy as np
import pytest

from neox.data.dataset import IGNORE_INDEX, build_datasets, inputs_and_targets
from neox.data.indexed import IndexedDataset
from neox.data.instructions import DEFAULT_TEMPLATE, InstructionsConfig, instructions_stage, source_files
from neox.data.tokenize import data_prefix, label_prefix
from neox.data.tokenizer import load_tokenizer
from neox.errors import ConfigError, DataError
from neox.pipeline.layout import CHAT_TEMPLATE_FILE, TOKENIZER_FILE
from neox.pipeline.stage import read_manifest


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


EXAMPLES = [
    {"prompt": "Name a fox.", "response": "The quick brown fox."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Once?"},
            {"role": "assistant", "content": "Upon a time."},
            {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "It read."},
        ]
    },
]


def test_only_the_assistant_turns_are_scored_token_by_token(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "chat.jsonl", EXAMPLES)
    out = instructions_stage(InstructionsConfig(sources=(str(source),)), tokenizer_file, tmp_path / "work").path
    tok = load_tokenizer(tokenizer_file)
    text, labels = IndexedDataset(data_prefix(out)), IndexedDataset(label_prefix(out))
    assert data_prefix(out).name == "instructions_text_document"
    assert label_prefix(out).name == "instructions_text_label_document"  # gpt-neox's names for the key "text"
    assert text.dtype == labels.dtype == np.int32 and list(text.sizes) == list(labels.sizes)

    def scored_text(i: int) -> str:
        ids, marks = text[i], labels[i]
        scored = marks != IGNORE_INDEX
        assert (marks[scored] == ids[scored]).all()  # a scored label is the token itself
        return tok.decode(ids[scored].tolist(), skip_special_tokens=False)

    first = tok.decode(text[0].tolist(), skip_special_tokens=False)
    assert first == "<|user|>\nName a fox.\n<|assistant|>\nThe quick brown fox.<|endoftext|>"
    assert scored_text(0) == "The quick brown fox.<|endoftext|>"
    assert scored_text(1) == "Upon a time.<|endoftext|>It read.<|endoftext|>"
    # the masked tokens are exactly those of the prompt as inference renders it (add_generation_prompt)
    prompt_ids = tok.encode("<|user|>\nName a fox.\n<|assistant|>\n").ids
    assert labels[0][: len(prompt_ids)].tolist() == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[0][len(prompt_ids) :].tolist() == text[0][len(prompt_ids) :].tolist()
    assert (out / TOKENIZER_FILE).exists() and "eos_token" in (out / CHAT_TEMPLATE_FILE).read_text()
    assert read_manifest(out)["stats"]["scored_tokens"] == int(sum((labels[i] != IGNORE_INDEX).sum() for i in (0, 1)))


def test_a_chat_opening_with_the_assistant_scores_its_turn_not_the_generation_prompt(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "assistant", "content": "Hello."}]}])
    out = instructions_stage(InstructionsConfig(sources=(str(source),)), tokenizer_file, tmp_path / "work").path
    text, labels = IndexedDataset(data_prefix(out))[0], IndexedDataset(label_prefix(out))[0]
    tok = load_tokenizer(tokenizer_file)
    assert tok.decode(text.tolist(), skip_special_tokens=False) == "<|assistant|>\nHello.<|endoftext|>"
    header = len(tok.encode("<|assistant|>\n").ids)
    assert (labels[:header] == IGNORE_INDEX).all() and (labels[header:] == text[header:]).all()


@pytest.mark.parametrize(
    ("template", "error", "message"),
    [
        ("", DataError, "no token of the 2 examples is scored"),  # an empty file: training would learn nothing
        ("{% for m in messages %}\n{{ m['content'] }", ConfigError, "the chat template does not parse: line 2"),
    ],
    ids=["scores-nothing", "does-not-parse"],
)
def test_a_template_unfit_for_every_example_is_one_error_and_publishes_nothing(
    tmp_path, tokenizer_file, template, error, message
):
    source = write_jsonl(tmp_path / "chat.jsonl", EXAMPLES)
    (tmp_path / "t.jinja").write_text(template)
    cfg = InstructionsConfig(sources=(str(source),), chat_template=str(tmp_path / "t.jinja"))
    with pytest.raises(error, match=message):
        instructions_stage(cfg, tokenizer_file, tmp_path / "work")
    assert not list((tmp_path / "work" / "instructions").glob("[0-9a-f]*"))


def test_a_prompt_has_the_ids_inference_gives_its_whole_rendering(tmp_path, tokenizer_file):
    """The prompt is encoded as one text, as at inference: a user turn ending in a newline before the template's
    own newline encodes as the whole rendering does, not as two pieces would."""
    example = {"prompt": "Name a fox.\n", "response": "The quick brown fox."}
    out = instructions_stage(
        InstructionsConfig(sources=(str(write_jsonl(tmp_path / "c.jsonl", [example])),)), tokenizer_file, tmp_path
    ).path
    tok = load_tokenizer(tokenizer_file)
    prompt = tok.encode("<|user|>\nName a fox.\n\n<|assistant|>\n").ids
    text, labels = IndexedDataset(data_prefix(out))[0], IndexedDataset(label_prefix(out))[0]
    assert text[: len(prompt)].tolist() == prompt and (labels[: len(prompt)] == IGNORE_INDEX).all()
    assert (labels[len(prompt) :] != IGNORE_INDEX).all()


def test_bad_lines_are_rejected_with_their_reason_and_the_rest_kept(tmp_path, tokenizer_file):
    source = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            EXAMPLES[0],
            "{not json",
            {"prompt": "no response"},
            {"messages": [{"role": "user", "content": "last is not the assistant"}]},
            {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"prompt": "empty", "response": "  "},
            '{"prompt": "a lone \\ud800 surrogate", "response": "x"}',
            {"messages": [{"role": "assistant", "content": "no question"}]},
        ],
    )
    template = tmp_path / "strict.jinja"  # a template may refuse a chat, as Hugging Face templates do
    refusing = (
        "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('a chat starts with a question') }}{% endif %}"
    )
    template.write_text(refusing + DEFAULT_TEMPLATE.read_text())
    cfg = InstructionsConfig(sources=(str(source),), chat_template=str(template))
    out = instructions_stage(cfg, tokenizer_file, tmp_path / "work").path
    stats = read_manifest(out)["stats"]
    assert stats["documents"] == 1
    assert stats["rejects"] == {
        "not JSON": 1,
        "neither messages nor prompt and response": 1,
        "the last message is not the assistant's": 1,
        "a message's role is not one of system, user, assistant": 1,
        "empty response": 1,
        "a lone surrogate (an unpaired \\ud800-\\udfff escape): not text": 1,
        "the chat template refused it: a chat starts with a question": 1,
    }
    lines = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["line"]) for r in lines] == [("mixed.jsonl", n) for n in (2, 3, 4, 5, 6, 7, 8)]


def test_a_byte_order_mark_is_dropped_and_bytes_that_are_not_utf8_are_rejected_not_replaced(tmp_path, tokenizer_file):
    source = tmp_path / "windows.jsonl"
    good = json.dumps(EXAMPLES[0]).encode()
    latin1 = json.dumps({"prompt": "Caf\u00e9?", "response": "Oui."}, ensure_ascii=False).encode("latin-1")
    source.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + latin1 + b"\n")
    out = instructions_stage(InstructionsConfig(sources=(str(source),)), tokenizer_file, tmp_path / "work").path
    stats = read_manifest(out)["stats"]
    assert stats["documents"] == 1
    assert stats["rejects"] == {"not UTF-8 text: invalid continuation byte at byte 15": 1}


def test_compressed_instruction_files_zstd_cannot_read_are_refused_by_name(tmp_path, tokenizer_file):
    (tmp_path / "chats.jsonl.gz").write_bytes(gzip.compress(json.dumps(EXAMPLES[0]).encode()))
    with pytest.raises(DataError, match="chats.jsonl.gz is gzip-compressed, which is not read"):
        instructions_stage(InstructionsConfig(sources=(str(tmp_path),)), tokenizer_file, tmp_path / "work")
    with pytest.raises(DataError, match="chats.jsonl.gz is gzip-compressed, which is not read"):
        source_files((str(tmp_path / "chats.jsonl.gz"),))


def test_no_usable_example_is_an_error_and_publishes_nothing(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "bad.jsonl", ["{", "[]"])
    with pytest.raises(DataError, match="no usable example"):
        instructions_stage(InstructionsConfig(sources=(str(source),)), tokenizer_file, tmp_path / "work")
    assert not list((tmp_path / "work" / "instructions").glob("[0-9a-f]*"))


def test_a_template_that_does_not_extend_its_renderings_is_refused(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "chat.jsonl", EXAMPLES[:1])
    template = tmp_path / "reversed.jinja"
    template.write_text("{% for m in messages | reverse %}{{ m['content'] }}\n{% endfor %}")
    cfg = InstructionsConfig(sources=(str(source),), chat_template=str(template))
    with pytest.raises(ConfigError, match="not a prefix"):
        instructions_stage(cfg, tokenizer_file, tmp_path / "work")


def test_without_prompt_masking_every_token_is_scored(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "chat.jsonl", EXAMPLES)
    cfg = InstructionsConfig(sources=(str(source),), mask_prompt=False)
    out = instructions_stage(cfg, tokenizer_file, tmp_path / "work").path
    text, labels = IndexedDataset(data_prefix(out)), IndexedDataset(label_prefix(out))
    assert all((labels[i] == text[i]).all() for i in range(len(text)))


def test_fine_tuning_samples_hold_one_example_each_padded_and_unscored_past_its_end(tmp_path, tokenizer_file):
    source = write_jsonl(tmp_path / "chat.jsonl", EXAMPLES * 5)
    out = instructions_stage(InstructionsConfig(sources=(str(source),)), tokenizer_file, tmp_path / "work").path
    text, labels = IndexedDataset(data_prefix(out)), IndexedDataset(label_prefix(out))
    seq_length, pad = 64, 0
    source_entry = {"prefix": data_prefix(out), "split_prefixes": {}, "weight": 1.0}
    source_entry.update(label_prefix=label_prefix(out), pad_id=pad)
    datasets = build_datasets([source_entry], "8,2,0", {"train": 20, "valid": 4}, seq_length, seed=3)
    train, valid = datasets["train"], datasets["valid"]
    assert len(train) >= 20 and sorted(set(train.doc_idx.tolist())) == list(range(8))
    assert sorted(set(valid.doc_idx.tolist())) == [8, 9]  # the split cuts examples, as gpt-neox cuts documents
    for i in range(len(train)):
        sample = train[i]
        document = int(train.doc_idx[i])
        n = min(len(text[document]), seq_length + 1)
        assert sample.shape == (2, seq_length + 1)
        assert sample[0, :n].tolist() == text[document][:n].tolist()
        assert sample[1, :n].tolist() == labels[document][:n].tolist()
        assert (sample[0, n:] == pad).all() and (sample[1, n:] == IGNORE_INDEX).all()
        inputs, targets = inputs_and_targets(sample)
        assert inputs.tolist() == sample[0, :-1].tolist() and targets.tolist() == sample[1, 1:].tolist()


def test_an_example_longer_than_the_sequence_is_cut_at_its_end(tmp_path, tokenizer_file):
    long = {"prompt": "Name a fox.", "response": "The quick brown fox jumps over the lazy dog. " * 10}
    out = instructions_stage(
        InstructionsConfig(sources=(str(write_jsonl(tmp_path / "long.jsonl", [long])),)), tokenizer_file, tmp_path
    ).path
    text = IndexedDataset(data_prefix(out))
    source_entry = {"prefix": data_prefix(out), "split_prefixes": {}, "weight": 1.0, "label_prefix": label_prefix(out)}
    sample = build_datasets([source_entry], "1,0,0", {"train": 1}, 16, seed=0)["train"][0]
    assert len(text[0]) > 17 and sample[0].tolist() == text[0][:17].tolist()


def test_held_out_examples_become_one_response_row_per_assistant_turn(tmp_path, tokenizer_file):
    from neox.eval.config import EvalDataConfig
    from neox.eval.data import RESPONSES_FILE, eval_data_stage

    source = write_jsonl(tmp_path / "chat.jsonl", [EXAMPLES[0]] * 2 + [EXAMPLES[1]] * 2)
    out = instructions_stage(InstructionsConfig(sources=(str(source),)), tokenizer_file, tmp_path / "work").path
    eval_data = eval_data_stage(out, tmp_path / "work", EvalDataConfig(split="2,0,2", lastword_chars=20)).path
    rows = [json.loads(line) for line in (eval_data / RESPONSES_FILE).read_text().splitlines()]
    first_turn = "<|system|>\nBe brief.\n<|user|>\nOnce?\n<|assistant|>\n"
    turns = [
        (first_turn, "Upon a time.<|endoftext|>"),
        (first_turn + "Upon a time.<|endoftext|><|user|>\nAnd?\n<|assistant|>\n", "It read.<|endoftext|>"),
    ]
    assert [(r["document"], r["context"], r["target"]) for r in rows] == [(d, c, t) for d in (2, 3) for c, t in turns]
    assert read_manifest(eval_data)["stats"]["responses"] == 4


def test_a_split_leaving_no_examples_to_validate_on_is_refused_before_training(tmp_path, tokenizer_file, capsys):
    from neox.train.config import TrainConfig
    from neox.train.runs import check_examples

    long = {"prompt": "Name a fox.", "response": "The quick brown fox jumps over the lazy dog. " * 10}
    out = instructions_stage(
        InstructionsConfig(sources=(str(write_jsonl(tmp_path / "c.jsonl", [EXAMPLES[0]] * 9 + [long])),)),
        tokenizer_file,
        tmp_path / "work",
    ).path
    with pytest.raises(ConfigError, match="train.split 90,5,5 leaves no valid examples of the 10"):
        check_examples(TrainConfig(model=("m.yml",), split="90,5,5", seq_length=32), out)
    check_examples(TrainConfig(model=("m.yml",), split="8,1,1", seq_length=200), out)
    assert "1 of 10 examples (10.0%) are longer than seq_length + 1 = 201 tokens" in capsys.readouterr().err

"""The instructions stage: supervised fine-tuning data, JSON lines of

    {"prompt": "...", "response": "..."}                                   or
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

rendered with a Jinja chat template (Hugging Face's `apply_chat_template` convention; `configs/chat/default.jinja`
unless one is given) and tokenized into two GPT-NeoX mmap datasets, as gpt-neox's
`preprocess_data_with_chat_template.py` stores them:

    PREFIX_text_document.bin/.idx          the token ids of each example (int32)
    PREFIX_text_label_document.bin/.idx    the same ids where the loss scores them, -100 where it does not

Only assistant turns are scored (`mask_prompt`): the template is rendered turn by turn, and the text up to each
assistant turn (`add_generation_prompt`) is what inference will be given, so it is masked; the text between two
scored turns is encoded as one, so a one-turn prompt has exactly the ids inference gives its rendering. An
example not ending in the end-of-text id gets one. The tokenizer and the template are stored with the data, so
every later stage renders and decodes as training saw. Bad lines (not JSON, no assistant turn, unknown roles, an
empty response, a lone surrogate, a chat the template refuses) go to rejects.jsonl with the reason.
Examples are streamed: memory is one example plus 4 bytes of size per example.
"""

from __future__ import annotations

import array
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from neox.data.chat import chat_renderer
from neox.data.dataset import IGNORE_INDEX
from neox.data.indexed import write_index
from neox.data.jsonl import SHARD_SUFFIXES, Rejects, read_lines, refuse_compressed_shards, unread_compression
from neox.data.sample import build_sample_instructions
from neox.data.tokenizer import eod_id, load_tokenizer
from neox.errors import ConfigError, DataError, MissingInput
from neox.pipeline.configfile import Bool, PlainName, Str, section
from neox.pipeline.layout import CHAT_TEMPLATE_FILE, TOKENIZER_FILE
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, run_stage, sha256_file
from neox.runtime.progress import progress

STAGE = "instructions"
CODE_VERSION = "4"  # 2: the text between scored turns encoded as one; 3: an opening assistant turn's header masked;
# 4: a byte order mark is dropped, a line that is not UTF-8 is rejected (it was decoded with replacement characters)
ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "chat" / "default.jinja"
DTYPE = np.dtype(np.int32)  # the label dataset holds -100; gpt-neox writes both as int32


@section
class InstructionsConfig:
    """`finetune.instructions`: instruction data for supervised fine-tuning."""

    sources: tuple[Str, ...] = ()
    """JSONL files (.jsonl or .jsonl.zst), or folders of them, relative to where you run: one example per line,
    {"prompt", "response"} or {"messages": [{"role", "content"}, ...]}."""
    corpus: Literal["sample"] | None = None
    """`sample`: the embedded instruction set instead of sources (~700 questions on standard-library functions,
    answered from their docstrings)."""
    chat_template: Str | None = None
    """A Jinja chat template file (Hugging Face's apply_chat_template convention; default:
    configs/chat/default.jinja). It is stored with the data and the fine-tuned model."""
    prefix: PlainName = "instructions"
    """Output file names: PREFIX_text_document and PREFIX_text_label_document."""
    mask_prompt: Bool = True
    """Score only the assistant turns (false: every token, as continued pretraining on chats)."""

    def __post_init__(self) -> None:
        if bool(self.sources) == (self.corpus is not None):
            raise ValueError("give sources (JSONL files) or corpus: sample, one of the two")
        for source in self.sources:  # an explicit file; a folder's are checked when it is read
            if reason := unread_compression(source):
                raise ValueError(f"sources: {reason}")


def source_files(sources: tuple[str, ...]) -> list[Path]:
    """The JSONL files the sources name, folders expanded in name order."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(path.iterdir())
            refuse_compressed_shards(str(p) for p in found)
            found = [p for p in found if p.name.endswith(SHARD_SUFFIXES)]
            if not found:
                raise MissingInput(f"{path} holds no .jsonl or .jsonl.zst file")
            files += found
        elif path.is_file():
            if reason := unread_compression(str(path)):
                raise DataError(reason)
            files.append(path)
        else:
            raise MissingInput(f"instruction data {path} does not exist")
    return files


def as_messages(record: Any) -> list[dict[str, str]]:
    """The chat of one example, or ValueError naming what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages is not a non-empty list")
    elif "prompt" in record and "response" in record:
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    else:
        raise ValueError("neither messages nor prompt and response")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"a message's role is not one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError("a message's content is not a string")
        try:
            message["content"].encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate (an unpaired \\ud800-\\udfff escape): not text") from None
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message is not the assistant's")
    if not messages[-1]["content"].strip():
        raise ValueError("empty response")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def segments(messages: list[dict[str, str]], render: Callable, mask_prompt: bool) -> list[tuple[str, bool]]:
    """The rendered chat cut into (text, scored) pieces: what precedes each assistant turn (through its
    generation prompt) and the turn itself. A template whose renderings do not extend one another cannot be cut
    so; that is a ConfigError (the template, not the example, is wrong)."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":  # the turn first: a template refusing the chat says why in its words
            turn = render(messages[: i + 1], False)
            cuts = [(render(messages[:i], True), not mask_prompt), (turn, True)]
        else:
            cuts = [(render(messages[: i + 1], False), not mask_prompt)]
        for text, scored in cuts:
            if not text.startswith(done):
                raise ConfigError(
                    "the chat template's rendering of the first turns is not a prefix of the next rendering; "
                    "fine-tuning cannot tell prompt from response with it"
                )
            if text != done:
                pieces.append((text[len(done) :], scored))
            done = text
    # neighbours scored alike are encoded as one text, so a prompt's ids are those of its whole rendering, as the
    # model is given it at inference
    merged: list[tuple[str, bool]] = []
    for text, scored in pieces:
        if merged and merged[-1][1] == scored:
            merged[-1] = (merged[-1][0] + text, scored)
        else:
            merged.append((text, scored))
    return merged


def encode_example(
    pieces: list[tuple[str, bool]], encode: Callable[[str], list[int]], eod: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and labels (-100 where not scored) of one example, ending in the end-of-text id."""
    tokens: list[int] = []
    labels: list[int] = []
    for text, scored in pieces:
        ids = encode(text)
        tokens += ids
        labels += ids if scored else [IGNORE_INDEX] * len(ids)
    if not tokens or tokens[-1] != eod:
        tokens.append(eod)
        labels.append(eod if pieces and pieces[-1][1] else IGNORE_INDEX)
    return np.asarray(tokens, dtype=DTYPE), np.asarray(labels, dtype=DTYPE)


def read_examples(
    files: list[Path], rejects: Rejects, render: Callable, mask_prompt: bool
) -> Iterator[list[tuple[str, bool]]]:
    """Each usable example's rendered pieces; the others go to `rejects` with the reason."""
    from jinja2 import TemplateError, TemplateSyntaxError

    for file in files:
        for number, raw in enumerate(read_lines(file), start=1):
            if not raw.strip():
                continue
            line = raw.decode("utf-8", errors="replace")  # what the rejects log shows
            try:
                # bytes: json takes a UTF-8 byte order mark (Windows editors write one) as the encoding's
                yield segments(as_messages(json.loads(raw)), render, mask_prompt)
            except json.JSONDecodeError:
                rejects.add(file.name, number, "not JSON", line[:1000])
            except UnicodeDecodeError as err:  # before ValueError, its base: no byte is replaced behind your back
                rejects.add(file.name, number, f"not UTF-8 text: {err.reason} at byte {err.start}", line[:1000])
            except ConfigError:  # the template itself is wrong (a ValueError too): no line is to blame
                raise
            except TemplateSyntaxError as err:
                raise ConfigError(f"the chat template does not parse: line {err.lineno}: {err.message}") from None
            except ValueError as err:
                rejects.add(file.name, number, str(err), line[:1000])
            except TemplateError as err:  # a template may refuse a chat (raise_exception), e.g. roles out of order
                rejects.add(file.name, number, f"the chat template refused it: {err}", line[:1000])


def instructions_stage(cfg: InstructionsConfig, tokenizer_file: str | Path, work_root: str | Path) -> StageResult:
    """Run (or reuse) the instructions stage on the sources, with the base model's tokenizer."""
    if cfg.corpus == "sample":
        files = [build_sample_instructions(Path(work_root) / "mirror" / "instructions.jsonl")]
    else:
        files = source_files(cfg.sources)
    template_file = Path(cfg.chat_template) if cfg.chat_template else DEFAULT_TEMPLATE
    if not template_file.is_file():
        raise MissingInput(f"chat template {template_file} does not exist")
    tokenizer_file = Path(tokenizer_file)
    if not tokenizer_file.is_file():
        raise MissingInput(f"tokenizer file {tokenizer_file} does not exist")

    def body(run: StageRun) -> None:
        template = template_file.read_text()
        tok = load_tokenizer(tokenizer_file)
        eod = eod_id(tok)
        render = chat_renderer(tokenizer_file, template)

        def encode(text: str) -> list[int]:
            return tok.encode(text, add_special_tokens=False).ids

        text_prefix = run.tmp / f"{cfg.prefix}_text_document"
        label_prefix = run.tmp / f"{cfg.prefix}_text_label_document"
        sizes = array.array("i")
        rejects = Rejects(run.tmp / "rejects.jsonl")
        scored = total = 0
        with open(f"{text_prefix}.bin", "wb") as text_bin, open(f"{label_prefix}.bin", "wb") as label_bin:
            examples = read_examples(files, rejects, render, cfg.mask_prompt)
            for pieces in progress(examples, desc="instructions", unit=" examples"):
                tokens, labels = encode_example(pieces, encode, eod)
                text_bin.write(tokens.tobytes())
                label_bin.write(labels.tobytes())
                sizes.append(len(tokens))
                total += len(tokens)
                scored += int((labels != IGNORE_INDEX).sum())
        rejects.close()
        if not sizes:
            raise DataError(
                f"no usable example in {', '.join(map(str, files))} (see {len(rejects.counts)} reasons: "
                f"{rejects.counts})"
            )
        if not scored:
            raise DataError(
                f"no token of the {len(sizes)} examples is scored: the chat template renders no assistant text "
                f"after its generation prompt ({template_file})"
            )
        for prefix in (text_prefix, label_prefix):
            write_index(f"{prefix}.idx", lambda: [np.frombuffer(sizes, dtype=np.int32)], DTYPE)
        shutil.copyfile(tokenizer_file, run.tmp / TOKENIZER_FILE)
        (run.tmp / CHAT_TEMPLATE_FILE).write_text(template)
        run.stats.update(
            documents=len(sizes),
            sequences=len(sizes),
            tokens=total,
            scored_tokens=scored,
            rejects=rejects.counts,
            dtype=DTYPE.name,
            vocab_size=tok.get_vocab_size(),
            eod_id=eod,
            data_prefix=text_prefix.name,
            label_prefix=label_prefix.name,
            longest=int(max(sizes)),
        )

    inputs = {
        "sources": json.dumps([input_fingerprint(f) for f in files]),
        "tokenizer": sha256_file(tokenizer_file),
        "chat_template": sha256_file(template_file),
    }
    config = {"prefix": cfg.prefix, "mask_prompt": cfg.mask_prompt}
    return run_stage(work_root, STAGE, CODE_VERSION, config, inputs, body)

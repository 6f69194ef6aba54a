"""The `neox` console script, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from neox.model.config import pad_vocab_size
from tests.conftest import NEOX, neox

COMMANDS = {
    "Data": ("sample-corpus", "download", "dedup", "train-tokenizer", "tokenize", "instructions", "data"),
    "Train": ("train", "finetune", "runs", "check", "plan", "reshard"),
    "Eval & registry": ("eval-data", "eval", "register", "promote", "serve"),
    "Cluster": ("cluster",),
    "Tools": ("params", "init-model", "export-hf", "import-hf", "import-neox", "export-neox", "generate", "config"),
}


def test_help_lists_every_command_in_its_group_on_one_line_and_explains_each():
    out = neox("-h").stdout
    assert out == neox("--help").stdout
    panels = {}  # panel title -> the command names listed in it, each row one line
    for line in out.splitlines():
        if line.startswith("╭─ "):
            title = line.removeprefix("╭─ ").split(" ─")[0]
            panels[title] = []
        elif line.startswith("│ ") and panels and title in COMMANDS:
            panels[title].append(line[2:].split()[0] if line[2:3] != " " else None)
    assert {title: tuple(names) for title, names in panels.items() if title in COMMANDS} == COMMANDS
    for command in (c for group in COMMANDS.values() for c in group if c not in ("cluster", "config")):
        assert f"Example: neox {command}" in neox(command, "-h").stdout, command


def test_version_and_shell_completion():
    from importlib.metadata import version

    assert neox("--version").stdout == f"neox-pipeline {version('neox-pipeline')}\n" == neox("-V").stdout
    # Typer takes the shell from the process tree, where the tests may have no shell above them (started with `&`),
    # and ignores the one named; its switch for tests makes it take the named one
    shown = neox("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert "_neox_completion" in shown.stdout


def test_options_with_a_fixed_set_of_values_offer_them(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # a terminal wide enough for the choices not to wrap
    out = neox("eval", "-h").stdout
    assert "<neox|hf>" in out and "<cpu|cuda>" in out and "<float32|bfloat16|float16>" in out
    assert "<test|valid>" in neox("eval-data", "-h").stdout
    assert "<float32|bfloat16|float16>" in neox("export-hf", "-h").stdout


def test_params_prints_the_published_count():
    assert neox("params", "configs/model/pythia-160m.yml", "--vocab-size", "50277").stdout.strip() == "162,322,944"


def test_init_export_import_generate(tmp_path, tokenizer_file):
    neox(
        "init-model", "configs/model/tiny.yml", "--out", tmp_path / "init", "--tokenizer", tokenizer_file, "--seed", "3"
    )
    neox("export-hf", tmp_path / "init", tmp_path / "hf", "--dtype", "float32")
    tokens = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.vocab_size == pad_vocab_size(tokens, 128)
    neox("import-hf", tmp_path / "hf", tmp_path / "back")

    prompt = "Once upon a time"
    greedy = [
        neox("generate", tmp_path / m, "--prompt", prompt, "--max-new-tokens", "8").stdout
        for m in ("init", "hf", "back")
    ]
    assert greedy[0].startswith(prompt) and len(greedy[0]) > len(prompt) + 1
    assert greedy[0] == greedy[1] == greedy[2]  # our checkpoint, its HF export and the re-import agree
    sampled = neox(
        "generate", tmp_path / "init", "--prompt", prompt, "--temperature", "1.0", "--top-p", "0.9", "--seed", "1"
    )
    assert sampled.stdout.startswith(prompt)


@pytest.mark.parametrize(
    "args, message",
    [
        (["params", "missing.yml"], "config file not found: missing.yml"),
        (["export-hf", "not-a-checkpoint", "out"], "config.yml is missing"),
        (["init-model", "configs/model/tiny.yml", "--out", "x"], "give --vocab-size or --tokenizer"),
        (["generate", "configs", "--prompt", "hi"], "neither a neox checkpoint (config.yml) nor a Hugging Face model"),
        (["eval", "configs", "--eval-data", "configs"], "is not a neox checkpoint: model.safetensors is missing"),
        (["eval-data", "configs"], "configs has no manifest.json: not a completed stage output"),
        (["eval-data", "missing"], "missing does not exist"),
        (["check", "configs"], "configs cannot be read as a pipeline YAML file"),
        (["eval", "configs", "--device", "tpu"], "Invalid value for '--device'"),
        (["eval-data", "configs", "--part", "train"], "Invalid value for '--part'"),
        (["generate", "configs", "--prompt", "hi", "--temperature", "nan"], "temperature must be >= 0 and finite"),
        (
            ["init-model", "configs/model/tiny.yml", "--out", "README.md/m", "--vocab-size", "99"],
            "README.md or a folder",
        ),
        (["cluster", "config", "configs"], "configs cannot be read as `terraform output -json`"),
        (["finetune", "configs/pipeline/local.yaml"], "configs/pipeline/local.yaml has no `finetune:` section"),
        (["instructions", "missing.jsonl", "--tokenizer", "t.json"], "instruction data missing.jsonl does not exist"),
        (["instructions", "README.md", "--tokenizer", "configs"], "tokenizer file configs does not exist"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    result = neox(*args, ok=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_existing_output_is_not_clobbered(tmp_path, tokenizer_file):
    neox("init-model", "configs/model/tiny.yml", "--out", tmp_path / "m", "--vocab-size", "100")
    result = neox("init-model", "configs/model/tiny.yml", "--out", tmp_path / "m", "--vocab-size", "100", ok=False)
    assert "already exists" in result.stderr


def test_data_stages_chain_from_the_command_line(tmp_path):
    """sample-corpus -> download (file paths) -> dedup -> train-tokenizer -> tokenize, each printing its output."""
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "02.jsonl.zst").write_bytes(b"")  # from an earlier, larger sample corpus, say
    refused = neox("sample-corpus", tmp_path / "mirror", "--shards", "2", ok=False)
    assert "mirror already holds other shards (02.jsonl.zst): give a new folder" in refused.stderr
    (tmp_path / "mirror" / "02.jsonl.zst").unlink()
    neox("sample-corpus", tmp_path / "mirror", "--shards", "2")
    shards = sorted(str(p) for p in (tmp_path / "mirror").iterdir())
    work = ["--work-root", tmp_path / "work"]
    downloaded = neox("download", *shards, *work).stdout.strip()
    deduped = neox("dedup", downloaded, *work, "--workers", "2").stdout.strip()
    tokenizer = neox("train-tokenizer", deduped, "--vocab-size", "4096", *work).stdout.strip()
    tokenized = Path(neox("tokenize", deduped, "--tokenizer", tokenizer, *work).stdout.strip())
    manifest = json.loads((tokenized / "manifest.json").read_text())
    assert manifest["stats"]["documents"] < 1865 and manifest["stats"]["tokens"] > 5_000_000
    assert (tokenized / "corpus_text_document.idx").exists()
    assert "no shards" in neox("tokenize", tmp_path, "--tokenizer", tokenizer, *work, ok=False).stderr
    (tmp_path / "mixed").mkdir()  # rejected lines are said on the console, not only counted in the manifest
    (tmp_path / "mixed" / "00.jsonl").write_text('{"text": "kept"}\n{broken\n{"txt": "no text"}\n{"text": 1}\n')
    mixed = neox("tokenize", tmp_path / "mixed", "--tokenizer", tokenizer, *work)
    assert "3 lines rejected: no string 'text' field (2); malformed JSON: " in mixed.stderr
    assert f"; see {mixed.stdout.strip()}/rejects.jsonl" in mixed.stderr


def test_instructions_tokenizes_chats_into_a_text_and_a_label_dataset(tmp_path, tokenizer_file):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"prompt": "Once?", "response": "Upon a time."}) + "\n{broken\n")
    result = neox("instructions", chats, "--tokenizer", tokenizer_file, "--work-root", tmp_path)
    out = Path(result.stdout.strip())
    assert (out / "instructions_text_document.bin").exists() and (out / "instructions_text_label_document.idx").exists()
    assert json.loads((out / "manifest.json").read_text())["stats"]["rejects"] == {"not JSON": 1}
    assert f"1 lines rejected {{'not JSON': 1}}, see {out / 'rejects.jsonl'}" in result.stderr  # not only in files


def test_download_retry_flags_out_of_range_are_one_clear_line_naming_the_flag(tmp_path):
    for flag, value, message in (
        ("--retries", "0", "error: --retries: input should be greater than or equal to 1, got 0"),
        ("--timeout", "nan", "error: --timeout: input should be greater than 0, got nan"),
    ):
        result = neox("download", "x.jsonl.zst", "--work-root", tmp_path, flag, value, ok=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_registry_mistakes_are_one_clear_line(tmp_path):
    tracking = ["--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for args, message in (
        (["promote", "nope", "1", *tracking], "error: no registered model 'nope' in sqlite"),
        (["promote", "nope", "abc", *tracking], "error: a model version is a number"),
        (["promote", "nope", "1", "--mlflow-tracking-uri", "sqlit:///m.db"], "sqlit:// is not a store MLflow has"),
        (["register", "configs", *tracking], "configs has no manifest.json: not a completed stage output"),
    ):
        result = neox(*args, ok=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, args


def test_the_tracking_uri_is_the_flag_then_mlflow_tracking_uri_then_the_config_then_mlflow_db(tmp_path, monkeypatch):
    uri = {name: f"sqlite:///{tmp_path / name}.db" for name in ("flag", "env", "config")}
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"train:\n  mlflow_tracking_uri: {uri['config']}\n")

    def store_used(*args) -> str:  # the store `neox promote` looked the model up in, as its error names it
        command = [NEOX, "promote", "nope", "1", *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 2, result.stderr
        return result.stderr.split(" in ")[-1].strip()

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_used("--config", config) == uri["config"]
    assert store_used() == f"sqlite:///{tmp_path / 'mlflow.db'}"  # in the working folder, made absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri["env"])
    assert store_used("--config", config) == uri["env"]
    assert store_used("--config", config, "--mlflow-tracking-uri", uri["flag"]) == uri["flag"]


def test_a_full_disk_is_found_behind_the_errors_that_report_it():
    import errno

    from neox.cli import out_of_space

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("could not write the shard") from err
    except RuntimeError as wrapped:
        assert out_of_space(wrapped) is full
    assert out_of_space(RuntimeError("something else")) is None
    assert out_of_space(OSError(errno.ENOENT, "missing")) is None

"""A pipeline config is checked whole before any stage runs: every shipped config passes, and a mistake at any
depth of any section is refused, naming its dotted path (and for a typo the key that was meant)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neox.errors import ConfigError
from neox.eval.config import OFFLINE_TASKS
from neox.pipeline.check import check_pipeline_config
from neox.train.config import load_train_config
from tests.conftest import REPO

PIPELINES = sorted((REPO / "configs" / "pipeline").glob("*.yaml"))


class _Delete:
    """The value meaning "remove this key"; its repr names the test (an object()'s address differs per process)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_config_is_valid(path):
    check_pipeline_config(path)


def test_the_pile_configs_keep_the_published_batch_and_schedule_on_the_fastest_kernels_measured():
    pythia = load_train_config(REPO / "configs" / "pipeline" / "pile-pythia-160m.yaml")
    assert (pythia.global_batch_size, pythia.seq_length, pythia.train_iters, pythia.lr) == (1024, 2048, 143000, 6e-4)
    neox20b = load_train_config(REPO / "configs" / "pipeline" / "pile-neox-20b.yaml")
    assert (neox20b.global_batch_size, neox20b.train_iters, neox20b.lr, neox20b.zero_stage) == (
        1536,
        150000,
        0.97e-4,
        1,
    )
    assert (neox20b.model_parallel_size, neox20b.pipe_parallel_size, neox20b.data_parallel_size) == (2, 4, 12)
    assert neox20b.activation_checkpointing and neox20b.precision == pythia.precision == "bf16"
    assert neox20b.storage_path.startswith("/fsx/") and neox20b.ray_address == "auto"
    # README, "Training on one GPU": every kernel, not compiled, was the fastest measured correct; the 20B layout
    # never ran the kernels: it keeps PyTorch's
    assert (pythia.cross_entropy, pythia.layer_norm, pythia.rotary, pythia.fused_adamw, pythia.compile) == (
        "liger",
        "liger",
        "liger",
        True,
        False,
    )
    assert (neox20b.cross_entropy, neox20b.layer_norm, neox20b.rotary, neox20b.fused_adamw, neox20b.compile) == (
        "full",
        "torch",
        "torch",
        False,
        False,
    )


MISTAKES = [
    # top level
    ("trian", {}, "trian: unknown key (did you mean train?)"),
    ("work_root", 3, "work_root: input should be a valid string"),
    ("data", DELETE, "no `data:` section (only a fine-tuning config with finetune.instructions may leave it out)"),
    # data
    ("data.corpus", "sampel", "data.corpus: input should be 'sample'"),
    ("data.sample_shards", 0, "data.sample_shards: input should be greater than or equal to 1"),
    ("data.sources", ["a.jsonl.zst"], "data: corpus: sample replaces sources and pile_mirror"),
    ("data.corpus", DELETE, "data: the data section names no input"),
    ("data.dedupe", {}, "data.dedupe: unknown key (did you mean dedup?)"),
    ("data.dedup.thresold", 0.5, "data.dedup.thresold: unknown key (did you mean threshold?)"),
    ("data.dedup.threshold", 1.7, "data.dedup.threshold: input should be less than or equal to 1"),
    ("data.dedup.ngram", "5", "data.dedup.ngram: input should be a valid integer, got '5'"),
    ("data.dedup.bands", 64, "data.dedup: bands x rows (64 x 8) exceeds num_perm (128)"),
    ("data.tokenizer.vocab_sise", 8192, "data.tokenizer.vocab_sise: unknown key (did you mean vocab_size?)"),
    ("data.tokenizer.vocab_size", 10**12, "data.tokenizer.vocab_size: input should be less than or equal to"),
    ("data.tokenizer.from", "tok.json", "data.tokenizer: give vocab_size (train a tokenizer) or from"),
    ("data.tokenizer", "big", "data.tokenizer: must be a mapping of keys, got 'big'"),
    ("data.tokenize.prefix", "../x", "data.tokenize.prefix: string should match pattern"),
    ("data.workers", -2, "data.workers: input should be greater than or equal to 1"),
    ("data.chunk_mb", 0, "data.chunk_mb: input should be greater than or equal to 1"),
    ("data.valid_sources", "val.jsonl.zst", "data.valid_sources: must be a list, got 'val.jsonl.zst'"),
    (
        "data.test_sources",
        ["https://h/t.jsonl.gz#sha256=0"],
        "test_sources: https://h/t.jsonl.gz#sha256=0: t.jsonl.gz is",
    ),
    ("finetune.instructions", {"sources": ["chats.jsonl.gz"]}, "sources: chats.jsonl.gz is gzip-compressed"),
    # train
    ("train.lr_decay_style", "cosin", "train.lr_decay_style: input should be 'cosine', 'linear' or 'constant'"),
    ("train.betas", [0.9], "train.betas.1: field required"),
    ("train.lr", -0.1, "train.lr: input should be greater than 0"),
    ("train.lr", "fast", "train.lr: input should be a valid number, got 'fast'"),
    ("train.weight_decay", -1, "train.weight_decay: input should be greater than or equal to 0"),
    ("train.seed", -5, "train.seed: input should be greater than or equal to 0"),
    ("train.seq_length", 4096, "train.seq_length 4096 exceeds the model's max_position_embeddings 128"),
    ("train.split", "abc", "split must look like '969,30,1'"),
    ("train.split", "90,10", "train.split '90,10' leaves no test documents, which evaluation"),
    ("data.valid_sources", ["val.jsonl.zst"], "the data has named splits and no test one: give data.test_sources"),
    ("train.name", "../../escape", "train.name: string should match pattern"),
    ("train.zero_stage", 5, "train.zero_stage: input should be 0, 1, 2 or 3"),
    ("train.num_workers", True, "train.num_workers: input should be a valid integer, got True"),
    ("train.min_lr", 0.5, "train: min_lr (0.5) exceeds lr (0.001)"),
    ("train.warmpu", 0.1, "train.warmpu: unknown key (did you mean warmup?)"),
    ("train.env", {"1BAD": "x"}, "train: env: 1BAD are not environment variable names"),
    ("train.model", DELETE, "train.model must name at least one GPT-NeoX model YAML"),
    ("train.model", 5, "train.model must be a model YAML path or a list of them, got 5"),
    ("train.storage_path", "s3://bucket/train", "flows evaluate, register and retrain from the final checkpoint"),
    ("train.data", [], "train: data: give a tokenize stage output, or a list of at least one"),
    ("train.data_weights", [1, 2], "train: data_weights: 2 weights for 0 datasets"),
    ("train.data_weights", [-1], "train.data_weights.0: input should be greater than or equal to 0"),
    ("train.data_weights", [float("inf")], "train: data_weights: the weights must be finite"),
    # eval
    ("eval.dtype", "int8", "eval.dtype: input should be 'float32', 'bfloat16' or 'float16'"),
    ("eval.tasks", [], "eval: tasks names no task"),
    ("eval.device", "tpu", "eval.device: string should match pattern"),
    ("eval.data.part", "train", "eval.data.part: input should be 'test' or 'valid'"),
    ("eval.data.max_documents", 0, "eval.data.max_documents: input should be greater than or equal to 1"),
    ("eval.data.split", "1,1,1", "eval.data.split: unknown key"),
    # registry
    ("registry.nmae", "m", "registry.nmae: unknown key (did you mean name?)"),
    ("registry.name", "org/model", "registry.name: 'org/model' is not an MLflow model name"),
    ("registry.name", "  ", "registry.name: '  ' is not an MLflow model name: not blank"),
    ("registry.rule.metrc", "x", "registry.rule.metrc: unknown key (did you mean metric?)"),
    ("registry.rule.metric", "neox_heldout/bits_per_bite", "neox_heldout reports word_perplexity, byte_perplexity"),
    ("registry.rule.metric", "lambada/acc", "lambada is not in eval.tasks"),
    ("registry.rule.direction", "down", "registry.rule.direction: input should be 'minimize' or 'maximize'"),
    ("registry.rule.guards", [{"metric": "neox_lastword/acc"}], "registry.rule.guards.0.direction: field required"),
    ("registry.rule.floors", {"neox_heldout/bits_per_byte": {"max": "eight"}}, "input should be a valid number"),
    ("registry.rule.floors", {"neox_heldout/bits_per_byte": {"maximum": 8}}, "input should be 'min' or 'max'"),
    # retrain
    ("retrain.mode", "again", "retrain.mode: input should be 'continue' or 'scratch'"),
    ("retrain.train", {"split": "1,1,1"}, "nor split"),
    ("retrain.train", {"lr": "fast"}, "train.lr: input should be a valid number"),
    ("retrain.data", {"dedup": {"bands": 0}}, "data.dedup.bands: input should be greater than or equal to 1"),
    ("train.cross_entropy", "fused", "train.cross_entropy: input should be 'full', 'chunked' or 'liger'"),
    ("train.cross_entropy", "liger", "train.cross_entropy liger runs on GPUs only"),
    ("train.layer_norm", "apex", "train.layer_norm: input should be 'torch' or 'liger'"),
    ("train.rotary", "liger", "train.rotary liger runs on GPUs only"),
    ("eval.tasks", [*OFFLINE_TASKS], "only a fine-tuning config with finetune.instructions has"),
    ("train.lora.r", 0, "train.lora.r: input should be greater than or equal to 1"),
    ("train.lora.target_modules", ["q_proj"], "target_modules must name some of query_key_value, dense"),
    ("train.lora.rank", 8, "train.lora.rank: unknown key"),
    ("train.lora", {"r": 4096}, "train.lora.r 4096 exceeds the model's hidden_size 64"),
    ("train.mlflow_tracking_uri", "sqlit:///m.db", "mlflow_tracking_uri: MLflow tracking URI sqlit:///m.db: sqlit://"),
    # finetune
    ("finetune.bsae", "x", "finetune.bsae: unknown key (did you mean base?)"),
    ("finetune.base", "models:/neox-tiny", "give models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("finetune.base", "models:/neox-tiny@champion", "registry.name neox-tiny is the base model's"),
    ("finetune.instructions", {"chat_template": "t.jinja"}, "give sources (JSONL files) or corpus: sample"),
    ("finetune.instructions", {"corpus": "samples"}, "finetune.instructions.corpus: input should be 'sample'"),
    ("finetune.instructions", {"sources": "a.jsonl"}, "finetune.instructions.sources: must be a list"),
    ("finetune.base", "no/such/checkpoint", "finetune.base 'no/such/checkpoint' is no folder here"),
    (
        "finetune",
        {"base": "models:/base@champion", "instructions": {"sources": ["nowhere.jsonl"]}},
        "finetune.instructions: nowhere.jsonl not found",
    ),
    # timeouts
    ("timeouts.train_hours", 0, "timeouts.train_hours: input should be greater than 0"),
    ("timeouts.train", 24, "timeouts.train: unknown key (did you mean train_hours?)"),
]


def with_change(raw: dict, dotted: str, value) -> dict:
    *parents, key = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return raw


@pytest.mark.parametrize("dotted, value, message", MISTAKES, ids=[f"{m[0]}={m[1]!r}"[:60] for m in MISTAKES])
def test_a_mistake_at_any_depth_is_refused_naming_its_path(tmp_path, dotted, value, message):
    raw = yaml.safe_load((REPO / "configs" / "pipeline" / "local.yaml").read_text())
    raw["train"]["model"] = str(REPO / "configs" / "model" / "tiny.yml")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(with_change(raw, dotted, value)))
    with pytest.raises(ConfigError) as err:
        check_pipeline_config(path)
    assert message in str(err.value)


def local_config(tmp_path, **sections) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "pipeline" / "local.yaml").read_text())
    raw["train"]["model"] = str(REPO / "configs" / "model" / "tiny.yml")
    for name, changes in sections.items():
        raw[name] = {**raw.get(name, {}), **changes}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "pipeline.yaml"


def test_evaluation_needs_the_held_out_part_it_reads_before_anything_trains(tmp_path):
    valid = {"data": {"part": "valid"}}
    with pytest.raises(ConfigError, match="train.split '1,0,1' leaves no valid documents"):
        check_pipeline_config(local_config(tmp_path, train={"split": "1,0,1"}, eval=valid))
    check_pipeline_config(local_config(tmp_path, train={"split": "1,1,0"}, eval=valid))
    # named splits replace the positional one: the part evaluation reads must be among them
    named = {"valid_sources": ["val.jsonl.zst"], "test_sources": ["test.jsonl.zst"]}
    check_pipeline_config(local_config(tmp_path, data=named, train={"split": "1,0,0"}))
    with pytest.raises(ConfigError, match="no valid one: give data.valid_sources"):
        check_pipeline_config(local_config(tmp_path, data={"test_sources": ["t.jsonl.zst"]}, eval=valid))
    # a fine-tune on instruction data splits those examples positionally, whatever the data section names
    finetune = {"base": "models:/other@champion", "instructions": {"corpus": "sample"}}
    with pytest.raises(ConfigError, match="train.split '1,0,0' leaves no test documents"):
        check_pipeline_config(local_config(tmp_path, data=named, train={"split": "1,0,0"}, finetune=finetune))


def test_a_section_given_twice_is_refused_naming_both_lines_not_merged_or_dropped(tmp_path):
    text = (REPO / "configs" / "pipeline" / "local.yaml").read_text()
    (tmp_path / "pipeline.yaml").write_text(text + "\ntrain:\n  lr: 2.0e-4\n")
    with pytest.raises(ConfigError) as err:
        check_pipeline_config(tmp_path / "pipeline.yaml")
    line = text.splitlines().index("train:") + 1
    message = f"pipeline.yaml is not valid pipeline YAML at line {len(text.splitlines()) + 2}, column 1: 'train' is "
    assert message + f"given twice (first on line {line}) with different values" in str(err.value)


def test_a_key_given_no_value_takes_its_default(tmp_path):
    text = (REPO / "configs" / "pipeline" / "local.yaml").read_text()
    raw = yaml.safe_load(text)
    raw["train"]["model"] = str(REPO / "configs" / "model" / "tiny.yml")
    for section in ("dedup", "tokenizer", "tokenize"):
        raw["data"][section] = None  # as YAML reads `dedup:` with nothing after it
    raw["eval"], raw["registry"] = None, {"name": "m", "rule": None}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    cfg = check_pipeline_config(tmp_path / "pipeline.yaml")
    assert cfg.data.dedup.threshold == 0.8 and cfg.eval.batch_size == 16 and cfg.registry.rule.guards == ()


def test_a_typo_in_the_model_yaml_is_refused_with_the_key_meant(tmp_path):
    model = (REPO / "configs" / "model" / "tiny.yml").read_text().replace('"gpt_j_residual"', '"gpt_j_residul"')
    (tmp_path / "tiny.yml").write_text(model)
    raw = yaml.safe_load((REPO / "configs" / "pipeline" / "local.yaml").read_text())
    raw["train"]["model"] = str(tmp_path / "tiny.yml")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="gpt_j_residul: not a GPT-NeoX key \\(did you mean gpt_j_residual\\?\\)"):
        check_pipeline_config(tmp_path / "pipeline.yaml")


def test_neox_check_imports_no_torch_deepspeed_or_mlflow_and_prints_no_warnings():
    code = (
        "import sys; from neox.pipeline.check import describe; print(describe('configs/pipeline/local.yaml'));"
        "print(sorted(m for m in ('torch', 'deepspeed', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]") and "ok" in out.stdout
    assert out.stderr == ""


def test_neox_data_checks_its_work_root_and_names_the_file_of_a_data_mistake(tmp_path):
    from neox.pipeline.commands import prepare_data_from_config

    config = tmp_path / "data.yaml"  # `neox data` reads only the data section and work_root: no train section here
    config.write_text("work_root: null\ndata: {corpus: sample}\n")
    with pytest.raises(ConfigError, match=r"data.yaml: work_root: input should be a folder's path, got None"):
        prepare_data_from_config(config)
    config.write_text("data: {corpus: sampel}\n")
    with pytest.raises(ConfigError, match=r"data.yaml: data.corpus: input should be 'sample'"):
        prepare_data_from_config(config)

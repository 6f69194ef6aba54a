"""MLflow Model Registry: every evaluated checkpoint becomes a model version, and a promotion gate moves the
`champion` alias only when the metrics say so.

A version's model is a small pyfunc over our checkpoint (generation with the KV cache) that also carries the
Hugging Face export as an artifact: `mlflow.pyfunc.load_model("models:/NAME@champion").predict([...])`
returns generated text, offline, wherever neox-pipeline is installed. Its metrics are those of the eval run it
was logged in; its tags carry the lineage (data manifests, tokenizer, model config, code, training run).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from neox.config import ConfigError, check_type
from neox.stage import read_manifest, sha256_file
from neox.train.loop import DATA_FILE

CHAMPION, CANDIDATE, PREVIOUS_CHAMPION = "champion", "candidate", "previous-champion"
DECISION_TAG = "neox.promotion"
Direction = Literal["minimize", "maximize"]


@dataclasses.dataclass(frozen=True)
class Guard:
    """A metric that must not get worse than the champion's by more than `tolerance` (absolute)."""

    metric: str
    direction: Direction
    tolerance: float = 0.0


@dataclasses.dataclass(frozen=True)
class PromotionRule:
    metric: str = "neox_heldout/bits_per_byte"
    direction: Direction = "minimize"
    min_improvement: float = 0.0  # absolute; the candidate must beat the champion by more than this
    guards: tuple[Guard, ...] = ()
    # absolute bounds the first champion must meet: {metric: {"max": x}} or {"min": y}
    floors: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for direction in (self.direction, *(g.direction for g in self.guards)):
            if direction not in ("minimize", "maximize"):
                raise ConfigError(f"promotion direction must be minimize or maximize, got {direction!r}")
        for metric, bound in self.floors.items():
            if not bound or set(bound) - {"min", "max"}:
                raise ConfigError(f"registry.rule.floors.{metric} must give `min` and/or `max`, got {bound!r}")


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]


def promotion_rule(section: dict[str, Any] | None) -> PromotionRule:
    """The `rule:` of a pipeline config's `registry:` section."""
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(PromotionRule)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown registry.rule key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    guards = tuple(_guard(g) for g in section.pop("guards", None) or [])
    fields = {f.name: f.type for f in dataclasses.fields(PromotionRule)}
    values = {k: check_type(f"registry.rule.{k}", v, fields[k]) for k, v in section.items()}
    return PromotionRule(guards=guards, **values)


def _guard(entry: Any) -> Guard:
    if not isinstance(entry, dict) or not {"metric", "direction"} <= set(entry) <= {"metric", "direction", "tolerance"}:
        raise ConfigError(f"registry.rule.guards entries need metric, direction and optionally tolerance, got {entry!r}")
    return Guard(str(entry["metric"]), entry["direction"], float(entry.get("tolerance", 0.0)))


def _gain(direction: Direction, new: float, old: float) -> float:
    return old - new if direction == "minimize" else new - old


def decide(candidate: dict[str, float], champion: dict[str, float] | None, rule: PromotionRule) -> Decision:
    """Whether the candidate's metrics earn it the champion alias."""
    reasons = []
    if rule.metric not in candidate:
        return Decision(False, (f"the candidate has no {rule.metric}",))
    if champion is None:
        for metric, bound in rule.floors.items():
            value = candidate.get(metric)
            if value is None:
                reasons.append(f"no {metric} to check against its floor")
            elif "max" in bound and value > bound["max"]:
                reasons.append(f"{metric} {value:.6g} is above its floor's max {bound['max']:.6g}")
            elif "min" in bound and value < bound["min"]:
                reasons.append(f"{metric} {value:.6g} is below its floor's min {bound['min']:.6g}")
        return Decision(not reasons, tuple(reasons) or ("first version meeting the floors",))
    if rule.metric not in champion:
        return Decision(True, (f"the champion has no {rule.metric}",))
    gain = _gain(rule.direction, candidate[rule.metric], champion[rule.metric])
    if gain <= rule.min_improvement:
        reasons.append(f"{rule.metric} {candidate[rule.metric]:.6g} vs champion {champion[rule.metric]:.6g}: "
                       f"improvement {gain:.6g} is not more than {rule.min_improvement:.6g}")
    for guard in rule.guards:
        if guard.metric in candidate and guard.metric in champion:
            loss = -_gain(guard.direction, candidate[guard.metric], champion[guard.metric])
            if loss > guard.tolerance:
                reasons.append(f"guard {guard.metric} regressed by {loss:.6g} (> {guard.tolerance:.6g})")
        else:
            reasons.append(f"guard {guard.metric} is missing from the candidate or the champion")
    if reasons:
        return Decision(False, tuple(reasons))
    return Decision(True, (f"{rule.metric} improved by {gain:.6g}",))


class TextGenerator(mlflow.pyfunc.PythonModel):
    """A list of prompts in, their greedy continuations out (params: max_new_tokens). Its `predict` has no type
    hints on purpose: with them MLflow ignores the explicit signature and its params."""

    def load_context(self, context) -> None:
        from neox.data.tokenizer import eod_id, load_tokenizer
        from neox.model.weights import load_model, tokenizer_path

        self.model = load_model(context.artifacts["model"])
        self.tokenizer = load_tokenizer(tokenizer_path(context.artifacts["model"]))
        self.eod = eod_id(self.tokenizer)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        # untyped on purpose: MLflow ignores the explicit signature (and its params) of a type-hinted predict
        import torch

        from neox.model.generate import SamplingConfig, generate

        prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else list(model_input)
        limit = self.model.cfg.max_position_embeddings
        new_tokens = int((params or {}).get("max_new_tokens", 32))
        out = []
        for prompt in prompts:
            ids = (self.tokenizer.encode(prompt).ids or [self.eod])[-(limit - new_tokens):]
            tokens = generate(self.model, torch.tensor([ids]), SamplingConfig(max_new_tokens=new_tokens, eos_token_id=self.eod))
            out.append(self.tokenizer.decode(tokens[0, len(ids):].tolist()))
        return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(checkpoint: Path, work_root: str | Path | None) -> dict[str, str]:
    """Where a checkpoint came from: the training run (its MLflow run, newest checkpoint), the tokenized
    dataset it read, and, when the data stages ran under `work_root`, the dedup and download manifests."""
    tags = {"neox.model_config_sha256": sha256_file(checkpoint / "config.yml"), "neox.git_commit": git_commit(),
            "neox.checkpoint": str(checkpoint.resolve())}
    run_dir = checkpoint.parent.parent  # <run>/final/model
    if (run_dir / "mlflow_run_id").exists():
        train_run = (run_dir / "mlflow_run_id").read_text().strip()
        tags["neox.train_run_id"] = train_run
        checkpoints = sorted(run_dir.glob("checkpoint_*"))
        if checkpoints:
            tags["neox.deepspeed_checkpoint"] = checkpoints[-1].resolve().as_uri()
    if (run_dir / DATA_FILE).exists():
        data = Path(json.loads((run_dir / DATA_FILE).read_text())["data"])
        if (data / "manifest.json").exists():
            tags.update(data_lineage(data, work_root))
    return tags


def data_lineage(tokenized: Path, work_root: str | Path | None) -> dict[str, str]:
    tags = {"neox.tokenized_manifest_sha256": sha256_file(tokenized / "manifest.json"),
            "neox.tokenizer_sha256": sha256_file(tokenized / "tokenizer.json")}
    if work_root is None:
        return tags
    from neox.data.prepare import upstream_outputs

    for stage, output in upstream_outputs(tokenized, work_root).items():
        tags[f"neox.{'corpus' if stage == 'download' else stage}_manifest_sha256"] = sha256_file(output / "manifest.json")
    return tags


def register(eval_output: str | Path, name: str, tracking_uri: str, work_root: str | Path | None = None,
             experiment: str = "neox-pipeline", tags: dict[str, str] | None = None) -> str:
    """Register the checkpoint an eval stage output scored, as a new version of `name` logged in that eval's
    MLflow run (created in this tracking store if needed); returns the version. Registering the same eval
    again returns its existing version. `tags` are added to the lineage (the flow run id under Prefect)."""
    from neox.eval.run import log_eval

    checkpoint = Path(read_manifest(eval_output)["stats"]["checkpoint"])
    run_id = log_eval(eval_output, tracking_uri, experiment)
    client = MlflowClient(tracking_uri=tracking_uri)
    existing = [v for v in _versions(client, name) if v.run_id == run_id]
    if existing:
        return existing[0].version
    mlflow.set_tracking_uri(tracking_uri)
    artifacts = {"model": str(checkpoint)}
    if (checkpoint.parent / "hf").exists():
        artifacts["hf"] = str(checkpoint.parent / "hf")
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=TextGenerator(), artifacts=artifacts,
                                       pip_requirements=_requirements(),
                                       signature=mlflow.models.infer_signature(["a prompt"], ["its continuation"],
                                                                               params={"max_new_tokens": 32}))
    version = client.create_model_version(name, info.model_uri, run_id=run_id, model_id=info.model_id,
                                          tags={**lineage_tags(checkpoint, work_root), **(tags or {})}).version
    return version


def _versions(client: MlflowClient, name: str) -> list:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
        return []
    return client.search_model_versions(f"name='{name}'")


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("torch", "tokenizers", "safetensors", "neox-pipeline")]


def _version_by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_version(name: str, tracking_uri: str):
    """The model version holding the champion alias, or None."""
    return _version_by_alias(MlflowClient(tracking_uri=tracking_uri), name, CHAMPION)


def promote(name: str, version: str, rule: PromotionRule, tracking_uri: str,
            champion_metrics: dict[str, float] | None = None) -> Decision:
    """Give `version` the candidate alias and move champion to it if the rule says so (the old champion keeps
    `previous-champion`). The decision, with both metric sets, is recorded on the version. Safe to repeat.
    `champion_metrics`: the champion scored on the candidate's evaluation data (what a fair gate compares);
    without them the champion's own recorded metrics are used."""
    client = MlflowClient(tracking_uri=tracking_uri)
    candidate = client.get_model_version(name, version)
    client.set_registered_model_alias(name, CANDIDATE, version)
    champion = _version_by_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(version):
        return Decision(True, ("already champion",))
    candidate_metrics = client.get_run(candidate.run_id).data.metrics
    rescored = champion is not None and champion_metrics is not None
    if champion is not None and champion_metrics is None:
        champion_metrics = client.get_run(champion.run_id).data.metrics
    decision = decide(candidate_metrics, champion_metrics, rule)
    record = {"promoted": decision.promote, "reasons": list(decision.reasons), "candidate_metrics": candidate_metrics,
              "champion_version": champion.version if champion else None, "champion_metrics": champion_metrics,
              "champion_scored_on": "the candidate's eval data" if rescored else "its own eval data"}
    client.set_model_version_tag(name, version, DECISION_TAG, json.dumps(record, sort_keys=True)[:5000])
    if decision.promote:
        if champion is not None:  # first, so a retry after a crash here still finds the old champion
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion.version)
        client.set_registered_model_alias(name, CHAMPION, version)
    return decision

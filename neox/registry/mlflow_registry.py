"""The MLflow Model Registry: every evaluated checkpoint becomes a version of a registered model (logged in the
eval's MLflow run, lineage in its tags), and the promotion gate moves the `champion` alias when the rule says so
(`neox.registry.rule`), keeping the old champion as `previous-champion` and the decision on the version."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from neox.errors import ConfigError, RunStateError
from neox.eval.record import find_eval_run, quoted, verified_eval_run
from neox.eval.run import CHECKPOINT_PATH_TAG
from neox.pipeline.layout import CHAT_TEMPLATE_FILE, MODEL_DIR, hf_export_of
from neox.registry.lineage import lineage_tags
from neox.registry.pyfunc_params import PARAMS
from neox.registry.report import decision_markdown
from neox.registry.rule import Decision, PromotionRule, decide, decide_first

CHAMPION, CANDIDATE, PREVIOUS_CHAMPION = "champion", "candidate", "previous-champion"
DECISION_TAG = "neox.promotion"
PYFUNC_SOURCE = str(Path(__file__).with_name("pyfunc.py"))  # logged as a model from code: no pickle


def register(
    eval_output: str | Path,
    name: str,
    tracking_uri: str,
    work_root: str | Path | None = None,
    experiment: str = "neox-pipeline",
    tags: dict[str, str] | None = None,
) -> str:
    """Register the checkpoint an eval stage output scored, as a new version of `name` logged in that eval's
    MLflow run; returns the version. The output must be one the eval stage logged to this tracking store, its
    files and checkpoint unchanged since (`neox.eval.record.verified_eval_run`): anything else is refused before
    MLflow is written to. Registering the same eval again returns its existing version. `tags` are added to the
    lineage (the flow run id under Prefect)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    recorded = find_eval_run(eval_output, tracking_uri, experiment)
    earlier = recorded and _version_of_run(client, name, recorded.info.run_id)
    if earlier:  # registered from a verified copy already: found again without copying the checkpoint
        return earlier
    with tempfile.TemporaryDirectory(prefix="neox-register-") as snapshot:
        # uploaded from a private copy made as the checkpoint is verified: what was scored is what is registered
        run = verified_eval_run(eval_output, tracking_uri, experiment, snapshot=Path(snapshot))
        checkpoint = Path(run.data.tags[CHECKPOINT_PATH_TAG])
        copy = Path(snapshot) / MODEL_DIR
        artifacts = {"model": str(copy)}
        if hf_export_of(copy).exists():
            artifacts["hf"] = str(hf_export_of(copy))
        model_id = log_text_generator(client, run, artifacts)
    if not _exists(client, name):
        client.create_registered_model(name)
    version = str(  # MLflow gives an int from a SQL store, a string over REST
        client.create_model_version(
            name,
            # where the logged model's files are: a `models:/` URI would be resolved by MLflow's SQL store through
            # the global tracking URI, whatever this client's
            client.get_logged_model(model_id).artifact_location,
            run_id=run.info.run_id,
            model_id=model_id,
            tags={**lineage_tags(checkpoint, work_root), **(tags or {})},
        ).version
    )
    link_versions(client, model_id, name, version)
    return version


def link_versions(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Tag the logged model with the version registered from it, as `mlflow.register_model` does, so its page
    lists it. Not register_model itself: it works on the global tracking URI, and setting that also sets
    MLFLOW_TRACKING_URI for the rest of the process, which our commands read before their config."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    linked = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if {"name": name, "version": version} not in linked:
        linked.append({"name": name, "version": version})
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})


def log_text_generator(client: MlflowClient, run, artifacts: dict[str, str]) -> str:
    """Log the pyfunc (`neox/registry/pyfunc.py`, a model from code, the checkpoint as its artifacts) as a model of
    the eval run; returns its model id. Spelled out instead of `mlflow.pyfunc.log_model`, which runs the model on
    the input example before uploading it: that would load the weights (41 GB for GPT-NeoX-20B) where registering
    runs, on a head node without a GPU."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    logged = client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run.info.run_id)
    client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.WARNING)  # not "Validating input example against model signature" each time
    try:
        with tempfile.TemporaryDirectory(prefix="neox-pyfunc-") as local:
            path = Path(local) / "model"
            mlflow.pyfunc.save_model(
                path,
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    model_uuid=logged.model_id,
                    run_id=run.info.run_id,
                    model_id=logged.model_id,
                ),
                python_model=PYFUNC_SOURCE,
                artifacts=artifacts,
                code_paths=[str(package_copy(Path(local) / "code"))],
                pip_requirements=_requirements(chat=(Path(artifacts["model"]) / CHAT_TEMPLATE_FILE).exists()),
                signature=mlflow.models.infer_signature(["a prompt"], ["its continuation"], params=PARAMS),
                input_example=(["Once upon a time"], {"max_new_tokens": 32}),
            )
            client.log_model_artifacts(logged.model_id, str(path))
    finally:
        pyfunc_logger.setLevel(level)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


def model_version(client: MlflowClient, name: str, version: str, tracking_uri: str):
    """A registered model's version, or a one-line error saying which of the two is not there."""
    if not str(version).isdigit():
        raise ConfigError(f"a model version is a number (as `neox register` prints it), got {version!r}")
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RunStateError(f"no registered model {name!r} in {tracking_uri}") from None
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RunStateError(f"{name} has no version {version} in {tracking_uri}") from None


def _exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version of `name` registered from this run, if any (as a string: MLflow gives an int from a SQL store)."""
    if not _exists(client, name):
        return None
    found = client.search_model_versions(f"name={quoted(name)} and run_id={quoted(run_id)}")
    return str(found[0].version) if found else None


# What loading and running the pyfunc imports, beyond MLflow and the `neox` code it carries (a test checks the
# list against the modules a load and a prediction import): published packages only, at the versions trained with.
PYFUNC_REQUIREMENTS = ("torch", "tokenizers", "safetensors", "PyYAML", "pydantic", "numpy", "zstandard", "tenacity")
PYFUNC_REQUIREMENTS += ("tqdm",)


def _requirements(chat: bool) -> list[str]:
    """PYFUNC_REQUIREMENTS pinned as installed here; and what rendering a chat template needs, for a chat model."""
    from importlib.metadata import version

    from neox.data.chat import CHAT_REQUIREMENTS

    packages = PYFUNC_REQUIREMENTS + (CHAT_REQUIREMENTS if chat else ())
    return [f"{package}=={version(package)}" for package in packages]


def package_copy(directory: Path) -> Path:
    """The `neox` package's source copied to `directory`/neox (no bytecode), for the pyfunc's code_paths: the
    logged model carries the code it runs instead of needing neox-pipeline installed."""
    import shutil

    target = directory / "neox"
    package = Path(__file__).resolve().parents[1]  # neox/, this file being neox/registry/mlflow_registry.py
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _version_by_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_version(name: str, tracking_uri: str):
    """The model version holding the champion alias, or None."""
    return _version_by_alias(MlflowClient(tracking_uri=tracking_uri), name, CHAMPION)


def promote(
    name: str,
    version: str,
    rule: PromotionRule,
    tracking_uri: str,
    champion_metrics: dict[str, float] | None = None,
    baseline: tuple[str, dict[str, float]] | None = None,
) -> Decision:
    """Give `version` the candidate alias and move champion to it if the rule says so (the old champion keeps
    `previous-champion`). The decision, with both metric sets, is recorded on the version. Safe to repeat.
    `champion_metrics`: the champion scored on the candidate's evaluation data (what a fair gate compares);
    without them the champion's own recorded metrics are used. `baseline`: (what it is, its metrics on the
    candidate's data) to beat, besides the floors, while there is no champion yet (a fine-tune's base model)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    candidate = model_version(client, name, version, tracking_uri)
    client.set_registered_model_alias(name, CANDIDATE, version)
    champion = _version_by_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(version):
        return Decision(True, ("already champion",))
    candidate_metrics = client.get_run(candidate.run_id).data.metrics
    rescored = champion is not None and champion_metrics is not None
    if champion is not None and champion_metrics is None:
        champion_metrics = client.get_run(champion.run_id).data.metrics
    if champion is None:
        champion_metrics = baseline[1] if baseline is not None else None  # shown beside the candidate's
        decision = decide_first(candidate_metrics, champion_metrics, rule)
    else:
        decision = decide(candidate_metrics, champion_metrics, rule)
    record = {
        "promoted": decision.promote,
        "reasons": list(decision.reasons),
        "candidate_metrics": candidate_metrics,
        "champion_version": str(champion.version) if champion else None,
        "champion_metrics": champion_metrics,
        "champion_scored_on": "the candidate's eval data" if rescored else "its own eval data",
        **({"baseline": baseline[0]} if champion is None and baseline is not None else {}),
    }
    client.set_model_version_tag(name, version, DECISION_TAG, json.dumps(record, sort_keys=True)[:5000])
    client.update_model_version(name, version, description=decision_markdown(name, version, record, rule))
    if decision.promote:
        if champion is not None:  # first, so a retry after a crash here still finds the old champion
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion.version)
        client.set_registered_model_alias(name, CHAMPION, version)
    return decision

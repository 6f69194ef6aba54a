"""Prefect task: lm-eval on the final checkpoint with the offline tasks built from the held-out split."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from neox.eval.config import eval_configs
from neox.eval.data import eval_data_stage
from neox.eval.run import CHECKPOINT_PATH_TAG, EVAL_METRICS_FILE, eval_stage, log_eval
from neox.pipeline.configfile import read_pipeline_config
from neox.pipeline.layout import WEIGHTS_FILE
from neox.registry.mlflow_registry import champion_version
from neox.train.config import load_train_config
from neox.train.tracking import absolute_tracking_uri
from tasks.register import registry_settings
from tasks.report import report_stage


def eval_on_heldout(config: str, checkpoint: str | Path, tokenized: str) -> Path:
    """Run (or reuse) the config's eval of `checkpoint` on the held-out split of `tokenized`."""
    raw, cfg = read_pipeline_config(config), load_train_config(config)
    data_cfg, eval_cfg = eval_configs(raw.get("eval"), cfg.split)
    work_root = raw.get("work_root", "work")
    return eval_stage(checkpoint, eval_data_stage(tokenized, work_root, data_cfg), work_root, eval_cfg)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(config: str, checkpoint: str, tokenized: str) -> str:
    started = time.time()
    out = eval_on_heldout(config, checkpoint, tokenized)
    cfg = load_train_config(config)
    run_id = log_eval(out, absolute_tracking_uri(cfg.mlflow_tracking_uri), cfg.mlflow_experiment)
    report_stage(
        "eval", out, started, {"mlflow_run_id": run_id, **json.loads((Path(out) / EVAL_METRICS_FILE).read_text())}
    )
    return str(out)


@task(name="score-champion", cache_policy=NO_CACHE)
def score_champion(config: str, candidate_version: str, tokenized: str) -> dict[str, float] | None:
    """The current champion scored on the candidate's held-out data, so the gate compares like with like when
    the candidate was trained on other data (a retrain, a new dedup threshold). The eval stage is
    content-addressed: when the champion was scored on this very data its output is reused, not recomputed.
    None when there is no other champion, or its checkpoint is gone (the gate then uses its recorded metrics)."""
    _, name, tracking = registry_settings(config)
    champion = champion_version(name, tracking)
    if champion is None or str(champion.version) == str(candidate_version):
        return None
    checkpoint = Path(champion.tags.get(CHECKPOINT_PATH_TAG, ""))
    if not (checkpoint / WEIGHTS_FILE).is_file():
        get_run_logger().warning(
            "champion v%s's checkpoint %s is gone: the gate uses its recorded metrics", champion.version, checkpoint
        )
        return None
    metrics = json.loads((eval_on_heldout(config, checkpoint, tokenized) / EVAL_METRICS_FILE).read_text())
    get_run_logger().info("champion v%s on the candidate's eval data: %s", champion.version, metrics)
    return metrics

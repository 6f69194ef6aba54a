"""Prefect task: lm-eval on the final checkpoint with the offline tasks built from the held-out split."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from neox.eval.data import eval_data_stage
from neox.eval.run import METRICS_FILE, eval_configs, eval_stage, log_eval
from neox.train.config import load_train_config, read_pipeline_config
from neox.train.launch import absolute_tracking_uri
from tasks.report import report_stage


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(config: str, checkpoint: str, tokenized: str) -> str:
    raw, cfg = read_pipeline_config(config), load_train_config(config)
    data_cfg, eval_cfg = eval_configs(raw.get("eval"), cfg.split)
    started = time.time()
    work_root = raw.get("work_root", "work")
    out = eval_stage(checkpoint, eval_data_stage(tokenized, work_root, data_cfg), work_root, eval_cfg)
    run_id = log_eval(out, absolute_tracking_uri(cfg.mlflow_tracking_uri), cfg.mlflow_experiment)
    report_stage("eval", out, started, {"mlflow_run_id": run_id, **json.loads((Path(out) / METRICS_FILE).read_text())})
    return str(out)

"""Flow `retrain`: continue the champion on the shards that arrived since it was trained (or train anew from
scratch, by the config's `retrain:` section), then evaluate and promote, the champion scored on the same
held-out data. Nothing new → the flow finishes without training. The `scheduled-retrain` deployment runs it
on a cron schedule.

    python -m flows.retrain configs/pipeline/local.yaml
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger, tags

from flows.data import data_prep
from flows.errors import one_line_errors
from flows.evaluate import evaluate_and_promote
from flows.local_api import patient_local_api
from flows.naming import config_tags, run_name
from flows.train import train
from neox.pipeline.check import check_pipeline_config
from neox.pipeline.layout import final_model
from neox.pipeline.retrain import RetrainConfig, retrain_overrides
from tasks.retrain import plan_retrain


@flow(name="retrain", flow_run_name=run_name("retrain"))
def retrain(config: str = "configs/pipeline/local.yaml") -> dict:
    cfg = check_pipeline_config(config)
    plan = cfg.retrain or RetrainConfig()
    timings = {}
    started = time.perf_counter()
    data, champion = plan_retrain(plan, cfg.data, cfg.registry, cfg.train.tracking_uri, cfg.work_root)
    if data is None:
        get_run_logger().info(
            "retrain: no shard arrived since champion v%s was trained; nothing to do", champion.version
        )
        return {"skipped": f"no new shards since champion v{champion.version}"}
    tokenized = data_prep(config, data)
    timings["data_prep"] = time.perf_counter() - started
    started = time.perf_counter()
    overrides = retrain_overrides(cfg.train.name, plan, tokenized, champion)
    run = train(config, tokenized, overrides)
    timings["train"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = evaluate_and_promote(config, str(final_model(run)), tokenized)
    timings["evaluate_and_promote"] = time.perf_counter() - started
    return {
        "tokenized": tokenized,
        "run": run,
        **outcome,
        "timings": timings,
        "continued_from": champion.version if champion else None,
    }


def main() -> None:
    from neox.pipeline.config import load_pipeline_config
    from neox.pipeline.summary import print_summary

    config = sys.argv[1] if len(sys.argv) > 1 else "configs/pipeline/local.yaml"
    started = time.perf_counter()
    with one_line_errors(), patient_local_api(), tags(*config_tags(config)):
        result = retrain(config)
    if "skipped" in result:
        print(f"\n== neox-pipeline: retrain skipped ({result['skipped']})")
        return
    if not print_summary(load_pipeline_config(config), result, time.perf_counter() - started, title="retrain"):
        sys.exit("the Hugging Face export check failed")


if __name__ == "__main__":
    main()

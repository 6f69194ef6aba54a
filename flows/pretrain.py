"""Flow `pretrain`: data_prep -> train -> evaluate_and_promote, end to end, as three subflows.

    python -m flows.pretrain [configs/pipeline/local.yaml]     (what `make demo` runs)

Without PREFECT_API_URL, Prefect runs its local ephemeral API on SQLite; `prefect server start` afterwards shows
the flow run, its subflows, task states and artifacts.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, tags

from flows.data import data_prep
from flows.errors import one_line_errors
from flows.evaluate import evaluate_and_promote
from flows.local_api import patient_local_api
from flows.naming import config_tags, run_name
from flows.train import train
from neox.pipeline.check import check_pipeline_config
from neox.pipeline.layout import final_model


@flow(name="pretrain", flow_run_name=run_name("pretrain"))
def pretrain(config: str = "configs/pipeline/local.yaml") -> dict:
    check_pipeline_config(config)
    timings = {}
    started = time.perf_counter()
    tokenized = data_prep(config)
    timings["data_prep"] = time.perf_counter() - started
    started = time.perf_counter()
    run = train(config, tokenized)
    timings["train"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = evaluate_and_promote(config, str(final_model(run)), tokenized)
    timings["evaluate_and_promote"] = time.perf_counter() - started
    return {"tokenized": tokenized, "run": run, **outcome, "timings": timings}


def main() -> None:
    from neox.pipeline.config import load_pipeline_config
    from neox.pipeline.summary import print_summary

    config = sys.argv[1] if len(sys.argv) > 1 else "configs/pipeline/local.yaml"
    started = time.perf_counter()
    with one_line_errors(), patient_local_api(), tags(*config_tags(config)):
        result = pretrain(config)
    if not print_summary(load_pipeline_config(config), result, time.perf_counter() - started):
        sys.exit("the Hugging Face export check failed")


if __name__ == "__main__":
    main()

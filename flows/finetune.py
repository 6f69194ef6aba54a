"""Flow `finetune`: a base model (a registered version, a neox checkpoint or a Hugging Face folder) fine-tuned on
instruction data (or, without finetune.instructions, on the data section's shards), evaluated beside its base on
the same held-out data, registered as a version of its own registered model with lineage to the base, and promoted
when the gate says so: against that model's champion, or against the base before there is one.

    python -m flows.finetune configs/pipeline/finetune.yaml      (or: neox finetune CONFIG)
"""

from __future__ import annotations

import sys
import time

from prefect import flow, tags

from flows.data import data_prep
from flows.errors import one_line_errors
from flows.local_api import patient_local_api
from flows.naming import config_tags, run_name
from flows.train import train
from neox.errors import ConfigError
from neox.pipeline.check import check_pipeline_config
from neox.pipeline.finetune import BASE_CHECKPOINT_TAG, BASE_MODEL_TAG, with_base_tokenizer
from neox.pipeline.layout import final_model
from tasks.evaluate import evaluate, score_champion, scoring
from tasks.finetune import base_model, instructions, score_base
from tasks.register import promote_version, register_model


@flow(name="finetune", flow_run_name=run_name("finetune"))
def finetune(config: str = "configs/pipeline/finetune.yaml") -> dict:
    cfg = check_pipeline_config(config)
    if cfg.finetune is None:
        raise ConfigError(f"{config} has no `finetune:` section (finetune.base names the model to start from)")
    work_root, tracking, hours = cfg.work_root, cfg.train.tracking_uri, cfg.timeouts
    timings = {}
    started = time.perf_counter()
    base = base_model(cfg.finetune.base, work_root, tracking)
    if cfg.finetune.instructions is not None:
        tokenized = instructions(cfg.finetune.instructions, base, work_root, hours.tokenize_hours).result()
    else:
        tokenized = data_prep(config, with_base_tokenizer(cfg.data, base))
    timings["data"] = time.perf_counter() - started
    started = time.perf_counter()
    run = train(config, tokenized, {"init_from": str(base.checkpoint)})
    timings["train"] = time.perf_counter() - started
    started = time.perf_counter()
    registry, scored = cfg.registry, scoring(cfg)
    evaluated = evaluate(str(final_model(run)), tokenized, scored).result()
    lineage = {BASE_MODEL_TAG: base.uri, BASE_CHECKPOINT_TAG: str(base.checkpoint)}
    version = register_model(evaluated, registry, tracking, work_root, cfg.train.mlflow_experiment, lineage)
    base_metrics = score_base(base, tokenized, scored)
    champion = score_champion(version, tokenized, registry, scored)
    decision = promote_version(version, registry, tracking, champion, (f"the base model {base.uri}", base_metrics))
    timings["evaluate_and_promote"] = time.perf_counter() - started
    return {
        "tokenized": tokenized,
        "run": run,
        "eval": evaluated,
        "version": version,
        "promoted": decision.promote,
        "reasons": list(decision.reasons),
        "base": base.uri,
        "base_metrics": base_metrics,
        "timings": timings,
    }


def main() -> None:
    from neox.pipeline.config import load_pipeline_config
    from neox.pipeline.summary import print_summary

    config = sys.argv[1] if len(sys.argv) > 1 else "configs/pipeline/finetune.yaml"
    started = time.perf_counter()
    with one_line_errors(), patient_local_api(), tags(*config_tags(config)):
        result = finetune(config)
    if not print_summary(load_pipeline_config(config), result, time.perf_counter() - started, title="finetune"):
        sys.exit("the Hugging Face export check failed")


if __name__ == "__main__":
    main()

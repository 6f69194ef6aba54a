"""Where a checkpoint came from, as model-version tags: the training run (its MLflow run, its newest DeepSpeed
checkpoint), the tokenized dataset and tokenizer, the dedup and download manifests, the model config and the code."""

from __future__ import annotations

import json
from pathlib import Path

from neox.eval.run import CHECKPOINT_PATH_TAG
from neox.pipeline.layout import CONFIG_FILE, DATA_FILE, MLFLOW_RUN_FILE, TOKENIZER_FILE, newest_checkpoint, run_of
from neox.pipeline.stage import MANIFEST, sha256_file
from neox.runtime.run_context import git_commit


def lineage_tags(checkpoint: Path, work_root: str | Path | None) -> dict[str, str]:
    """Where a checkpoint came from: the training run (its MLflow run, newest DeepSpeed checkpoint), the tokenized
    dataset it read, and, when the data stages ran under `work_root`, the dedup and download manifests."""
    tags = {
        "neox.model_config_sha256": sha256_file(checkpoint / CONFIG_FILE),
        "neox.git_commit": git_commit(),
        CHECKPOINT_PATH_TAG: str(checkpoint.resolve()),
    }
    run = run_of(checkpoint)
    if run is None:
        return tags
    if (run / MLFLOW_RUN_FILE).exists():
        tags["neox.train_run_id"] = (run / MLFLOW_RUN_FILE).read_text().strip()
    newest = newest_checkpoint(run)
    if newest is not None:
        tags["neox.deepspeed_checkpoint"] = newest.resolve().as_uri()
    if (run / DATA_FILE).exists():
        data = Path(json.loads((run / DATA_FILE).read_text())["data"])
        if (data / MANIFEST).exists():
            tags.update(data_lineage(data, work_root))
    return tags


def data_lineage(tokenized: Path, work_root: str | Path | None) -> dict[str, str]:
    tags = {
        "neox.tokenized_manifest_sha256": sha256_file(tokenized / MANIFEST),
        "neox.tokenizer_sha256": sha256_file(tokenized / TOKENIZER_FILE),
    }
    if work_root is None:
        return tags
    from neox.data.prepare import upstream_outputs

    for stage, output in upstream_outputs(tokenized, work_root).items():
        tags[f"neox.{'corpus' if stage == 'download' else stage}_manifest_sha256"] = sha256_file(output / MANIFEST)
    return tags

"""The cluster part of a pipeline config, from what `terraform output -json` says about a cluster that
infra/terraform/aws stood up: where Ray and MLflow listen, the shared work root (training runs in its train/
folder, so evaluation, the registry and retraining read checkpoints by path from any node), the bucket, how many
GPU workers there are, and the NCCL/libfabric environment that makes NCCL use the nodes' EFA interfaces.

    neox cluster config outputs.json                                         # the cluster part alone
    neox cluster config outputs.json --base configs/pipeline/pile-neox-20b.yaml --output configs/cluster/20b.yaml
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

from neox.errors import ConfigError
from neox.pipeline.atomic import atomic_write_text
from neox.pipeline.configfile import read_pipeline_config
from neox.train.config import build_train_config

# The Terraform outputs this needs (infra/terraform/aws/outputs.tf declares them).
REQUIRED = (
    "ray_address",
    "mlflow_tracking_uri",
    "bucket",
    "work_root",
    "node_count",
    "gpus_per_node",
    "vcpus_per_node",
    "efa_interfaces_per_node",
)

# CPUs per GPU left to Ray's own processes and the node's services rather than given to a training worker.
RESERVED_CPUS_PER_GPU = 2


def read_outputs(path: str | Path) -> dict[str, Any]:
    """Output values from a `terraform output -json` file ({name: {"value": ..., "type": ..., ...}})."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (write it with `terraform output -json > {path}` in infra/terraform/aws)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:  # a folder, a binary file, no permission
        raise ConfigError(f"{path} cannot be read as `terraform output -json`: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not JSON ({err}); write it with `terraform output -json > {path}`") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) and "value" in v for v in raw.values()):
        raise ConfigError(f"{path}: not the output of `terraform output -json` (each output is an object with a value)")
    values = {name: out["value"] for name, out in raw.items()}
    if not values:
        raise ConfigError(f"{path}: Terraform has no outputs yet; run `terraform apply` in infra/terraform/aws first")
    missing = [name for name in REQUIRED if name not in values]
    if missing:
        raise ConfigError(
            f"{path}: missing Terraform output(s) {', '.join(missing)}; is it infra/terraform/aws's state?"
        )
    return values


def nccl_env(efa_interfaces: int) -> dict[str, str]:
    """Environment for every training worker. With EFA, NCCL goes through the aws-ofi-nccl plugin and libfabric's
    efa provider; without it NCCL falls back to TCP sockets, which is an order of magnitude slower across nodes."""
    env = {"NCCL_SOCKET_IFNAME": "^lo,docker"}  # bootstrap over the node's real interface, never loopback/docker
    if efa_interfaces > 0:
        env.update(
            {
                "FI_PROVIDER": "efa",
                "FI_EFA_USE_DEVICE_RDMA": "1",  # GPUDirect RDMA: p4d/p4de/p5 EFA devices read GPU memory directly
                "FI_EFA_FORK_SAFE": "1",  # Ray and data loaders fork after libfabric has registered memory
            }
        )
    return env


def cluster_part(outputs: dict[str, Any], work_root: str | None = None) -> dict[str, Any]:
    """The pipeline config keys that depend on the cluster, by section."""
    work_root = work_root or outputs["work_root"]
    if not work_root:
        raise ConfigError(
            "the cluster has no shared file system (fsx_storage_capacity_gib = 0), and the data stages "
            "write their outputs from every node: enable FSx or pass --work-root with a path all nodes share"
        )
    gpus, vcpus, nodes = int(outputs["gpus_per_node"]), int(outputs["vcpus_per_node"]), int(outputs["node_count"])
    if gpus < 1 or nodes < 1:
        raise ConfigError(f"the cluster has {nodes} node(s) with {gpus} GPU(s) each: nothing to train on")
    return {
        "work_root": work_root,
        "data": {"ray_address": outputs["ray_address"]},
        "train": {
            "ray_address": outputs["ray_address"],
            "storage_path": f"{work_root}/train",
            "num_workers": gpus * nodes,
            "use_gpu": True,
            "cpus_per_worker": max(1, vcpus // gpus - RESERVED_CPUS_PER_GPU),
            "mlflow_tracking_uri": outputs["mlflow_tracking_uri"],
            "env": nccl_env(int(outputs["efa_interfaces_per_node"])),
        },
        "eval": {"device": "cuda", "ray_address": outputs["ray_address"]},  # the flow's head node has no GPU
    }


def apply_to(base: dict[str, Any], part: dict[str, Any], bucket: str, base_dir: Path) -> dict[str, Any]:
    """The base pipeline config (read from `base_dir`) with the cluster part in place. The global batch is kept
    (the schedule is in sequences): gradient accumulation absorbs a different number of model replicas (GPUs over
    tensor x pipeline parallel size), or it is an error when it cannot."""
    out = copy.deepcopy(base)
    out["work_root"] = part["work_root"]
    for section in ("data", "train", "eval"):
        out[section] = {**(out.get(section) or {}), **part[section]}
    if "pile_mirror" in out["data"]:
        out["data"]["pile_mirror"] = f"s3://{bucket}/pile"
    train, old = out["train"], base.get("train") or {}
    if {"num_workers", "micro_batch_size", "gradient_accumulation_steps"} <= set(old):
        before = build_train_config(old, base_dir)  # the layout may come from the model YAML
        per_replica = before.model_parallel_size * before.pipe_parallel_size
        batch = before.global_batch_size
        replicas, leftover = divmod(train["num_workers"], per_replica)
        per_step = replicas * before.micro_batch_size
        if leftover or batch % per_step:
            raise ConfigError(
                f"the base config's global batch of {batch} sequences does not divide over "
                f"{train['num_workers']} GPUs in model replicas of {per_replica} x micro batch "
                f"{before.micro_batch_size}: change train.micro_batch_size in the base config or the cluster's "
                "node count"
            )
        train["gradient_accumulation_steps"] = batch // per_step
    return out


def rebase_model_paths(config: dict[str, Any], base_dir: Path, out_dir: Path) -> dict[str, Any]:
    """train.model is relative to its config file; keep it pointing at the same YAML from the new file's folder."""
    model = config.get("train", {}).get("model")
    if model is None:
        return config
    models = [model] if isinstance(model, str) else list(model)
    moved = [m if Path(m).is_absolute() else os.path.relpath(base_dir / m, out_dir) for m in models]
    config["train"]["model"] = moved[0] if isinstance(model, str) else moved
    return config


def filled_in(
    outputs_path: Path, base: Path, work_root: str | None = None, out_dir: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """The base pipeline config with the cluster part of `outputs_path` in place, as YAML text (with a header
    naming both) and as data; with `out_dir`, its model paths are made relative to that folder."""
    values = read_outputs(outputs_path)
    config = apply_to(read_pipeline_config(base), cluster_part(values, work_root), values["bucket"], base.parent)
    if out_dir is not None:
        config = rebase_model_paths(config, base.parent, out_dir)
    header = f"# {base} on the cluster of {outputs_path} (written by `neox cluster config`)\n"
    return header + yaml.safe_dump(config, sort_keys=False), config


def write_cluster_config(outputs_path: Path, base: Path, output: Path, work_root: str | None = None) -> dict[str, Any]:
    """Write the filled-in config to `output`, only once `neox check` passes on it: a config that would fail on
    the cluster is not written."""
    from neox.pipeline.check import check_pipeline_config

    text, config = filled_in(outputs_path, base, work_root, output.parent)
    atomic_write_text(output, text, check=check_pipeline_config)
    return config

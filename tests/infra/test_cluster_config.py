"""`neox cluster config` turns `terraform output -json` of infra/terraform/aws into the cluster part of a pipeline
config: Ray and MLflow addresses, one training worker per GPU, checkpoints on the bucket, NCCL over EFA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from neox.errors import ConfigError
from neox.pipeline.check import check_pipeline_config
from neox.pipeline.cluster import apply_to, cluster_part, read_outputs
from neox.pipeline.configfile import read_pipeline_config
from neox.train.config import load_train_config
from tests.conftest import REPO, neox

OUTPUTS = Path(__file__).with_name("terraform-outputs.json")  # 12 x p4d.24xlarge, as `terraform output -json` writes it
NEOX_20B = REPO / "configs" / "pipeline" / "pile-neox-20b.yaml"


def outputs_file(tmp_path: Path, **changes) -> Path:
    raw = json.loads(OUTPUTS.read_text())
    for name, value in changes.items():
        raw[name]["value"] = value
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(raw))
    return path


def test_the_cluster_part_has_one_worker_per_gpu_and_nccl_over_efa():
    part = cluster_part(read_outputs(OUTPUTS))
    assert part["work_root"] == "/fsx/neox-work" and part["data"]["ray_address"] == "10.42.0.10:6379"
    train = part["train"]
    assert (train["num_workers"], train["use_gpu"], train["cpus_per_worker"]) == (96, True, 10)  # 96 vCPUs / 8 GPUs - 2
    assert train["storage_path"] == "/fsx/neox-work/train"  # shared: eval and the registry read it by path
    assert (
        train["mlflow_tracking_uri"] == "http://10.42.0.10:5000"
    )  # the head's VPC address: rank 0 logs from a GPU node
    assert train["env"]["FI_PROVIDER"] == "efa" and train["env"]["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert part["eval"] == {"device": "cuda", "ray_address": "10.42.0.10:6379"}  # lm-eval on a GPU node


def test_without_efa_nccl_is_not_told_to_use_it(tmp_path):
    env = cluster_part(read_outputs(outputs_file(tmp_path, efa_interfaces_per_node=0)))["train"]["env"]
    assert "FI_PROVIDER" not in env and env["NCCL_SOCKET_IFNAME"] == "^lo,docker"


def test_the_base_configs_global_batch_is_kept_on_another_gpu_count(tmp_path):
    base = read_pipeline_config(NEOX_20B)
    on_12 = apply_to(base, cluster_part(read_outputs(OUTPUTS)), "b", NEOX_20B.parent)
    assert on_12["train"]["gradient_accumulation_steps"] == 32 and on_12["data"]["pile_mirror"] == "s3://b/pile"
    on_6 = apply_to(base, cluster_part(read_outputs(outputs_file(tmp_path, node_count=6))), "b", NEOX_20B.parent)
    # 48 GPUs are 6 replicas of tensor 2 x pipeline 4: 4 x 64 x 6 = 1536
    assert (on_6["train"]["num_workers"], on_6["train"]["gradient_accumulation_steps"]) == (48, 64)
    assert on_6["train"]["zero_stage"] == 1 and on_6["registry"] == base["registry"]  # the rest is the base's
    with pytest.raises(ConfigError, match="1536 sequences does not divide over 40 GPUs in model replicas of 8"):
        apply_to(base, cluster_part(read_outputs(outputs_file(tmp_path, node_count=5))), "b", NEOX_20B.parent)


def test_the_command_writes_a_config_that_passes_neox_check(tmp_path):
    out = tmp_path / "cluster" / "pile-neox-20b.yaml"
    done = neox("cluster", "config", OUTPUTS, "--base", NEOX_20B, "--output", out)
    assert "96 GPU workers" in done.stdout
    check_pipeline_config(out)  # train.model still finds configs/model/neox-20b.yml from the new folder
    cfg = load_train_config(out)
    assert (cfg.num_workers, cfg.global_batch_size, cfg.ray_address) == (96, 1536, "10.42.0.10:6379")
    assert cfg.env["FI_PROVIDER"] == "efa" and cfg.storage_path == "/fsx/neox-work/train"
    printed = yaml.safe_load(neox("cluster", "config", OUTPUTS).stdout)  # without --base: the cluster part alone
    assert set(printed) == {"work_root", "data", "train", "eval"} and printed["train"]["env"] == cfg.env


@pytest.mark.parametrize(
    "outputs, message",
    [
        ("{}", "no outputs yet; run `terraform apply`"),
        ('{"bucket": {"value": "b"}}', "missing Terraform output\\(s\\) ray_address"),
        ("[1, 2]", "not the output of `terraform output -json`"),
        ("{not json", "not JSON"),
    ],
)
def test_outputs_that_are_not_the_clusters_are_refused(tmp_path, outputs, message):
    path = tmp_path / "outputs.json"
    path.write_text(outputs)
    with pytest.raises(ConfigError, match=message):
        read_outputs(path)


def test_a_cluster_without_a_shared_file_system_needs_a_work_root(tmp_path):
    outputs = read_outputs(outputs_file(tmp_path, work_root=None))
    with pytest.raises(ConfigError, match="no shared file system"):
        cluster_part(outputs)
    part = cluster_part(outputs, work_root="/shared/neox")
    assert (part["work_root"], part["train"]["storage_path"]) == ("/shared/neox", "/shared/neox/train")
    assert (
        "error: the cluster has no shared file system"
        in neox("cluster", "config", outputs_file(tmp_path, work_root=None), ok=False).stderr
    )

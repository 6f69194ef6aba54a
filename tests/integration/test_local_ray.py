"""Without an address, every command runs on a Ray of its own: a `ray start` left running on the machine, which
plain `ray.init()` joins, is not joined (its resources are not the run's, and the placement check relies on it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.conftest import free_port, ray_start_ports

RAY = str(Path(sys.executable).with_name("ray"))
GCS = "import ray{}; {}; print(ray.get_runtime_context().gcs_address)"


def test_a_ray_left_running_by_ray_start_is_not_joined(tmp_path):
    # RAY_TMPDIR keeps the leftover's address file (what ray.init() looks for) away from every other Ray here
    short = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_TMPDIR": short,
        "RAY_AUTH_MODE": "disabled",
    }
    port = free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
        + ["--disable-usage-stats", *ray_start_ports()],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (Path(short) / "ray" / "ray_current_cluster").exists():
            assert head.poll() is None and time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.5)

        def gcs(code: str) -> str:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
            return out.stdout.strip().splitlines()[-1]

        assert gcs(GCS.format("", "ray.init()")).endswith(f":{port}")  # the trap: plain ray.init() joins it
        ours = gcs(GCS.format("; from neox.runtime.ray_cluster import ensure_ray", "ensure_ray()"))
        assert not ours.endswith(f":{port}")
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(short, ignore_errors=True)

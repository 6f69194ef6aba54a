"""The cluster services' authentication, run for real on loopback the way the head node's bootstrap configures
it: MLflow's basic-auth app with the config file the bootstrap writes, and Ray with the token settings the
bootstrap puts in every node's environment. Each refuses a client without the credentials and serves one with them
(given as the bootstrap gives them: environment variables and a token file, nothing in a pipeline config)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import requests

from tests.infra.test_terraform import mlflow_auth_config, rendered_bootstrap
from tests.integration.conftest import free_port, ray_start_ports, wait_for_http

BIN = Path(sys.executable).parent


@pytest.fixture
def started():
    """Start processes in sessions of their own; kill each whole session (a server and its workers) afterwards."""
    processes = []

    def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        with contextlib.suppress(ProcessLookupError):  # it may have exited by itself
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_mlflow_refuses_a_client_without_the_admin_password_the_bootstrap_sets(tmp_path, started):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    password = "generated40charsFromSecretsManager0123456"
    head = rendered_bootstrap("head")
    (tmp_path / "mlflow-auth.ini").write_text(mlflow_auth_config(head, password, tmp_path))
    service = dict(re.findall(r'"Environment=(MLFLOW_SERVER_\w+)=(\w+)"', head))
    assert service == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: the pipeline runs no jobs
    port = free_port()
    env = {
        **os.environ,
        **service,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "mlflow-auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "0f" * 32,  # the head makes its own (mlflow-server.env)
    }
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    server = started(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        env,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_for_http(f"{uri}/health", server)
    serving = [" ".join(p.cmdline()) for p in psutil.Process(server.pid).children(recursive=True)]
    assert not [line for line in serving if "_job_runner" in line], serving

    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=("admin", "wrong"), timeout=30).status_code == 401
    assert requests.get(search, auth=("admin", password), timeout=30).status_code == 200

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", password
    try:  # what every service and training worker has from /etc/neox/credentials.env
        assert MlflowClient(tracking_uri=uri).create_experiment("authenticated")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = "wrong"
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            MlflowClient(tracking_uri=uri).create_experiment("refused")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]


def ray_auth_env(script: str) -> dict[str, str]:
    """The RAY_AUTH_* settings the bootstrap writes into every node's /etc/neox/cluster.env."""
    return dict(line.split("=", 1) for line in script.splitlines() if line.startswith("RAY_AUTH_"))


@pytest.fixture
def ray_sessions():
    """A short folder for a Ray head's sessions: its Unix sockets live under it, and their paths have 107 bytes."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_ray_refuses_a_driver_without_the_cluster_token(tmp_path, ray_sessions, started):
    auth = ray_auth_env(rendered_bootstrap("worker"))
    assert (
        auth
        == ray_auth_env(rendered_bootstrap("head"))
        == {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": "/etc/neox/ray-token",
        }
    )
    token = tmp_path / "ray-token"
    token.write_text("0123456789abcdef" * 4)
    with_token = {**os.environ, **auth, "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    head = started(
        [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        + [f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={ray_sessions}"]
        + ray_start_ports(),
        with_token,
    )

    def driver(env: dict[str, str]) -> subprocess.CompletedProcess:
        code = f"import ray; ray.init(address='127.0.0.1:{port}'); print(ray.get(ray.put('joined')))"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)

    joined = driver(with_token)
    assert joined.returncode == 0 and "joined" in joined.stdout, joined.stderr[-2000:]
    assert head.poll() is None
    wrong = tmp_path / "wrong-token"
    wrong.write_text("f" * 64)
    for env in ({**with_token, "RAY_AUTH_TOKEN_PATH": str(wrong)}, {**os.environ, "RAY_AUTH_MODE": "token"}):
        refused = driver({**env, "HOME": str(tmp_path)})  # no ~/.ray/auth_token to fall back on
        assert refused.returncode != 0 and "joined" not in refused.stdout
        assert "auth" in refused.stderr.lower(), refused.stderr[-2000:]

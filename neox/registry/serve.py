"""`neox serve`: a registered version (or a logged model's folder) behind MLflow's scoring server on this machine.

The server is MLflow's own (`mlflow.pyfunc.scoring_server`, what `mlflow models serve --env-manager local` runs),
started with this interpreter: MLflow starts it as `uvicorn` by name, which fails ("uvicorn: not found") unless
the virtual environment's bin folder is on PATH."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from neox.errors import ConfigError


@contextlib.contextmanager
def local_model(model_uri: str, tracking_uri: str) -> Iterator[Path]:
    """The model's folder: `model_uri` itself when it is one, else a download of it (removed afterwards)."""
    if Path(model_uri).is_dir():
        if not (Path(model_uri) / "MLmodel").is_file():
            raise ConfigError(f"{model_uri} is not an MLflow model folder (no MLmodel file)")
        yield Path(model_uri)
        return
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # models:/ resolves through it; this process only serves
    with tempfile.TemporaryDirectory(prefix="neox-serve-") as scratch:
        try:
            yield Path(download_artifacts(artifact_uri=model_uri, dst_path=scratch, tracking_uri=tracking_uri))
        except MlflowException as err:
            raise ConfigError(f"{model_uri}: {err.message}") from None


def server_command(model_dir: Path, host: str, port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    """MLflow's scoring server for `model_dir` under this interpreter's uvicorn, and its environment."""
    from mlflow.pyfunc.scoring_server import get_cmd

    _, env = get_cmd(str(model_dir), port=port, host=host, nworkers=workers)  # its environment: model path, timeout
    app = "mlflow.pyfunc.scoring_server.app:app"
    command = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port), "--workers", str(workers), app]
    return command, env


def curl_example(host: str, port: int) -> str:
    body = json.dumps({"inputs": ["Once upon a time"], "params": {"max_new_tokens": 32, "temperature": 0.8}})
    return f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' -d '{body}'"


def serve(model_uri: str, tracking_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> int:
    """Serve until interrupted; returns the server's exit status."""
    with local_model(model_uri, tracking_uri) as model_dir:
        command, env = server_command(model_dir, host, port, workers)
        print(f"serving {model_uri} on http://{host}:{port} (Ctrl-C stops it); try:\n  {curl_example(host, port)}")
        print("params: max_new_tokens, temperature (0: greedy), top_k, top_p, seed, stop", flush=True)
        server = subprocess.Popen(command, env=env)
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())  # a service manager's stop reaches the server
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.terminate()
            return server.wait()

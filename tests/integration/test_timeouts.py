"""A stage task past its `timeouts:` hours fails as TimedOut even while it blocks in `ray.get` (where Prefect's
own SIGALRM timeout waits for the call to return), and the Ray work it was waiting on is ended, not left running.
Run in a process of its own: the deadline shuts Ray down, which the session's shared Ray must not see."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

BLOCKED_IN_RAY = """
import json, os, sys, time
import ray
from prefect import flow, task
from tasks.deadline import within

pid_file = sys.argv[1]

@ray.remote
def hung():
    open(pid_file, "w").write(str(os.getpid()))
    time.sleep(600)

@task(name="stuck")
def stuck():
    ray.init(num_cpus=1, include_dashboard=False)
    return within("train", 3 / 3600, lambda: ray.get(hung.remote()))

@flow
def run():
    state = stuck(return_state=True)
    return {"state": state.name, "message": state.message}

def alive(pid):
    try:
        return "ray::" in open(f"/proc/{pid}/cmdline").read()
    except FileNotFoundError:
        return False

started = time.monotonic()
outcome = run()
seconds = time.monotonic() - started
hung = int(open(pid_file).read())
for _ in range(100):  # still this process: only the deadline's own doing can have ended the Ray worker
    if not alive(hung):
        break
    time.sleep(0.1)
print(json.dumps({**outcome, "seconds": seconds, "hung_alive": alive(hung)}))
"""


def test_a_task_blocked_in_ray_times_out_and_its_ray_work_is_ended(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    pid_file = tmp_path / "hung.pid"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IN_RAY, str(pid_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "TimedOut"
    assert "train ran past its timeout: timeouts.train_hours is 0.000833333" in outcome["message"]
    assert outcome["seconds"] < 120  # the hung remote call sleeps 600 s
    assert not outcome["hung_alive"]

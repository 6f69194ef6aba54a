"""A stage task past its `timeouts:` hours fails as TimedOut even while it blocks in Ray (where Prefect's own
SIGALRM timeout waits for the call to return), and the Ray tasks it was waiting on are cancelled, not left
running. The stage here is the data stages' own scheduler, `run_ordered`, on a task that never finishes, in a
process that ignores SIGINT, as a job started in the background from a script does. Run in a process of its own:
the interrupt and a Ray of its own stay out of the test session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

from tests.conftest import REPO

BLOCKED_IN_RAY = """
import faulthandler, json, os, signal, sys, time
faulthandler.dump_traceback_later(150, exit=True)  # a hang ends the script with where each of its threads was
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a flow a script started with `&`, the hardest case
import ray
from prefect import flow, task
from flows.local_api import patient_local_api
from neox.runtime.ray_cluster import ensure_ray, run_ordered
from tasks.deadline import within

pid_file = sys.argv[1]

@ray.remote
def hung():
    open(pid_file, "w").write(str(os.getpid()))
    time.sleep(600)

@task(name="stuck")
def stuck():
    ensure_ray(num_cpus=1)
    return within("dedup", 3 / 3600, lambda: run_ordered([(hung, ())], 1, "hung", "task"))

@flow
def run():
    state = stuck(return_state=True)
    return {"state": state.name, "message": state.message}

def running(pid):  # a Ray worker is named after the task it runs: ray::hung, then ray::IDLE
    try:
        return "ray::hung" in open(f"/proc/{pid}/cmdline").read()
    except FileNotFoundError:
        return False

started = time.monotonic()
with patient_local_api():
    outcome = run()
seconds = time.monotonic() - started
hung = int(open(pid_file).read())
for _ in range(100):  # Ray is still up: only the cancel can have stopped the task
    if not running(hung):
        break
    time.sleep(0.1)
print(json.dumps({**outcome, "seconds": seconds, "hung_running": running(hung)}))
"""


def test_a_task_blocked_in_ray_times_out_and_its_ray_tasks_are_cancelled(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    pid_file = tmp_path / "hung.pid"
    # output to files, not pipes: the Ray and Prefect processes the script starts would hold a pipe open after it
    # ended, and a failure's message would wait for them
    with (tmp_path / "out").open("w+") as out, (tmp_path / "err").open("w+") as err:
        script = subprocess.Popen(
            [sys.executable, "-c", BLOCKED_IN_RAY, str(pid_file)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):  # its own stack dump at 150 s ends it first
            script.wait(timeout=180)
        with contextlib.suppress(ProcessLookupError):  # whatever it left running in its session, if anything
            os.killpg(script.pid, signal.SIGKILL)
        script.wait()
        err.seek(0)
        out.seek(0)
        assert script.returncode == 0, err.read()[-12000:]
        outcome = json.loads(out.read().strip().splitlines()[-1])
    assert outcome["state"] == "TimedOut"
    assert "dedup ran past its timeout: timeouts.dedup_hours is 0.000833333" in outcome["message"]
    assert outcome["seconds"] < 120  # the hung remote call sleeps 600 s
    assert not outcome["hung_running"]

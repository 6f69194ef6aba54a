"""checkov, the static security scanner, over infra/terraform: no failed check, and every check skipped is
skipped inline with its reason. checkov lives in .venv-checkov (make test builds it from requirements/checkov-lock.txt)
because its pins clash with the main lock."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import REPO

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


def test_checkov_fails_no_check_and_every_skip_says_why():
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make test` creates it (or `make .venv-checkov/.installed`)"
    done = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(REPO / "infra" / "terraform"),
            "--framework",
            "terraform",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    summary, results = report["summary"], report["results"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): {c['check_name']}"
        for c in results["failed_checks"]
    ]
    assert failed == [] and done.returncode == 0, "\n".join(failed)
    assert (
        summary["parsing_errors"] == 0 and summary["resource_count"] >= 40 and summary["passed"] >= 100
    )  # it read it all
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 5, f"{check['check_id']} on {check['resource']} is skipped without a reason"

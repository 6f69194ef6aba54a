"""The promotion decision as a reader wants it: markdown with the verdict, the reasons, the rule and both metric
sets side by side. It is the model version's description in MLflow and the Prefect promotion artifact."""

from __future__ import annotations

from typing import Any

from neox.registry.rule import PromotionRule


def decision_markdown(name: str, version: str, record: dict[str, Any], rule: PromotionRule) -> str:
    """`record`: what `promote` stores on the version (promoted, reasons, both metric sets, champion version)."""
    verdict = "now the champion" if record["promoted"] else "not promoted"
    champion = record.get("champion_version")
    lines = [f"### {name} version {version}: {verdict}", ""]
    lines += [f"- {reason}" for reason in record["reasons"]]
    better = "lower" if rule.direction == "minimize" else "higher"
    lines += ["", f"**Rule**: `{rule.metric}`, {better} is better, by more than {rule.min_improvement:g}."]
    lines += [f"Guard: `{g.metric}` may not get worse by more than {g.tolerance:g}." for g in rule.guards]
    lines += [f"Floor: `{metric}` {bound}." for metric, bound in rule.floors.items()]
    candidate, held = record["candidate_metrics"], record.get("champion_metrics") or {}
    if champion is None and record.get("baseline"):
        lines += ["", f"No champion yet: compared with {record['baseline']}, scored on the same data.", ""]
        lines += ["| metric | this version | baseline |", "|---|---|---|"]
        for metric in sorted(set(candidate) | set(held)):
            lines.append(f"| `{metric}` | {_number(candidate.get(metric))} | {_number(held.get(metric))} |")
    elif champion is None:
        lines += ["", "No champion yet: this first version was checked against the floors only.", ""]
        lines += ["| metric | this version |", "|---|---|"]
        lines += [f"| `{metric}` | {value:.6g} |" for metric, value in sorted(candidate.items())]
    else:
        lines += ["", f"Champion: version {champion}, scored on {record['champion_scored_on']}.", ""]
        lines += [f"| metric | this version | champion (v{champion}) |", "|---|---|---|"]
        for metric in sorted(set(candidate) | set(held)):
            lines.append(f"| `{metric}` | {_number(candidate.get(metric))} | {_number(held.get(metric))} |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.6g}"

"""The promotion rule, pure: whether a candidate's metrics earn it the champion alias over the current champion's
(primary metric with a direction and a minimum improvement, guards that must not regress, floors for a first
champion). No MLflow here; `neox.registry.mlflow_registry` applies the decision.

    registry:
      rule: {metric: neox_heldout/bits_per_byte, direction: minimize, min_improvement: 0.0,
             guards: [{metric: neox_lastword/acc, direction: maximize, tolerance: 0.01}],
             floors: {neox_heldout/bits_per_byte: {max: 3.0}}}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from neox.errors import ConfigError
from neox.pipeline.configfile import check_type

Direction = Literal["minimize", "maximize"]


@dataclasses.dataclass(frozen=True)
class Guard:
    """A metric that must not get worse than the champion's by more than `tolerance` (absolute)."""

    metric: str
    direction: Direction
    tolerance: float = 0.0


@dataclasses.dataclass(frozen=True)
class PromotionRule:
    metric: str = "neox_heldout/bits_per_byte"
    direction: Direction = "minimize"
    min_improvement: float = 0.0  # absolute; the candidate must beat the champion by more than this
    guards: tuple[Guard, ...] = ()
    # absolute bounds the first champion must meet: {metric: {"max": x}} or {"min": y}
    floors: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for direction in (self.direction, *(g.direction for g in self.guards)):
            if direction not in ("minimize", "maximize"):
                raise ConfigError(f"promotion direction must be minimize or maximize, got {direction!r}")
        for metric, bound in self.floors.items():
            if not bound or set(bound) - {"min", "max"}:
                raise ConfigError(f"registry.rule.floors.{metric} must give `min` and/or `max`, got {bound!r}")


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]


def promotion_rule(section: dict[str, Any] | None) -> PromotionRule:
    """The `rule:` of a pipeline config's `registry:` section."""
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(PromotionRule)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown registry.rule key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    guards = tuple(_guard(g) for g in section.pop("guards", None) or [])
    fields = {f.name: f.type for f in dataclasses.fields(PromotionRule)}
    values = {k: check_type(f"registry.rule.{k}", v, fields[k]) for k, v in section.items()}
    return PromotionRule(guards=guards, **values)


def _guard(entry: Any) -> Guard:
    if not isinstance(entry, dict) or not {"metric", "direction"} <= set(entry) <= {"metric", "direction", "tolerance"}:
        raise ConfigError(
            f"registry.rule.guards entries need metric, direction and optionally tolerance, got {entry!r}"
        )
    tolerance = check_type("registry.rule.guards.tolerance", entry.get("tolerance", 0.0), "float")
    return Guard(str(entry["metric"]), entry["direction"], tolerance)


def _gain(direction: Direction, new: float, old: float) -> float:
    return old - new if direction == "minimize" else new - old


def decide(candidate: dict[str, float], champion: dict[str, float] | None, rule: PromotionRule) -> Decision:
    """Whether the candidate's metrics earn it the champion alias."""
    reasons = []
    if rule.metric not in candidate:
        return Decision(False, (f"the candidate has no {rule.metric}",))
    if champion is None:
        for metric, bound in rule.floors.items():
            value = candidate.get(metric)
            if value is None:
                reasons.append(f"no {metric} to check against its floor")
            elif "max" in bound and value > bound["max"]:
                reasons.append(f"{metric} {value:.6g} is above its floor's max {bound['max']:.6g}")
            elif "min" in bound and value < bound["min"]:
                reasons.append(f"{metric} {value:.6g} is below its floor's min {bound['min']:.6g}")
        return Decision(not reasons, tuple(reasons) or ("first version meeting the floors",))
    if rule.metric not in champion:
        return Decision(True, (f"the champion has no {rule.metric}",))
    gain = _gain(rule.direction, candidate[rule.metric], champion[rule.metric])
    if gain <= rule.min_improvement:
        reasons.append(
            f"{rule.metric} {candidate[rule.metric]:.6g} vs champion {champion[rule.metric]:.6g}: "
            f"improvement {gain:.6g} is not more than {rule.min_improvement:.6g}"
        )
    for guard in rule.guards:
        if guard.metric in candidate and guard.metric in champion:
            loss = -_gain(guard.direction, candidate[guard.metric], champion[guard.metric])
            if loss > guard.tolerance:
                reasons.append(f"guard {guard.metric} regressed by {loss:.6g} (> {guard.tolerance:.6g})")
        else:
            reasons.append(f"guard {guard.metric} is missing from the candidate or the champion")
    if reasons:
        return Decision(False, tuple(reasons))
    return Decision(True, (f"{rule.metric} improved by {gain:.6g}",))

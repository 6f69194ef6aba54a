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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Strict

from neox.pipeline.configfile import Float, NonNegativeFloat, parse, section

Direction = Literal["minimize", "maximize"]


Metric = Annotated[str, Strict(), Field(min_length=1)]  # task/metric, as lm-eval names them


@section
class Guard:
    """A metric that must not get worse than the champion's by more than `tolerance` (absolute)."""

    metric: Metric
    """The guarded metric, task/metric."""
    direction: Direction
    """Whether lower (minimize) or higher (maximize) is better."""
    tolerance: NonNegativeFloat = 0.0
    """How much worse than the champion's it may get (absolute)."""


@section
class PromotionRule:
    """`registry.rule`: when a candidate earns the `champion` alias."""

    metric: Metric = "neox_heldout/bits_per_byte"
    """The primary metric, task/metric as lm-eval reports it."""
    direction: Direction = "minimize"
    """Whether lower (minimize) or higher (maximize) is better."""
    min_improvement: NonNegativeFloat = 0.0
    """Absolute; the candidate must beat the champion by more than this."""
    guards: tuple[Guard, ...] = ()
    """Metrics that must not regress by more than their tolerance."""
    floors: dict[Metric, dict[Literal["min", "max"], Float]] = dataclasses.field(default_factory=dict)
    """Absolute bounds the first champion must meet: {metric: {max: x}} and/or {min: y}."""

    def __post_init__(self) -> None:
        empty = [metric for metric, bound in self.floors.items() if not bound]
        if empty:
            raise ValueError(f"floors of {', '.join(empty)} give neither min nor max")

    def metrics(self) -> list[str]:
        return [self.metric, *(g.metric for g in self.guards), *self.floors]


def mlflow_model_name(name: str) -> str:
    """MLflow's rules for a registered model's name, checked with the config rather than at registration, after
    training and evaluation."""
    if not name.strip() or name in (".", "..") or "/" in name or ":" in name:
        raise ValueError(f"{name!r} is not an MLflow model name: not blank, '.' or '..', and without '/' or ':'")
    return name


@section
class RegistryConfig:
    """`registry:`: the MLflow registered model every evaluated checkpoint becomes a version of."""

    name: Annotated[str, Strict(), AfterValidator(mlflow_model_name)] = "neox-tiny"
    """Registered model name (MLflow's rules: not blank, '.' or '..'; no '/' or ':')."""
    rule: PromotionRule = PromotionRule()


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]


def promotion_rule(section: dict[str, Any] | None) -> PromotionRule:
    """The `rule:` of a pipeline config's `registry:` section."""
    return parse(PromotionRule, section, "registry.rule")


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


def decide_first(candidate: dict[str, float], baseline: dict[str, float] | None, rule: PromotionRule) -> Decision:
    """Whether a first version (no champion yet) becomes champion: it must meet the floors and, given a baseline
    (a fine-tune's base model scored on the same data), beat it as it would have to beat a champion."""
    floors = decide(candidate, None, rule)
    return decide(candidate, baseline, rule) if floors.promote and baseline is not None else floors

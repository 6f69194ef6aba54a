"""The promotion gate's rule: primary metric and direction, minimum improvement, guards, floors."""

from __future__ import annotations

import pytest

from neox.errors import ConfigError
from neox.registry.rule import Guard, PromotionRule, decide, decide_first, promotion_rule

RULE = PromotionRule(
    metric="bpb",
    direction="minimize",
    min_improvement=0.01,
    guards=(Guard("acc", "maximize", tolerance=0.02),),
    floors={"bpb": {"max": 5.0}, "acc": {"min": 0.1}},
)


def test_a_clearly_better_candidate_is_promoted():
    decision = decide({"bpb": 2.0, "acc": 0.30}, {"bpb": 2.5, "acc": 0.31}, RULE)
    assert decision.promote and "improved by 0.5" in decision.reasons[0]


@pytest.mark.parametrize(
    "candidate, reason",
    [
        ({"bpb": 2.6, "acc": 0.31}, "improvement -0.1 is not more than 0.01"),  # worse
        ({"bpb": 2.495, "acc": 0.31}, "is not more than 0.01"),  # better, but by less than the minimum
        ({"bpb": 2.0, "acc": 0.25}, "guard acc regressed by 0.06"),  # better primary, guard broken
        ({"acc": 0.5}, "the candidate has no bpb"),
    ],
)
def test_a_candidate_that_is_not_better_enough_is_refused_with_the_reason(candidate, reason):
    decision = decide(candidate, {"bpb": 2.5, "acc": 0.31}, RULE)
    assert not decision.promote and any(reason in r for r in decision.reasons), decision.reasons


def test_the_first_champion_must_meet_the_floors():
    assert decide({"bpb": 4.0, "acc": 0.2}, None, RULE).promote
    refused = decide({"bpb": 6.0, "acc": 0.05}, None, RULE)
    assert not refused.promote and len(refused.reasons) == 2


def test_a_first_fine_tune_must_meet_the_floors_and_beat_its_base():
    base = {"bpb": 2.5, "acc": 0.31}
    assert decide_first({"bpb": 2.0, "acc": 0.30}, base, RULE).promote
    assert not decide_first({"bpb": 2.6, "acc": 0.31}, base, RULE).promote  # worse than its base
    below_floor = decide_first({"bpb": 2.0, "acc": 0.05}, {"bpb": 2.5, "acc": 0.05}, RULE)
    assert not below_floor.promote and "below its floor's min" in below_floor.reasons[0]  # beats the base, no matter
    assert decide_first({"bpb": 4.0, "acc": 0.2}, None, RULE) == decide({"bpb": 4.0, "acc": 0.2}, None, RULE)


def test_maximize_direction():
    rule = PromotionRule(metric="acc", direction="maximize")
    assert decide({"acc": 0.4}, {"acc": 0.3}, rule).promote
    assert not decide({"acc": 0.3}, {"acc": 0.3}, rule).promote  # equal is no improvement


def test_rule_from_a_config_section():
    rule = promotion_rule(
        {
            "metric": "acc",
            "direction": "maximize",
            "min_improvement": 0,
            "guards": [{"metric": "bpb", "direction": "minimize", "tolerance": 0.1}],
            "floors": {"acc": {"min": 0.2}},
        }
    )
    assert rule.guards == (Guard("bpb", "minimize", 0.1),) and rule.min_improvement == 0.0
    assert promotion_rule(None) == PromotionRule()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"metirc": "acc"}, "registry.rule.metirc: unknown key \\(did you mean metric\\?\\)"),
        ({"direction": "up"}, "registry.rule.direction: input should be 'minimize' or 'maximize'"),
        ({"guards": [{"metric": "acc"}]}, "registry.rule.guards.0.direction: field required"),
        ({"floors": {"acc": {"above": 1}}}, "registry.rule.floors.acc.above"),
        ({"floors": {"acc": {}}}, "floors of acc give neither min nor max"),
        ({"min_improvement": "a lot"}, "registry.rule.min_improvement: input should be a valid number"),
    ],
)
def test_bad_rule_is_a_clear_error(section, message):
    with pytest.raises(ConfigError, match=message):
        promotion_rule(section)


def test_the_decision_reads_as_markdown_with_the_rule_and_both_metric_sets():
    from neox.registry.report import decision_markdown

    record = {
        "promoted": False,
        "reasons": ["guard acc regressed by 0.06 (> 0.02)"],
        "candidate_metrics": {"bpb": 2.0, "acc": 0.25},
        "champion_version": "3",
        "champion_metrics": {"bpb": 2.5, "acc": 0.31},
        "champion_scored_on": "the candidate's eval data",
    }
    text = decision_markdown("tiny", "4", record, RULE)
    assert text.startswith("### tiny version 4: not promoted\n\n- guard acc regressed by 0.06 (> 0.02)\n")
    assert "**Rule**: `bpb`, lower is better, by more than 0.01." in text
    assert "Guard: `acc` may not get worse by more than 0.02." in text
    assert (
        "| metric | this version | champion (v3) |\n|---|---|---|\n| `acc` | 0.25 | 0.31 |\n| `bpb` | 2 | 2.5 |" in text
    )


def test_a_first_version_is_said_to_have_no_champion_to_beat():
    from neox.registry.report import decision_markdown

    record = {"promoted": True, "reasons": ["first version meeting the floors"], "candidate_metrics": {"bpb": 3.0}}
    text = decision_markdown("tiny", "1", record, RULE)
    assert "now the champion" in text and "No champion yet" in text and "None" not in text
    assert "| `bpb` | 3 |" in text

"""The curiosity reward against hand-computed cases: RaPR 0 and 1, the bonus below H, the
unrecovered-error rule, the operation penalty, and the judgement shared with the eval metrics."""

from __future__ import annotations

import doctest

import pytest

from foveal.evaluation import metrics
from foveal.training import grpo, rewards
from foveal.training.rewards import Outcome, RewardConfig, correctness, group_rewards

C = RewardConfig()  # alpha 0.5, beta 0.05, H 0.3, N 1


def totals(outcomes: list[Outcome], config: RewardConfig = C) -> list[float]:
    return [round(r.total, 9) for r in group_rewards(outcomes, config)]


def test_doctests_pass() -> None:
    assert doctest.testmod(rewards).failed == 0
    assert doctest.testmod(grpo).failed == 0


def test_rapr_zero_pays_no_bonus_because_nobody_zoomed() -> None:
    group = [Outcome("scratch", "scratch")] * 3 + [Outcome("none", "scratch")] * 5
    assert totals(group) == [1.0] * 3 + [0.0] * 5
    assert all(r.curiosity == 0.0 for r in group_rewards(group, C))


def test_rapr_one_pays_no_bonus_because_it_is_above_h() -> None:
    group = [Outcome("pit", "pit", (True,))] * 4 + [Outcome("dent", "pit", (True,))] * 4
    assert totals(group) == [1.0] * 4 + [0.0] * 4


def test_one_zoom_in_eight_earns_the_bonus() -> None:
    # RaPR = 1/8: the zooming rollout earns 0.5 * (0.3 - 0.125) = 0.0875, even when wrong
    group = [Outcome("crack", "crack", (True,))] + [Outcome("crack", "crack")] * 7
    assert totals(group) == [1.0875] + [1.0] * 7
    wrong = [Outcome("dent", "crack", (True,))] + [Outcome("crack", "crack")] * 7
    assert totals(wrong) == [0.0875] + [1.0] * 7


def test_a_correct_answer_after_an_unrecovered_error_earns_nothing() -> None:
    # two of four zoom (RaPR 0.5 >= H: no bonus); one's only crop failed, the other recovered
    group = [Outcome("stain", "stain", (False,)), Outcome("stain", "stain", (False, True)),
             Outcome("stain", "stain"), Outcome("stain", "stain")]
    parts = group_rewards(group, C)
    assert [p.correct for p in parts] == [0.0, 1.0, 1.0, 1.0]
    assert totals(group) == [0.0, 0.95, 1.0, 1.0]  # the recovery used 2 ops: -0.05
    assert correctness(Outcome("stain", "stain", (True, False))) == 0.0  # success, then failure


def test_the_penalty_counts_operations_beyond_n() -> None:
    parts = group_rewards([Outcome("burn", "burn", (True, True, True)), Outcome("burn", "burn")], C)
    assert parts[0].penalty == pytest.approx(-0.1)
    assert parts[0].curiosity == 0.0  # RaPR 0.5
    assert parts[1].penalty == 0.0
    free = RewardConfig(n_free=3)
    assert group_rewards([Outcome("burn", "burn", (True, True, True))], free)[0].penalty == 0.0


def test_no_curiosity_is_alpha_zero() -> None:
    group = [Outcome("pit", "pit", (True,))] + [Outcome("pit", "pit")] * 7
    assert totals(group, RewardConfig(alpha=0.0)) == [1.0] * 8
    assert totals(group, RewardConfig(alpha=1.0, rapr_target=0.5)) == [1.375] + [1.0] * 7


def test_good_parts_must_be_answered_none_and_the_judgement_is_the_eval_one() -> None:
    assert correctness(Outcome("none", "none")) == 1.0
    assert correctness(Outcome("scratch", "none")) == 0.0
    assert correctness(Outcome(None, "none")) == 0.0
    for answer in ("none", "scratch", metrics.UNANSWERED, None):
        assert correctness(Outcome(answer, "scratch")) == float(metrics.correct_type(answer, "scratch"))

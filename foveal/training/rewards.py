"""The curiosity-driven reward of Pixel Reasoner's RL stage, as small pure functions.

r' = r + alpha * max(H - RaPR(x), 0) * 1[the rollout uses an operation] + beta * min(N - n_ops, 0).
`r` is 1 when the answer names the labelled type (`none` for a good part; judged by the same
`correct_type` the eval metrics use) and 0 otherwise, and 0 too when the answer comes right after
an operation error that was never corrected (the last executed operation failed). RaPR(x) is
the share of the query's rollouts that execute an operation; `n_ops` counts executed operations,
failed ones included. Run the doctests with `pytest --doctest-modules foveal/training/rewards.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foveal.evaluation.metrics import correct_type


@dataclass(frozen=True)
class RewardConfig:
    alpha: float = 0.5  # weight of the curiosity bonus (0: plain GRPO, the "learning trap")
    beta: float = 0.05  # weight of the penalty per operation beyond `n_free`
    rapr_target: float = 0.3  # H: queries whose RaPR is below it pay the bonus
    n_free: int = 1  # N: operations a rollout may use without penalty


@dataclass(frozen=True)
class Outcome:
    """What one rollout did, as far as the reward cares."""

    answer: str | None  # the `\\boxed{}` type, None when there was none
    truth: str  # the labelled type
    operations_ok: tuple[bool, ...] = ()  # one per executed operation: whether it succeeded

    @property
    def n_ops(self) -> int:
        return len(self.operations_ok)

    @property
    def uses_operation(self) -> bool:
        return bool(self.operations_ok)


@dataclass(frozen=True)
class Reward:
    correct: float  # r
    curiosity: float  # alpha * max(H - RaPR, 0) * 1[uses an operation]
    penalty: float  # beta * min(N - n_ops, 0), never positive
    total: float  # r'


def unrecovered_error(operations_ok: Sequence[bool]) -> bool:
    """Whether the last executed operation failed, so the answer followed an uncorrected error.

    >>> unrecovered_error([]), unrecovered_error([True]), unrecovered_error([False, True])
    (False, False, False)
    >>> unrecovered_error([False]), unrecovered_error([True, False])
    (True, True)
    """
    return bool(operations_ok) and not operations_ok[-1]


def correctness(outcome: Outcome) -> float:
    """r: 1 for the labelled type, 0 for another, for none, or after an unrecovered error.

    >>> correctness(Outcome("scratch", "scratch", (True,)))
    1.0
    >>> correctness(Outcome("none", "none")), correctness(Outcome(None, "none"))
    (1.0, 0.0)
    >>> correctness(Outcome("scratch", "scratch", (True, False)))
    0.0
    """
    if unrecovered_error(outcome.operations_ok):
        return 0.0
    return 1.0 if correct_type(outcome.answer, outcome.truth) else 0.0


def rapr(uses_operation: Sequence[bool]) -> float:
    """Rate of pixel-space reasoning of one query: the share of its rollouts using an operation.

    >>> rapr([True, False, False, False]), rapr([False] * 8), rapr([True] * 8)
    (0.25, 0.0, 1.0)
    """
    if not uses_operation:
        raise ValueError("RaPR needs at least one rollout")
    return sum(uses_operation) / len(uses_operation)


def curiosity_bonus(query_rapr: float, uses_operation: bool, config: RewardConfig) -> float:
    """alpha * max(H - RaPR, 0), paid only to rollouts that use an operation.

    >>> c = RewardConfig()
    >>> curiosity_bonus(0.0, True, c), curiosity_bonus(0.0, False, c), curiosity_bonus(1.0, True, c)
    (0.15, 0.0, 0.0)
    >>> round(curiosity_bonus(0.1, True, c), 6), curiosity_bonus(0.3, True, c)
    (0.1, 0.0)
    """
    if not uses_operation:
        return 0.0
    return config.alpha * max(config.rapr_target - query_rapr, 0.0)


def operation_penalty(n_ops: int, config: RewardConfig) -> float:
    """beta * min(N - n_ops, 0): nothing up to N operations, -beta for each one beyond.

    >>> c = RewardConfig()
    >>> [round(operation_penalty(n, c), 6) for n in (0, 1, 2, 4)]
    [0.0, 0.0, -0.05, -0.15]
    """
    return config.beta * min(config.n_free - n_ops, 0)


def group_rewards(outcomes: Sequence[Outcome], config: RewardConfig) -> list[Reward]:
    """The rewards of one query's rollouts (the group RaPR is computed over).

    >>> c = RewardConfig()
    >>> rs = group_rewards([Outcome("pit", "pit", (True,)), Outcome("pit", "pit"),
    ...                     Outcome("dent", "pit"), Outcome("dent", "pit")], c)
    >>> [round(r.total, 6) for r in rs]  # RaPR 0.25: the zooming rollout earns 0.5 * 0.05
    [1.025, 1.0, 0.0, 0.0]
    """
    share = rapr([o.uses_operation for o in outcomes])
    out = []
    for o in outcomes:
        r = correctness(o)
        bonus = curiosity_bonus(share, o.uses_operation, config)
        penalty = operation_penalty(o.n_ops, config)
        out.append(Reward(r, bonus, penalty, r + bonus + penalty))
    return out

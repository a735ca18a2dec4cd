"""GRPO pieces of `foveal train rl`: group advantages, the clipped surrogate, per-token
log-probabilities of a conversation, and selective sample replay.

Advantage = r' - the mean r' of its group (no division by the std, the paper's choice). The
objective is PPO's clipped ratio against the rollout policy's log-probabilities with an
asymmetric range (eps_low 0.2, eps_high 0.35), no KL term, summed over the tokens that carry
loss (generated assistant tokens; prompt and tool output never do) and divided by their count
over the whole update batch: a token-level mean. Selective sample replay drops groups whose
rewards are all equal (their advantages are all zero: nothing to learn, only noise in the
mean) and refills the batch by drawing again from the groups that remain.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import torch

from foveal.model.loader import VLM
from foveal.training.forward import IGNORE, Batch, token_logits

G = TypeVar("G")
UNIFORM_TOLERANCE = 1e-9


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(G,) r' minus the group's mean, nothing else.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])).tolist()
    [0.5, -0.5, -0.5, 0.5]
    """
    return rewards - rewards.mean()


def is_uniform(rewards: Sequence[float]) -> bool:
    """Whether every rollout of a group earned the same reward (all advantages zero).

    >>> is_uniform([1.0, 1.0, 1.0]), is_uniform([1.0, 1.025, 1.0])
    (True, False)
    """
    return max(rewards) - min(rewards) <= UNIFORM_TOLERANCE


def replay(groups: Sequence[G], rewards: Sequence[Sequence[float]], size: int,
           rng: random.Random) -> tuple[list[G], float]:
    """Selective sample replay: the informative groups (rewards not all equal), then draws with
    replacement from them until there are `size`; and the share of uniform groups. No
    informative group: an empty batch (the step is skipped).

    >>> batch, uniform = replay("abcd", [[1, 1], [0, 1], [0, 0], [1, 0]], 4, random.Random(0))
    >>> sorted(set(batch)), len(batch), uniform
    (['b', 'd'], 4, 0.5)
    """
    keep = [g for g, r in zip(groups, rewards, strict=True) if not is_uniform(r)]
    uniform = 1.0 - len(keep) / len(groups) if groups else 0.0
    if not keep:
        return [], uniform
    picked = list(keep[:size])
    while len(picked) < size:
        picked.append(keep[rng.randrange(len(keep))])
    return picked, uniform


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.35) -> torch.Tensor:
    """Sum over masked tokens of the negated PPO surrogate; divide by the token count of the
    whole update batch for the token-level mean. `logp`, `old_logp`, `mask`: (B, L) (`mask` bool,
    or per-token weights); `advantages`: (B,), one per rollout. Where the ratio is clipped (above
    1 + eps_high with a positive advantage, below 1 - eps_low with a negative one) the token has no
    gradient."""
    ratio = torch.exp(logp - old_logp)  # (B, L)
    adv = advantages[:, None].to(logp.dtype)  # (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)  # (B, L)
    return (per_token * mask).sum()


def clip_fraction(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                  eps_low: float = 0.2, eps_high: float = 0.35) -> float:
    """Share of masked tokens (weighted, when `mask` holds weights) whose ratio is outside
    [1 - eps_low, 1 + eps_high] (a health log)."""
    ratio = torch.exp(logp - old_logp)
    outside = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).to(mask.dtype) * mask
    return float(outside.sum()) / max(1.0, float(mask.sum()))


def logprobs_of(logits: torch.Tensor, batch: Batch, temperature: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) log-probability of each next token that carries loss (0 elsewhere) from (B, L, V)
    `logits` at the sampling temperature, and the (B, L) bool mask of those tokens."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    mask = batch.targets != IGNORE  # (B, L)
    targets = batch.targets.clamp(min=0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    return logp * mask, mask


def target_logprobs(vlm: VLM, batch: Batch, maps: Sequence[torch.Tensor] | None = None,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprobs_of` the teacher-forced pass of `vlm` over the batch (shared with SFT)."""
    return logprobs_of(token_logits(vlm, batch, maps), batch, temperature)

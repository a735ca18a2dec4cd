"""GRPO on toy tensors: the advantage is r' minus the group mean (no std), the clipped ratio has
no gradient exactly where it is clipped, masked tokens never count, and selective sample
replay drops uniform groups and refills the batch from the others."""

from __future__ import annotations

import random

import torch

from foveal.training.grpo import clip_fraction, clipped_objective, group_advantages, is_uniform, replay


def test_advantage_is_reward_minus_group_mean_without_std() -> None:
    adv = group_advantages(torch.tensor([1.05, 0.0, 0.0, 0.0]))
    assert torch.allclose(adv, torch.tensor([0.7875, -0.2625, -0.2625, -0.2625]))
    # a std-normalised advantage would be the same for rewards x and 10x; ours scales
    assert torch.allclose(group_advantages(torch.tensor([10.5, 0.0, 0.0, 0.0])), 10 * adv)
    assert torch.all(group_advantages(torch.tensor([0.3, 0.3, 0.3])) == 0)


def test_the_gradient_is_zero_exactly_where_the_ratio_is_clipped() -> None:
    # one rollout with A = +1 and one with A = -1; ratios chosen inside and outside [0.8, 1.35]
    ratios = torch.tensor([[1.5, 1.2, 0.5, 1.0], [0.7, 0.9, 1.5, 1.0]])
    old = torch.full_like(ratios, -2.0)
    logp = (old + ratios.log()).requires_grad_(True)
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    advantages = torch.tensor([1.0, -1.0])
    loss = clipped_objective(logp, old, advantages, mask, eps_low=0.2, eps_high=0.35)
    loss.backward()  # type: ignore[no-untyped-call]
    grad = logp.grad
    assert grad is not None
    # A > 0: clipped above 1.35 (no gradient); inside, and below 0.8 (min keeps the unclipped
    # term), the gradient of -ratio * A w.r.t. log p is -ratio * A
    assert grad[0, 0] == 0.0
    assert torch.isclose(grad[0, 1], torch.tensor(-1.2))
    assert torch.isclose(grad[0, 2], torch.tensor(-0.5))
    # A < 0: clipped below 0.8 (no gradient); inside and above 1.35 the gradient is +ratio
    assert grad[1, 0] == 0.0
    assert torch.isclose(grad[1, 1], torch.tensor(0.9))
    assert torch.isclose(grad[1, 2], torch.tensor(1.5))
    assert grad[0, 3] == 0.0 and grad[1, 3] == 0.0  # masked: prompt or tool output
    expected = -(1.35 * 1 + 1.2 + 0.5) + (0.8 + 0.9 + 1.5)
    assert torch.isclose(loss, torch.tensor(expected))
    assert clip_fraction(logp.detach(), old, mask) == 4 / 6


def test_at_ratio_one_the_objective_is_the_advantage_weighted_token_sum() -> None:
    logp = torch.zeros((2, 3), requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = clipped_objective(logp, logp.detach(), torch.tensor([0.5, -0.5]), mask)
    loss.backward()  # type: ignore[no-untyped-call]
    assert float(loss.detach()) == -0.5
    assert logp.grad is not None
    assert logp.grad.tolist() == [[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]


def test_uniform_groups_are_dropped_and_the_batch_is_refilled() -> None:
    groups = ["all-right", "mixed-1", "all-wrong", "mixed-2", "all-bonus"]
    rewards = [[1.0] * 4, [1.0, 0.0, 0.0, 1.0], [0.0] * 4, [1.0875, 1.0, 1.0, 1.0], [1.05] * 4]
    batch, uniform = replay(groups, rewards, size=5, rng=random.Random(3))
    assert len(batch) == 5
    assert set(batch) == {"mixed-1", "mixed-2"}
    assert batch[:2] == ["mixed-1", "mixed-2"]  # each informative group at least once
    assert uniform == 0.6
    assert is_uniform([0.0] * 8) and not is_uniform([0.0] * 7 + [0.05])


def test_a_step_of_only_uniform_groups_has_nothing_to_learn() -> None:
    batch, uniform = replay(["a", "b"], [[1.0, 1.0], [0.0, 0.0]], size=2, rng=random.Random(0))
    assert batch == [] and uniform == 1.0

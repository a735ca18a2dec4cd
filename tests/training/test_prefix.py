"""The shared-prompt pass (`foveal.training.prefix`) on a micro model: a group's prompt run once
gives the per-token log-probabilities and the gradients of running every conversation whole, a
prefix never spans an image that differs between the rows, and the rollout policy's scores of
real rollouts equal scoring each rollout alone."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from foveal.domain import DEFECT_TYPES
from foveal.model.chat import IMAGE, Chunk
from foveal.model.loader import VLM
from foveal.plant.generate import generate
from foveal.reasoning.loop import LoopOptions
from foveal.reasoning.prompts import inspection_prompt
from foveal.training import prefix
from foveal.training.examples import materialize
from foveal.training.forward import collate
from foveal.training.grpo import target_logprobs
from foveal.training.rewards import RewardConfig
from foveal.training.rollouts import (
    MapMemo,
    RolloutPolicy,
    backbone_maps,
    queries_from,
    roll_out,
    score_old_logprobs,
)
from foveal.training.sft import trainable
from foveal.training.trajectories import AssistantTurn, Trajectory, tool_call

CROP = tool_call("crop_image_normalized", {"bbox_2d": [0.2, 0.2, 0.4, 0.4], "target_image": 1})


def frame(seed: int, size: tuple[int, int] = (560, 700)) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def rollout(vlm: VLM, image: npt.NDArray[np.uint8], texts: list[str], memo: MapMemo | None = None
            ) -> tuple[Chunk, list[torch.Tensor] | None]:
    """A scripted rollout; with `memo`, its prompt's pixels are one object per frame, as the loop
    hands them to a query's rollouts (so their maps are computed once)."""
    trajectory = Trajectory("t", inspection_prompt(None, DEFECT_TYPES, 1),
                            tuple(AssistantTurn(t, True) for t in texts), "", "scripted")
    chunk = materialize(trajectory, [image], vlm.chat, vlm.budget)
    if memo is not None:
        first = next((p for p, _ in memo.values() if np.array_equal(p, chunk.patches[0])), chunk.patches[0])
        chunk.patches[0] = first
    return backbone_maps(vlm, chunk, memo)


def independent(vlm: VLM, chunks: list[Chunk], maps: list[list[torch.Tensor] | None]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate(chunks, vlm.chat.pad, vlm.chat.spec)
    return target_logprobs(vlm, batch, [m for ms in maps for m in ms or []])


def grads(vlm: VLM, logp: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    vlm.model.zero_grad(set_to_none=True)
    (logp * weights).sum().backward()  # type: ignore[no-untyped-call]
    return {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None}


def test_a_shared_prompt_gives_the_log_probs_and_gradients_of_whole_passes(micro_vlm: VLM) -> None:
    memo: MapMemo = {}
    a, b = frame(0), frame(1, (280, 900))  # two queries: prompts of different lengths
    pairs = [rollout(micro_vlm, a, [f"A mark. {CROP}", "\\boxed{scratch}"], memo),
             rollout(micro_vlm, a, ["\\boxed{none}"], memo),
             rollout(micro_vlm, a, [f"Look. {CROP}", "Again. " + CROP, "\\boxed{dent}"], memo),
             rollout(micro_vlm, b, ["\\boxed{pit}"]),
             rollout(micro_vlm, b, ["It looks even. \\boxed{none}"])]  # its own maps: equal, not shared
    chunks, maps = [c for c, _ in pairs], [m for _, m in pairs]
    groups = [0, 0, 0, 1, 1]
    first_loss = [c.loss.index(True) for c in chunks]
    assert prefix.prefix_length(chunks[:3], maps[:3]) == first_loss[0] - 1  # the whole prompt, frame included
    assert prefix.prefix_length(chunks[3:], maps[3:]) == first_loss[3] - 1 != first_loss[0] - 1
    own = sorted(len(c) - f + 1 for c, f in zip(chunks, first_loss, strict=True))
    assert len(prefix.buckets(own, prefix.BUCKET_OVERHEAD)) > 1  # the rows' own tokens run in several passes
    micro_vlm.model.train()
    want, want_mask = independent(micro_vlm, chunks, maps)
    got, mask = prefix.logprobs(micro_vlm, chunks, maps, groups)
    assert torch.equal(mask, want_mask) and int(mask.sum()) > 0
    assert float((got - want).detach().abs().max()) < 1e-4
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(0))
    expected, shared = grads(micro_vlm, want, weights), grads(micro_vlm, got, weights)
    trained = {n for n, p in micro_vlm.model.named_parameters() if any(p is q for q in trainable(micro_vlm))}
    assert expected.keys() == shared.keys() and trained <= expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(shared[name], g, rtol=1e-3, atol=1e-6)


def test_a_prefix_stops_before_an_image_that_differs(micro_vlm: VLM) -> None:
    same = [rollout(micro_vlm, frame(0), ["\\boxed{none}"]), rollout(micro_vlm, frame(0), ["\\boxed{pit}"])]
    other = [same[0], rollout(micro_vlm, frame(2), ["\\boxed{pit}"])]  # same size: same token ids
    chunks = [c for c, _ in other]
    image_start, first_loss = chunks[0].types.index(IMAGE), chunks[0].loss.index(True)
    assert chunks[0].ids[:first_loss] == chunks[1].ids[:first_loss]  # the ids cannot tell the frames apart
    assert prefix.prefix_length(chunks, [m for _, m in other]) == image_start
    assert prefix.prefix_length([c for c, _ in same], [m for _, m in same]) > image_start
    pixels = [materialize(Trajectory("t", "Check.", (AssistantTurn("\\boxed{pit}", True),), "", "s"), [f],
                          micro_vlm.chat, micro_vlm.budget) for f in (frame(0), frame(2))]
    assert prefix.prefix_length(pixels, [None, None]) == pixels[0].types.index(IMAGE)  # from the patches
    got, _ = prefix.logprobs(micro_vlm, chunks, [m for _, m in other], [0, 0])
    want, _ = independent(micro_vlm, chunks, [m for _, m in other])
    assert float((got - want).detach().abs().max()) < 1e-4


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plant") / "data"
    generate(out, 3, seed=5, workers=1, size=256, progress=False)
    return out


def test_scores_of_real_rollouts_equal_scoring_each_alone(micro_vlm: VLM, tiny_data: Path) -> None:
    rollout_policy = RolloutPolicy(micro_vlm)
    options = LoopOptions(max_turn_tokens=10, max_turns=2, temperature=1.0, seed=4)
    samples = roll_out(rollout_policy, queries_from([tiny_data])[:2], 3, options, RewardConfig())
    maps = [s.maps for s in samples]
    assert maps[0] is not None and maps[1] is not None and maps[0][0] is maps[1][0]  # one prompt, one map
    score_old_logprobs(rollout_policy, samples, 1.0, batch_size=4)  # a batch straddles both groups
    for s in samples:
        alone, mask = independent(rollout_policy.vlm, [s.chunk], [s.maps])
        assert s.old_logp is not None and s.old_logp.shape == (len(s.chunk),)
        assert float((s.old_logp - alone[0]).abs().max()) < 1e-4 and float(s.old_logp[mask[0]].min()) < 0


def test_doctests_pass() -> None:
    outcome = doctest.testmod(prefix)
    assert outcome.attempted > 0 and outcome.failed == 0

"""The reasoning loop: the cached conversation equals re-encoding it, the trace replays under
teacher forcing, limits end in a forced answer, and batching does not change the answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foveal.domain import Verdict
from foveal.model.loader import VLM
from foveal.reasoning.loop import Inspection, Loop, LoopOptions
from foveal.training.forward import collate, token_logits


def frames(seed: int, n: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (600, 800, 3), dtype=np.uint8) for _ in range(n)]


def items() -> list[Inspection]:
    return [Inspection(frames(0), "Inspect this part.", item_id="a"),
            Inspection(frames(1, 3), "Inspect this sequence.", item_id="b")]


def test_reusing_the_cache_gives_the_same_traces_as_reencoding(micro_vlm: VLM) -> None:
    options = dict(temperature=1.0, seed=7, max_turn_tokens=30)
    cached = Loop(micro_vlm, LoopOptions(**options)).run(items())  # type: ignore[arg-type]
    fresh = Loop(micro_vlm, LoopOptions(reuse_cache=False, **options)).run(items())  # type: ignore[arg-type]
    for a, b in zip(cached, fresh, strict=True):
        assert [s.text for s in a.steps] == [s.text for s in b.steps]
        assert a.defect_type == b.defect_type
        assert a.confidence == pytest.approx(b.confidence, rel=1e-4)


def test_a_batch_answers_like_one_inspection_at_a_time(micro_vlm: VLM) -> None:
    loop = Loop(micro_vlm, LoopOptions(max_turn_tokens=30))
    batched = loop.run(items())
    alone = [loop.run([item])[0] for item in items()]
    for a, b in zip(batched, alone, strict=True):
        assert [s.text for s in a.steps] == [s.text for s in b.steps]
        assert a.defect_score == pytest.approx(b.defect_score, abs=1e-4)


def test_the_trace_replays_under_teacher_forcing(micro_vlm: VLM) -> None:
    [trace] = Loop(micro_vlm, LoopOptions(max_turn_tokens=30)).run(items()[:1])
    conv = trace.conversation
    batch = collate([conv], micro_vlm.chat.pad)
    with torch.no_grad():
        logits = token_logits(micro_vlm, batch)[0]  # (L, V)
    generated = [i for i in range(1, len(conv)) if conv.loss[i] and conv.types[i] == 0]
    first_turn = [i for i in generated if i < len(conv) - 1][:10]
    greedy = logits.argmax(-1)
    assert all(int(greedy[i - 1]) == conv.ids[i] for i in first_turn)


def test_operation_limits_end_with_a_forced_answer_from_the_taxonomy(micro_vlm: VLM) -> None:
    loop = Loop(micro_vlm, LoopOptions(max_turn_tokens=8, max_turns=1))
    [trace] = loop.run(items()[:1])
    assert trace.forced_answer
    assert trace.defect_type in items()[0].taxonomy
    assert 0.0 <= trace.confidence <= 1.0
    assert trace.verdict in (Verdict.OK, Verdict.DEFECT, Verdict.UNCERTAIN)

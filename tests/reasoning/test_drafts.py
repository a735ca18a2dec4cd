"""Drafted tokens (`foveal.reasoning.drafts`): greedy turns check several drafted tokens per
decoder pass and say exactly what they said one pass per token, pointer and all; the drafter
proposes what followed a context last time."""

from __future__ import annotations

import numpy as np
import pytest

from foveal.model.loader import VLM
from foveal.reasoning.drafts import NgramDrafter
from foveal.reasoning.engine import LocalEngine
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace
from tests.reasoning.protocol_model import SCRIPTS, frames_for

ORDER = ["zoom", "select", "recover", "zoom", "recover", "select", "zoom"]


def test_the_drafter_proposes_what_last_followed_the_last_tokens() -> None:
    drafter = NgramDrafter(n=2, length=3)
    assert drafter.propose([5, 6], 3) == []  # nothing learnt yet
    drafter.learn([1, 5, 6, 7, 8, 9, 10])
    assert drafter.propose([2, 5, 6], 8) == [7, 8, 9]  # the last two tokens, at most `length`
    assert drafter.propose([5, 6], 2) == [7, 8]  # at most `limit`
    assert drafter.propose([1], 3) == [5, 6, 7]  # a turn's first token is a context too
    assert drafter.propose([4, 6], 3) == []
    assert drafter.propose([5, 6], 0) == [] and drafter.propose([], 3) == []
    drafter.learn([5, 6, 11])
    assert drafter.propose([5, 6], 3) == [11]  # the latest wins
    with pytest.raises(ValueError):
        NgramDrafter(n=0)


def test_the_drafters_table_is_bounded() -> None:
    drafter = NgramDrafter(n=1, length=2, capacity=4)
    drafter.learn(list(range(10)))
    drafter.learn([20, 21])
    assert len(drafter.table) == 1 and drafter.propose([20], 2) == [21]


def inspect(vlm: VLM, draft_tokens: int, batch: int, **engine: object) -> tuple[list[Trace], int]:
    """Every scripted inspection of ORDER, `batch` at a time on one engine; the decoder passes."""
    local = LocalEngine(vlm, draft_tokens=draft_tokens, **engine)  # type: ignore[arg-type]
    passes = 0
    append = local._append

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal passes
        passes += 1
        return append(*args, **kwargs)

    local._append = counting  # type: ignore[method-assign]
    loop = Loop(local, LoopOptions(max_turn_tokens=48))
    items = [Inspection(frames_for(name, SCRIPTS[name][1]), SCRIPTS[name][0], item_id=f"{k}")
             for k, name in enumerate(ORDER)]
    traces: list[Trace] = []
    for start in range(0, len(items), batch):
        traces += loop.run(items[start:start + batch])
    return traces, passes


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("engine", [{}, {"pointer": True, "rerank": 8},
                                    {"pointer": True, "rerank": 8, "look_first": True}],
                         ids=["plain", "pointer", "look-first"])
def test_drafted_greedy_turns_say_the_same_in_fewer_decoder_passes(
        taught_vlm: VLM, batch: int, engine: dict[str, object]) -> None:
    one_by_one, passes = inspect(taught_vlm, 0, batch, **engine)
    drafted, fewer = inspect(taught_vlm, 8, batch, **engine)
    for got, want in zip(drafted, one_by_one, strict=True):
        assert [s.text for s in got.steps] == [s.text for s in want.steps]
        assert (got.verdict, got.defect_type, got.box, got.operations) == \
            (want.verdict, want.defect_type, want.box, want.operations)
        assert got.confidence == pytest.approx(want.confidence, abs=1e-4)
        assert got.conversation.ids == want.conversation.ids
    if engine.get("look_first"):  # the pointer writes nearly every token: little left to draft
        assert fewer <= passes
    else:
        assert fewer < 0.8 * passes, (fewer, passes)


def test_sampled_turns_are_not_drafted(taught_vlm: VLM) -> None:
    engine = LocalEngine(taught_vlm, seed=3)
    loop = Loop(engine, LoopOptions(max_turn_tokens=48, temperature=1.0, seed=3))
    loop.run([Inspection(frames_for("zoom", 1), SCRIPTS["zoom"][0])])
    assert engine.drafter is not None and not engine.drafter.table
    assert np.isfinite(engine.generator.initial_seed()) if engine.generator else True

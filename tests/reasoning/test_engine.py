"""The local engine's shared prefill: new sessions of one call that start with the same chunk (an
RL query's rollouts) are encoded once and sample, token by token, as if each had been encoded on
its own, and each keeps its own cache afterwards."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from foveal.model.chat import Chunk
from foveal.model.loader import VLM
from foveal.reasoning.engine import LocalEngine, TurnReply, TurnRequest


def frame(seed: int) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (252, 336, 3), dtype=np.uint8)


def two_turns(vlm: VLM, share: bool, prompts: Sequence[Chunk]
              ) -> tuple[list[TurnReply], list[TurnReply], int]:
    """A sampled first turn from each prompt, then a greedy one after a different message per
    session; and how many rows the first call encoded."""
    engine = LocalEngine(vlm, seed=11, share_prefill=share)
    encoded: list[int] = []
    append = engine._append

    def counting(batch, chunks):  # type: ignore[no-untyped-def]
        encoded.append(len(chunks))
        return append(batch, chunks)

    engine._append = counting  # type: ignore[method-assign]
    watch = tuple(range(5))
    first = engine.turns([TurnRequest(s, p, 12, vlm.chat.stop_ids, watch, temperature=1.0)
                          for s, p in enumerate(prompts)])
    later = engine.turns([TurnRequest(s, vlm.chat.text(f"Look again at part {s}."), 6, vlm.chat.stop_ids,
                                      watch) for s in range(len(prompts))])
    return first, later, encoded[0]


def test_copies_of_a_prompt_are_encoded_once_and_sample_as_if_encoded_apart(micro_vlm: VLM) -> None:
    fmt = micro_vlm.chat
    a = fmt.prompt([frame(0)], "Inspect this part.")
    b = fmt.prompt([frame(1)], "Inspect this part.")  # the same ids as `a`, other pixels
    a_copy = copy.deepcopy(a)  # equal pixels in another array: shared as well
    prompts = [a, a, b, a_copy, b, a]
    shared_first, shared_later, shared_rows = two_turns(micro_vlm, True, prompts)
    apart_first, apart_later, apart_rows = two_turns(micro_vlm, False, prompts)
    assert (shared_rows, apart_rows) == (2, len(prompts))
    for got, want in zip(shared_first + shared_later, apart_first + apart_later, strict=True):
        assert got.tokens == want.tokens
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
        np.testing.assert_allclose(got.watch, want.watch, atol=1e-4)
    assert len({tuple(r.tokens) for r in shared_first}) > 1  # the copies sampled apart
    assert shared_later[0].logprobs != pytest.approx(shared_later[1].logprobs, abs=1e-6)  # own caches

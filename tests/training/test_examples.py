"""Materialized trajectories: operations run on the real frame, tool output never carries loss,
a deliberately wrong operation turn is masked and the recovery after it is not."""

from __future__ import annotations

import random

import numpy as np
import pytest

from foveal.model.chat import IMAGE
from foveal.model.loader import VLM
from foveal.plant.dataset import Label
from foveal.training.examples import TrajectoryError, materialize
from foveal.training.forward import decision_weights
from foveal.training.trajectories import AssistantTurn, Mix, Trajectory, synthesize, tool_call

LABEL = Label(id="x1", image="images/x1.png", product="cast_part", defect_type="crack",
              bbox=(0.62, 0.40, 0.66, 0.45), difficulty="hard", width=1400, height=1000)


def spans(chunk_loss: list[bool]) -> list[tuple[bool, int]]:
    """Runs of equal loss flags: [(flag, length), ...]."""
    out: list[tuple[bool, int]] = []
    for flag in chunk_loss:
        if out and out[-1][0] == flag:
            out[-1] = (flag, out[-1][1] + 1)
        else:
            out.append((flag, 1))
    return out


def test_a_wrong_crop_turn_is_masked_and_the_recovery_carries_loss(micro_vlm: VLM) -> None:
    mix = Mix(single=0.0, wrong1=1.0, wrong2=0.0, refine=0.0)
    trajectory = synthesize(LABEL, random.Random(0), mix)
    assert trajectory.kind == "wrong1"
    assert [t.loss for t in trajectory.turns] == [False, True, True]
    chunk = materialize(trajectory, [np.zeros((1000, 1400, 3), np.uint8)], micro_vlm.chat)
    runs = [flag for flag, _ in spans(chunk.loss)]
    # prompt + wrong turn + env, recovery, env, answer, the newline after its <|im_end|>
    assert runs == [False, True, False, True, False]
    assert not any(loss for loss, kind in zip(chunk.loss, chunk.types, strict=True) if kind == IMAGE)
    assert len(chunk.grids) == 3  # whole frame, wrong crop, right crop


def test_a_failing_synthesized_operation_raises_unless_errors_are_taught(micro_vlm: VLM) -> None:
    bad = tool_call("crop_image_normalized", {"bbox_2d": [0.5, 0.5, 0.4, 0.6], "target_image": 1})
    turns = (AssistantTurn(bad, True), AssistantTurn("\\boxed{none}", True))
    trajectory = Trajectory("x1", "Inspect.", turns, "none", "single")
    frame = [np.zeros((600, 800, 3), np.uint8)]
    with pytest.raises(TrajectoryError, match="x1"):
        materialize(trajectory, frame, micro_vlm.chat)
    chunk = materialize(trajectory, frame, micro_vlm.chat, allow_errors=True)
    assert "Execution error" in micro_vlm.tokenizer.decode(chunk.ids)


def test_decision_weights_fall_on_the_opening_the_call_digits_and_the_answer(micro_vlm: VLM) -> None:
    fmt = micro_vlm.chat
    call = tool_call("crop_image_normalized", {"bbox_2d": [0.12, 0.5, 0.3, 0.75], "target_image": 1})
    chunk = fmt.prompt([np.zeros((56, 56, 3), np.uint8)], "Inspect this part.")
    opening = "A faint irregularity shows at the upper left. Let me zoom in."
    chunk.extend(fmt.assistant(f"{opening}\n{call}", True))
    chunk.extend(fmt.environment("Here is the cropped image (Image Size: 56x56):", []))
    chunk.extend(fmt.assistant("The crop shows a thin straight line: a scratch. \\boxed{scratch}", True))
    weights = decision_weights(chunk, micro_vlm.tokenizer, 3.0)
    pieces = micro_vlm.tokenizer.convert_ids_to_tokens(chunk.ids)
    heavy = [str(p) for p, w in zip(pieces, weights, strict=True) if w == 3.0]
    assert all(loss for loss, w in zip(chunk.loss, weights, strict=True) if w != 1.0)
    assert any("boxed" in p for p in heavy) and any("scratch" in p for p in heavy)
    assert sum(any(c.isdigit() for c in p) for p in heavy) >= 5  # 0.12 0.5 0.3 0.75 and image 1
    assert len(heavy) < sum(chunk.loss)  # the prose in between keeps weight 1

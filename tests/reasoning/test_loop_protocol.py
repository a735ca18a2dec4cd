"""The loop speaks the protocol end to end: a micro model taught three scripted inspections
(seconds of SFT on fixed frames) zooms, selects frames, and recovers from an `Execution error`
when the loop runs it greedily on the same frames."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from foveal.model.loader import VLM
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace
from foveal.training.examples import materialize, with_maps
from foveal.training.sft import example_loss, trainable
from foveal.training.trajectories import AssistantTurn, Trajectory, tool_call

CROP = tool_call("crop_image_normalized", {"bbox_2d": [0.2, 0.2, 0.4, 0.4], "target_image": 1})
BAD = tool_call("crop_image_normalized", {"bbox_2d": [0.6, 0.2, 0.4, 0.4], "target_image": 1})
SELECT = tool_call("select_frames", {"target_frames": [1, 3]})
SCRIPTS = {
    "zoom": ("Inspect this part.", 1, [f"A mark. {CROP}", "\\boxed{scratch}"]),
    "select": ("Inspect this sequence.", 3, [f"Look closer. {SELECT}", "\\boxed{pit}"]),
    "recover": ("Check this part.", 1, [f"A mark. {BAD}", f"Fix the box. {CROP}", "\\boxed{dent}"]),
}


def frames_for(name: str, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(sorted(SCRIPTS).index(name))
    return [rng.integers(0, 256, (560, 700, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def taught(micro_tokenizer: object) -> VLM:
    from foveal.model.loader import create

    vlm = create(micro_tokenizer, "micro", seed=1)  # type: ignore[arg-type]
    tower = vlm.model.model.visual
    examples = []
    for name, (prompt, n, texts) in SCRIPTS.items():
        turns = tuple(AssistantTurn(t, True) for t in texts)
        chunk = materialize(Trajectory(name, prompt, turns, "", name), frames_for(name, n), vlm.chat,
                            allow_errors=True)
        examples.append(with_maps(chunk, tower, name, name))  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(trainable(vlm), lr=3e-3)
    random.seed(0)
    vlm.model.train()
    for _ in range(150):
        loss = example_loss(vlm, examples)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    vlm.model.train(False)
    assert float(loss.detach()) < 0.05
    return vlm


def run(vlm: VLM, name: str) -> Trace:
    prompt, n, _ = SCRIPTS[name]
    return Loop(vlm, LoopOptions(max_turn_tokens=48)).run([Inspection(frames_for(name, n), prompt)])[0]


def test_the_loop_executes_a_crop_on_the_full_resolution_frame(taught: VLM) -> None:
    trace = run(taught, "zoom")
    assert [s.operation for s in trace.steps] == ["crop_image_normalized", None]
    assert trace.steps[0].ok and trace.steps[0].views[0].kind == "crop"
    assert trace.box is not None and trace.box.x1 == pytest.approx(0.1, abs=0.01)  # 0.2 - padding 0.1
    assert trace.defect_type == "scratch" and trace.operations == 1


def test_the_loop_selects_frames_of_a_sequence(taught: VLM) -> None:
    trace = run(taught, "select")
    assert trace.steps[0].operation == "select_frames" and trace.steps[0].ok
    assert [v.frame_index for v in trace.steps[0].views] == [0, 2]
    assert trace.defect_type == "pit"


def test_the_loop_recovers_from_an_execution_error(taught: VLM) -> None:
    trace = run(taught, "recover")
    assert [s.ok for s in trace.steps[:2]] == [False, True]
    assert trace.steps[0].message is not None and trace.steps[0].message.startswith("Execution error:")
    assert trace.operation_errors == 1 and trace.operations == 2
    assert trace.defect_type == "dent" and not trace.forced_answer

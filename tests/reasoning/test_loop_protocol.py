"""The loop speaks the protocol end to end: a micro model taught three scripted inspections
(seconds of SFT on fixed frames) zooms, selects frames, and recovers from an `Execution error`
when the loop runs it greedily on the same frames."""

from __future__ import annotations

import pytest

from foveal.model.loader import VLM
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace
from tests.reasoning.protocol_model import SCRIPTS, frames_for


@pytest.fixture
def taught(taught_vlm: VLM) -> VLM:
    return taught_vlm


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

"""The ONNX path: the exported vision encoder, run by onnxruntime, gives the torch tower's tokens
on random frames of several sizes, the same final answers through the loop, and refuses to run
with weights it was not exported from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from foveal.model.loader import VLM, ModelError, create
from foveal.reasoning.engine import LocalEngine
from foveal.reasoning.loop import Inspection, Loop, LoopOptions
from foveal.serving.onnx_vision import OnnxVision, export
from tests.reasoning.protocol_model import SCRIPTS, frames_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory, taught_vlm: VLM) -> Path:
    return export(taught_vlm, tmp_path_factory.mktemp("onnx") / "vision.onnx")


def test_onnx_tokens_match_the_torch_tower_on_random_frames(onnx_file: Path, taught_vlm: VLM) -> None:
    vision = OnnxVision(onnx_file, taught_vlm)
    rng = np.random.default_rng(7)
    for height, width in [(448, 448), (448, 336), (112, 392), (56, 56)]:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        chunk = taught_vlm.chat.image(frame)
        pixels, grids = torch.from_numpy(chunk.patches[0]), torch.tensor(chunk.grids)
        with torch.no_grad():
            expected = torch.cat(list(taught_vlm.model.model.get_image_features(pixels, grids).pooler_output))
        got = vision(pixels, grids)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-4


def test_onnx_gives_the_same_final_answers_through_the_loop(onnx_file: Path, taught_vlm: VLM) -> None:
    items = [Inspection(frames_for(name, n), prompt, item_id=name)
             for name, (prompt, n, _) in SCRIPTS.items()]
    rng = np.random.default_rng(3)
    items += [Inspection([rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)], "Inspect this part.")
              for _ in range(3)]
    options = LoopOptions(max_turn_tokens=48)
    torch_traces = Loop(LocalEngine(taught_vlm), options).run(items)
    onnx_traces = Loop(LocalEngine(taught_vlm, vision=OnnxVision(onnx_file, taught_vlm)), options).run(items)
    for a, b in zip(torch_traces, onnx_traces, strict=True):
        assert (a.defect_type, a.operations, a.box) == (b.defect_type, b.operations, b.box)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_an_export_from_other_weights_is_refused_and_for_model_exports_again(
        tmp_path: Path, onnx_file: Path, micro_tokenizer: object) -> None:
    other = create(micro_tokenizer, "micro", seed=5)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="exported from other weights"):
        OnnxVision(onnx_file, other)
    target = tmp_path / "vision.onnx"
    target.write_bytes(onnx_file.read_bytes())
    assert OnnxVision.for_model(other, target).session is not None

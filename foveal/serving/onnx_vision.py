"""The compact model's vision encoder as ONNX, run by onnxruntime: the ONNX path of serving.

`export` traces one image's path through the convolutional tower (normalized pixels
`(1, 3, H, W)`, H and W any multiples of the cell size, to its decoder tokens `(N, D)`) with
torch's dynamo exporter, and stamps the file with a fingerprint of the tower's weights, so a
stale export is never used with new weights. `OnnxVision` is a drop-in for the engine's image
features: CUDA's execution provider where onnxruntime has it (the `onnxruntime-gpu` package),
else the CPU's. `foveal export onnx` writes it; the Triton model uses it when its config says
`vision: onnx` (exporting on load when the file is missing or stale).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from foveal.model.loader import VLM, ModelError
from foveal.model.vision import ConvVisionTower

log = logging.getLogger(__name__)
FILE_NAME = "vision.onnx"
FINGERPRINT_KEY = "foveal_tower_sha256"


class _ImageTokens(nn.Module):
    def __init__(self, tower: ConvVisionTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (1, 3, H, W) -> (N, D)
        return self.tower.tokens([self.tower.backbone(pixels)[0]])


def tower_of(vlm: VLM) -> ConvVisionTower:
    tower = vlm.model.model.visual
    if not isinstance(tower, ConvVisionTower):
        raise ModelError(f"the ONNX path exports foveal's convolutional tower; {vlm.name} has a "
                         f"{type(tower).__name__}")
    return tower


def fingerprint(tower: ConvVisionTower) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export(vlm: VLM, path: Path) -> Path:
    """Write the tower's ONNX graph (dynamic height and width) to `path`."""
    tower = tower_of(vlm)
    module = _ImageTokens(tower).eval()
    cell = tower.patch_size * tower.spatial_merge_size
    h, w = torch.export.Dim("rows", min=1, max=64), torch.export.Dim("cols", min=1, max=64)
    example = torch.randn(1, 3, 4 * cell, 3 * cell)
    program = torch.onnx.export(module, (example,), dynamo=True, verbose=False,
                                dynamic_shapes={"pixels": {2: cell * h, 3: cell * w}},
                                input_names=["pixels"], output_names=["tokens"])
    if program is None:
        raise ModelError("torch.onnx.export returned no program")
    program.model.metadata_props[FINGERPRINT_KEY] = fingerprint(tower)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxVision:
    """Image features for the engine: flattened patches and grids in, decoder tokens out."""

    def __init__(self, path: Path, vlm: VLM, threads: int | None = None) -> None:
        self.tower = tower_of(vlm)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers())
        stamped = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        if stamped != fingerprint(self.tower):
            raise ModelError(f"{path} was exported from other weights; run `foveal export onnx`")

    @classmethod
    def for_model(cls, vlm: VLM, path: Path | None = None) -> OnnxVision:
        """The model's ONNX encoder, exported first when missing or stale."""
        target = path or (vlm.path / FILE_NAME if vlm.path else Path(tempfile.mkdtemp()) / FILE_NAME)
        try:
            return cls(target, vlm)
        except (ModelError, FileNotFoundError, ort.capi.onnxruntime_pybind11_state.NoSuchFile) as exc:
            log.info("exporting the vision encoder to %s (%s)", target, exc)
        try:
            export(vlm, target)
        except OSError:  # a read-only model repository (a mounted volume): export beside it
            target = Path(tempfile.mkdtemp()) / FILE_NAME
            export(vlm, target)
        return cls(target, vlm)

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """(sum of patches, 1176) and (k, 3) -> (sum of tokens, D), like the torch tower."""
        tokens = []
        for image in self.tower.images(pixel_values, grid_thw):
            pixels = np.ascontiguousarray(image[None].numpy(), dtype=np.float32)
            tokens.append(torch.from_numpy(self.session.run(None, {"pixels": pixels})[0]))
        return torch.cat(tokens)

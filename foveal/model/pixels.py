"""Images to the flattened patches every Qwen2.5-VL vision tower reads, without Pillow or torchvision.

A view (already resized to the pixel budget by `foveal.operations`, sides multiples of 28) is
normalized with the processor's mean and std and cut into 14 px patches in the order of
transformers' `Qwen2VLImageProcessor`: rows are (t, h/2, w/2, 2, 2), each (C, T, 14, 14) with the
still image repeated over T = 2. A test checks the result equals the transformers processor's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Grid = tuple[int, int, int]  # (t, h, w) in 14 px patches


@dataclass(frozen=True)
class PixelSpec:
    patch: int = 14
    merge: int = 2
    temporal: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        return self.patch * self.merge

    def tokens(self, grid: Grid) -> int:
        """Decoder tokens of an image with patch grid `grid` (one per merged 2x2 cell)."""
        return grid[0] * grid[1] * grid[2] // (self.merge * self.merge)


def normalized(view: npt.NDArray[np.uint8], spec: PixelSpec = PixelSpec()) -> npt.NDArray[np.float32]:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalized with the processor's mean and std: the
    image a vision tower's `unpatchify` gives back for `patchify(view)`, without the round trip."""
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(((view.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))


def patchify(view: npt.NDArray[np.uint8], spec: PixelSpec = PixelSpec()
             ) -> tuple[npt.NDArray[np.float32], Grid]:
    """(H, W, 3) uint8 RGB, H and W multiples of 28 -> ((gh*gw, 3*2*14*14) float32, (1, gh, gw))."""
    height, width = view.shape[:2]
    if height % spec.factor or width % spec.factor:
        raise ValueError(f"view {width}x{height} must have sides that are multiples of {spec.factor}")
    x = normalized(view, spec)  # (C, H, W)
    gh, gw, m, p = height // spec.patch, width // spec.patch, spec.merge, spec.patch
    x = np.broadcast_to(x[None], (spec.temporal, *x.shape))  # (T, C, H, W)
    x = x.reshape(1, spec.temporal, 3, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (1, bh, bw, mh, mw, C, T, P, P)
    return np.ascontiguousarray(x.reshape(gh * gw, -1), dtype=np.float32), (1, gh, gw)

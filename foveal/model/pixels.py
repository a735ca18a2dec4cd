"""Images to the flattened patches every Qwen2.5-VL vision tower reads, without Pillow or torchvision.

A view (already resized to the pixel budget by `foveal.operations`, sides multiples of 28) is
normalized with the processor's mean and std and cut into 14 px patches in the order of
transformers' `Qwen2VLImageProcessor`: rows are (t, h/2, w/2, 2, 2), each (C, T, 14, 14) with the
still image repeated over T = 2. A test checks the result equals the transformers processor's.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def _affine(mean: tuple[float, float, float], std: tuple[float, float, float]
            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(scale, offset), each (3, 1, 1): (x / 255 - mean) / std == x * scale + offset."""
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale, offset = (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)
    scale.flags.writeable = offset.flags.writeable = False
    return scale[:, None, None], offset[:, None, None]


def normalized(view: npt.NDArray[np.uint8], spec: PixelSpec = PixelSpec()) -> npt.NDArray[np.float32]:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalized with the processor's mean and std: the
    image a vision tower's `unpatchify` gives back for `patchify(view)`, without the round trip.
    Transposed while still bytes, then one multiply-add in place: ~5x faster than the textbook
    expression (0.4 against 2.5 ms for a 448 px view), equal to it within 1e-6."""
    scale, offset = _affine(spec.mean, spec.std)
    x = np.ascontiguousarray(view.transpose(2, 0, 1)).astype(np.float32)
    x *= scale
    x += offset
    return x


def grid_of(view: npt.NDArray[np.uint8], spec: PixelSpec = PixelSpec()) -> Grid:
    """(1, gh, gw): the patch grid of a view whose sides are multiples of `spec.factor`."""
    height, width = view.shape[:2]
    if height % spec.factor or width % spec.factor:
        raise ValueError(f"view {width}x{height} must have sides that are multiples of {spec.factor}")
    return 1, height // spec.patch, width // spec.patch


def patchify(view: npt.NDArray[np.uint8], spec: PixelSpec = PixelSpec()
             ) -> tuple[npt.NDArray[np.float32], Grid]:
    """(H, W, 3) uint8 RGB, H and W multiples of 28 -> ((gh*gw, 3*2*14*14) float32, (1, gh, gw))."""
    _, gh, gw = grid_of(view, spec)
    x = normalized(view, spec)  # (C, H, W)
    m, p = spec.merge, spec.patch
    x = np.broadcast_to(x[None], (spec.temporal, *x.shape))  # (T, C, H, W)
    x = x.reshape(1, spec.temporal, 3, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (1, bh, bw, mh, mw, C, T, P, P)
    return np.ascontiguousarray(x.reshape(gh * gw, -1), dtype=np.float32), (1, gh, gw)

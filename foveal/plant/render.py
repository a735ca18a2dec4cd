"""Render one inspection frame from a `FrameSpec`: a product surface, at most one defect, a camera.

`render_frame(spec)` returns the 8-bit RGB frame (grayscale cameras give three equal
channels), the defect's pixel mask and its box in pixels and normalized. The same seed gives
the same frame byte for byte; `render_clean(spec)` (or `with_clean=True`) gives the same frame
without its defect, so a defect's contrast can be measured exactly.

Difficulty is the defect's visibility, measured, not guessed: `visibility()` takes a defective
and a clean frame and returns the defect's contrast in the two views the model gets, the
448 px whole frame and a zoom crop from the original (box padded by 0.1 of the frame on each
side, long side resized to 448). Contrast is the mean absolute difference inside the defect's
region (its mask in that view, dilated by one pixel), divided by the robust spread of the
clean background's fine detail around it (1.4826 × MAD of a 2 px high-pass, at least one
8-bit level). The renderer draws a defect at the size its difficulty asks for, develops the
frame (noise, blur, JPEG and all), measures it the same way and searches the defect's physical
strength (depth, darkness) until it lands in the difficulty's `BANDS`, redrawing it smaller or
larger when no strength fits. Measured over 180 frames (2 seeds × 5 products × 6 types × 3
difficulties, 1024–2048 px): easy 2.96–62 (median 4.2) whole frame; hard 0.58–2.49 (median 2.0)
whole frame, zoom median 4.7 (min 2.2); tiny at most 0.59 (median 0.49) whole frame, zoom median
3.2 (min 2.0). The misses sit on textile, whose weave is the busiest background.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.plant.dataset import BoxN, BoxPx, Difficulty, box_from_mask
from foveal.plant.defects import VIEW_PX, DefectSize, Window, defect_size, draw_defect
from foveal.plant.imaging import (
    CameraOptions,
    Exposure,
    U8Image,
    expose,
    expose_region,
    prepare,
    sensor_noise,
)
from foveal.plant.surfaces import RENDERERS, BoolArray, FloatArray, Rng, Surface, f32, shade

DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "hard", "tiny")
ASPECTS = (1.0, 1.25, 4 / 3, 1.5, 1.6, 16 / 9)
ZOOM_PAD = 0.1  # normalized padding the crop operation adds on each side (DESIGN.md)


@dataclass(frozen=True)
class FrameSpec:
    """What to render. `size` is the long side in pixels (None: drawn from the seed, 1024–2048);
    `options` the camera effects (None: a typical camera drawn from the seed)."""

    product: str
    defect_type: str = NO_DEFECT
    difficulty: Difficulty = "easy"
    size: int | None = None
    grayscale: bool = False
    options: CameraOptions | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_spec(self.product, self.defect_type, self.difficulty, self.size)


def check_spec(product: str, defect_type: str, difficulty: str, size: int | None) -> None:
    """The checks a frame or sequence spec shares; a ValueError names what is wrong."""
    if product not in RENDERERS:
        raise ValueError(f"unknown product {product!r}; known: {', '.join(RENDERERS)}")
    if defect_type not in DEFECT_TYPES:
        raise ValueError(f"unknown defect type {defect_type!r}; known: {', '.join(DEFECT_TYPES)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {difficulty!r}")
    if size is not None and not 256 <= size <= 4096:
        raise ValueError(f"size {size} must be 256–4096 px")


@dataclass(frozen=True)
class Visibility:
    """A defect's contrast (signal over background spread) in the model's two views."""

    frame: float  # the 448 px view of the whole frame
    zoom: float  # a zoom crop from the original around the defect, resized to 448 px


@dataclass(frozen=True)
class Band:
    """The contrasts a difficulty asks for."""

    frame_min: float
    frame_max: float
    zoom_min: float

    def judge(self, seen: Visibility) -> tuple[float, float, float]:
        """How far `seen` misses the band (log contrast, 0 inside), the strength factor that
        should bring it in (aiming a little inside), and which way to resize the defect if even
        that factor cannot: 0.75 (smaller, so the zoom gains on the whole frame), 1.3 (larger).
        The whole-frame bounds come first: they are what tells the difficulties apart."""
        frame, zoom = max(seen.frame, 1e-6), max(seen.zoom, 1e-6)
        miss = max(
            math.log(max(frame / self.frame_max, 1.0)),
            math.log(max(self.frame_min / frame, 1.0)),
            math.log(max(self.zoom_min / zoom, 1.0)),
        )
        ceiling = 0.92 * self.frame_max / frame  # the largest factor the whole-frame view allows
        if frame > self.frame_max:
            return miss, ceiling, 0.75 if zoom * ceiling < self.zoom_min else 1.0
        factor = max(1.08 * self.frame_min / frame, 1.08 * self.zoom_min / zoom, 1.0) if miss else 1.0
        if factor > ceiling:
            return miss, max(ceiling, 1.0), 0.75
        return miss, factor, 1.3


MIN_STRENGTH, MAX_STRENGTH = 0.1, 4.0  # how far calibration may scale a defect's physical strength
# Chosen from measured contrasts; tests/plant/test_render.py asserts them with a margin.
BANDS: dict[Difficulty, Band] = {
    "easy": Band(frame_min=4.0, frame_max=math.inf, zoom_min=4.0),
    "hard": Band(frame_min=1.2, frame_max=2.5, zoom_min=3.5),
    "tiny": Band(frame_min=0.0, frame_max=0.6, zoom_min=3.0),
}


@dataclass(frozen=True)
class RenderedFrame:
    spec: FrameSpec
    image: U8Image  # (H, W, 3) RGB; equal channels from a grayscale camera
    mask: BoolArray  # (H, W) True on the defect
    bbox_px: BoxPx | None  # x1, y1, x2, y2 (exclusive), None without a defect
    bbox: BoxN | None  # the same, normalized to [0, 1]
    visibility: Visibility | None  # the renderer's own measurement of this very frame
    clean: U8Image | None = None  # the same frame without the defect, when asked for


def frame_shape(rng: Rng, size: int | None) -> tuple[int, int]:
    """(height, width): long side 1024–2048 unless given, a common aspect ratio, mostly landscape."""
    long_px = int(size if size is not None else rng.integers(1024, 2049))
    aspect = max(ASPECTS[int(rng.integers(len(ASPECTS)))] * rng.uniform(0.97, 1.03), 1.0)
    short = max(round(long_px / aspect), 64)
    return (long_px, short) if rng.random() < 0.2 else (short, long_px)


def streams(seed: int) -> tuple[Rng, Rng, Rng, Rng]:
    """Independent generators for layout, surface, defect and camera: changing the defect
    leaves the part and the camera as they were."""
    layout, surface, defect, camera = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    return layout, surface, defect, camera


class NoDefectDrawn(Exception):
    """The placement left the defect no room to show; the item is redrawn from a derived seed."""


REDRAWS = 4


def redraw_seed(seed: int, attempt: int) -> int:
    """The seed of redraw `attempt` of an item (attempt 0 is the item's own seed)."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(attempt,)).generate_state(1)[0])


def render_frame(spec: FrameSpec, *, with_clean: bool = False) -> RenderedFrame:
    """Render the frame `spec` describes; see the module docstring. In the rare case where a
    defect finds no room where it was placed, the frame is redrawn from a seed derived from
    the spec's, so the result stays a pure function of the spec."""
    for attempt in range(REDRAWS):
        try:
            return _render(replace(spec, seed=redraw_seed(spec.seed, attempt)),
                           with_defect=True, with_clean=with_clean)
        except NoDefectDrawn:
            continue
    raise NoDefectDrawn(f"{spec}: no room for the defect after {REDRAWS} draws")


def render_clean(spec: FrameSpec) -> RenderedFrame:
    """The frame of `spec` with its defect left out: same part, same light, same noise."""
    return _render(spec, with_defect=False, with_clean=False)


def _render(spec: FrameSpec, *, with_defect: bool, with_clean: bool) -> RenderedFrame:
    layout, surface_rng, defect_rng, camera_rng = streams(spec.seed)
    h, w = frame_shape(layout, spec.size)
    surface = RENDERERS[spec.product](surface_rng, h, w)
    drawn_options = CameraOptions.random(camera_rng)  # always drawn, so the stream stays aligned
    options = spec.options if spec.options is not None else matte_glare(drawn_options, surface)
    radiance = surface.image
    empty = np.zeros((h, w), bool)
    if spec.defect_type == NO_DEFECT:
        exposure = prepare(camera_rng, options, (h, w), spec.grayscale)
        image = expose(exposure, radiance)
        return RenderedFrame(spec, image, empty, None, None, None, image if with_clean else None)
    first = defect_size(defect_rng, spec.defect_type, spec.difficulty, max(h, w))
    cx, cy = place(defect_rng, surface, first.reach_px)
    reach = first.reach_px
    avoid = (int(cx) - reach, int(cy) - reach, int(cx) + reach, int(cy) + reach)
    exposure = prepare(camera_rng, options, (h, w), spec.grayscale, avoid)
    noise = sensor_noise(exposure, (h, w) if spec.grayscale else (h, w, 3)) if options.noise > 0 else None
    stage = Stage(radiance, exposure, noise, expose(exposure, radiance, noise))
    if not with_defect:
        return RenderedFrame(spec, stage.clean, empty, None, None, None, None)
    drawn = draw_calibrated(spec.defect_type, spec.difficulty, defect_rng, surface, stage, (cx, cy), first)
    mask = empty
    mask[drawn.y0 : drawn.y0 + drawn.mask.shape[0], drawn.x0 : drawn.x0 + drawn.mask.shape[1]] = drawn.mask
    bbox_px, bbox = offset_box(drawn.mask, drawn.x0, drawn.y0, (h, w))
    return RenderedFrame(
        spec, drawn.image, mask, bbox_px, bbox, drawn.visibility, stage.clean if with_clean else None
    )


def offset_box(mask: BoolArray, x0: int, y0: int, shape: tuple[int, int]) -> tuple[BoxPx, BoxN]:
    """The frame box of a mask given in a window at (x0, y0): `box_from_mask` on the window,
    which is what it gives on the whole frame, without scanning the whole frame."""
    boxes = box_from_mask(mask)
    assert boxes is not None, "a drawn defect always has a mask"
    (a, b, c, d), (h, w) = boxes[0], shape
    px = (a + x0, b + y0, c + x0, d + y0)
    return px, (px[0] / w, px[1] / h, px[2] / w, px[3] / h)


def matte_glare(options: CameraOptions, surface: Surface) -> CameraOptions:
    """A drawn camera's glare only where the part can mirror a lamp: not on matte fabric."""
    return replace(options, glare=0.0) if surface.finish.specular < 0.1 else options


def place(rng: Rng, surface: Surface, reach: int) -> tuple[float, float]:
    """A defect centre on material, with the defect's window inside the frame where possible."""
    h, w = surface.material.shape
    mx, my = min(reach, w // 2 - 1), min(reach, h // 2 - 1)
    probe = max(reach // 2, 2)
    for _ in range(200):
        cx, cy = rng.uniform(mx, w - mx), rng.uniform(my, h - my)
        around = surface.material[
            max(int(cy) - probe, 0) : int(cy) + probe, max(int(cx) - probe, 0) : int(cx) + probe
        ]
        if surface.material[int(cy), int(cx)] and around.mean() > 0.9:
            return float(cx), float(cy)
    ys, xs = np.nonzero(surface.material)
    k = int(rng.integers(len(xs))) if len(xs) else 0
    return (float(xs[k]), float(ys[k])) if len(xs) else (w / 2, h / 2)


class Stage:
    """A frame on the bench: its radiance, its camera and its clean image. `develop` shows it
    with one change added, developing only the change's window again."""

    def __init__(
        self, radiance: FloatArray, exposure: Exposure, noise: FloatArray | None, clean: U8Image
    ) -> None:
        self.radiance, self.exposure, self.noise, self.clean = radiance, exposure, noise, clean
        self.views = CleanViews(clean)

    def develop(self, y0: int, x0: int, diff: FloatArray) -> U8Image:
        h, w = diff.shape[:2]
        window = self.radiance[y0 : y0 + h, x0 : x0 + w]
        before = window.copy()
        np.maximum(before + diff, 0.0, out=window)
        try:
            return expose_region(
                self.exposure, self.radiance, self.clean, (x0, y0, x0 + w, y0 + h), self.noise
            )
        finally:
            window[:] = before  # the stage's radiance stays the clean one

    def show(self, win: Window, mask: BoolArray, surface: Surface) -> tuple[Visibility, U8Image, FloatArray]:
        """The frame developed with the defect drawn in `win`, the defect's visibility in it,
        and the change of radiance it made in the window."""
        h, w = mask.shape
        y0, x0 = win.y0, win.x0
        # Shade the untouched window the same way, so the window's own border cancels out.
        before = shade(
            surface.albedo[y0 : y0 + h, x0 : x0 + w],
            surface.height[y0 : y0 + h, x0 : x0 + w],
            win.light,
            win.finish,
        )
        diff = shade_window(win) - before
        image = self.develop(y0, x0, diff)
        change = image[y0 : y0 + h, x0 : x0 + w].astype(np.float32) - self.clean[y0 : y0 + h, x0 : x0 + w]
        return self.views.measure(change, y0, x0, mask), image, diff


@dataclass(frozen=True)
class DrawnDefect:
    y0: int
    x0: int
    mask: BoolArray  # (h, w) the defect in its window
    visibility: Visibility
    image: U8Image  # the developed frame
    miss: float  # log-contrast distance to the difficulty's band, 0 inside
    diff: FloatArray  # (h, w, 3) the change of radiance in the window
    relief: FloatArray  # (h, w) the change of height in the window


def draw_calibrated(
    defect_type: str,
    difficulty: Difficulty,
    rng: Rng,
    surface: Surface,
    stage: Stage,
    centre: tuple[float, float],
    first: DefectSize,
    *,
    max_scale: float = 1.7,
    max_reach_px: int | None = None,
    relief_only: bool = False,
) -> DrawnDefect:
    """Draw the defect, develop and measure it, and adjust its strength (depth, darkness) into
    the difficulty's band; redraw it smaller or larger when no strength fits, keeping the
    closest miss. Strength saturates physically (nothing is darker than black), so a defect
    that must show more on a busy surface grows instead."""
    band = BANDS[difficulty]
    size, best, scale = first, None, 1.0
    for _attempt in range(8):
        shape_seed = int(rng.integers(2**63))  # the same geometry at every strength

        def draw(
            strength: float, size: DefectSize = size, shape_seed: int = shape_seed
        ) -> tuple[Window, BoolArray]:
            stronger = DefectSize(size.extent_px, size.width_px, size.strength * strength)
            return draw_defect(
                defect_type,
                np.random.default_rng(shape_seed),
                surface,
                centre[0],
                centre[1],
                stronger,
                relief_only,
            )

        drawn, resize = _fit_strength(band, stage, surface, draw)
        if drawn is not None and (best is None or drawn.miss < best.miss):
            best = drawn
        if best is not None and best.miss == 0.0:
            break
        scale = min(max(scale * resize, 0.3), max_scale)  # beyond 1.7 a defect stops looking like one
        size = fit_reach(
            defect_size(rng, defect_type, difficulty, max(stage.clean.shape[:2]), scale), max_reach_px
        )
    if best is None:
        raise NoDefectDrawn(f"{defect_type} left no mask")
    return best


def fit_reach(size: DefectSize, max_reach_px: int | None) -> DefectSize:
    """The size shrunk (extent first) until its window's reach is at most `max_reach_px`."""
    if max_reach_px is None or size.reach_px <= max_reach_px:
        return size
    extent = max((max_reach_px - 8 - 6 * size.width_px) / 0.75, 2.0)
    width = min(size.width_px, max((max_reach_px - 8 - 0.75 * extent) / 6, 0.6))
    return DefectSize(extent, width, size.strength)


def _fit_strength(
    band: Band, stage: Stage, surface: Surface, draw: Callable[[float], tuple[Window, BoolArray]]
) -> tuple[DrawnDefect | None, float]:
    """Search the strength (starting from the physical one, 1) that lands in the band."""
    strength, best, resize = 1.0, None, 1.3
    for _step in range(4):
        win, mask = draw(strength)
        if not mask.any():
            return best, 1.3
        seen, image, diff = stage.show(win, mask, surface)
        miss, factor, resize = band.judge(seen)
        if best is None or miss < best.miss:
            relief = (
                win.height - surface.height[win.y0 : win.y0 + mask.shape[0], win.x0 : win.x0 + mask.shape[1]]
            )
            best = DrawnDefect(win.y0, win.x0, mask, seen, image, miss, diff, relief)
        nxt = min(max(strength * factor, MIN_STRENGTH), MAX_STRENGTH)
        if miss == 0.0 or abs(nxt / strength - 1.0) < 0.02:
            break  # in the band, or pinned at a bound or a compromise
        strength = nxt
    if best is not None and best.miss > 0 and resize == 1.0:
        resize = 1.3
    return best, resize


def shade_window(win: Window) -> FloatArray:
    return shade(win.albedo, win.height, win.light, win.finish)


# --- measuring visibility ----------------------------------------------------------------


def zoom_box(shape: tuple[int, int], box: BoxPx) -> BoxPx:
    """The crop the zoom operation takes: the box padded by 0.1 of the frame, clamped."""
    h, w = shape
    pad_x, pad_y = ZOOM_PAD * w, ZOOM_PAD * h
    return (
        max(int(box[0] - pad_x), 0),
        max(int(box[1] - pad_y), 0),
        min(math.ceil(box[2] + pad_x), w),
        min(math.ceil(box[3] + pad_y), h),
    )


def to_view(image: FloatArray, crop: BoxPx, long_px: int = VIEW_PX, *, is_mask: bool = False) -> FloatArray:
    """Crop and resize so the long side is `long_px`, as the model's image pipeline does
    (area averaging down, cubic up; masks linear up, so no ringing spreads them)."""
    part = image[crop[1] : crop[3], crop[0] : crop[2]]
    h, w = part.shape[:2]
    scale = long_px / max(h, w)
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    up = cv2.INTER_LINEAR if is_mask else cv2.INTER_CUBIC
    return f32(cv2.resize(part, size, interpolation=cv2.INTER_AREA if scale < 1 else up))


def contrast(diff: FloatArray, clean_hp: FloatArray, mask: BoolArray) -> float:
    """Mean |diff| in the dilated mask over 1.4826 × MAD of the clean high-pass around it."""
    region = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if not region.any():
        return 0.0
    signal = float(np.abs(diff).mean(axis=2)[region].mean())
    ys, xs = np.nonzero(region)
    y0, y1 = max(int(ys.min()) - 24, 0), int(ys.max()) + 25
    x0, x1 = max(int(xs.min()) - 24, 0), int(xs.max()) + 25
    outside = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8))[y0:y1, x0:x1] == 0
    values = clean_hp[y0:y1, x0:x1][outside]
    if values.size < 50:
        values = clean_hp.ravel()
    spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return signal / max(spread, 1.0)


def high_pass(gray: FloatArray) -> FloatArray:
    return gray - cv2.GaussianBlur(gray, (0, 0), 2.0)


@lru_cache(maxsize=16)
def area_weights(n_src: int, n_dst: int) -> FloatArray:
    """(n_dst, n_src) weights of OpenCV's INTER_AREA shrink along one axis, so the whole-frame
    view of a small window is two small matrix products instead of a full-frame resize."""
    scale = n_src / n_dst
    lo = np.arange(n_dst, dtype=np.float64)[:, None] * scale
    src = np.arange(n_src, dtype=np.float64)[None, :]
    overlap = np.minimum(lo + scale, src + 1) - np.maximum(lo, src)
    return f32(np.maximum(overlap, 0.0) / scale)


def _rows(weights: FloatArray, start: int, stop: int) -> tuple[tuple[int, int], FloatArray]:
    """The output rows a band of input rows reaches, and the weights of that block."""
    block = weights[:, start:stop]
    hit = np.nonzero(block.any(axis=1))[0]
    r0, r1 = int(hit[0]), int(hit[-1]) + 1
    return (r0, r1), np.ascontiguousarray(block[r0:r1])


class CleanViews:
    """A clean frame prepared for measuring changes to it in the model's two views."""

    def __init__(self, clean: U8Image) -> None:
        self.clean = clean
        h, w = clean.shape[:2]
        scale = VIEW_PX / max(h, w)
        self.view_h, self.view_w = max(round(h * scale), 1), max(round(w * scale), 1)
        # The model sees an 8-bit view, so the background is measured on one.
        view = cv2.resize(clean, (self.view_w, self.view_h), interpolation=cv2.INTER_AREA)
        self.frame_hp = high_pass(view.astype(np.float32).mean(axis=2))

    def measure(self, diff: FloatArray, y0: int, x0: int, mask: BoolArray) -> Visibility:
        """Visibility of a change `diff` (8-bit levels, (h, w, 3)) placed at (x0, y0); the
        window must hold all of the change and the mask."""
        h, w = self.clean.shape[:2]
        wh, ww = mask.shape
        if max(h, w) > VIEW_PX:  # the exact INTER_AREA view, computed on the window only
            view_diff = np.zeros((self.view_h, self.view_w, 3), np.float32)
            view_mask = np.zeros((self.view_h, self.view_w), bool)
            (r0, r1), ay = _rows(area_weights(h, self.view_h), y0, y0 + wh)
            (c0, c1), ax = _rows(area_weights(w, self.view_w), x0, x0 + ww)
            rows = (ay @ diff.reshape(wh, ww * 3)).reshape(r1 - r0, ww, 3).transpose(0, 2, 1)
            cols = np.ascontiguousarray(rows).reshape(-1, ww) @ ax.T  # (rows * 3, view cols)
            view_diff[r0:r1, c0:c1] = cols.reshape(r1 - r0, 3, c1 - c0).transpose(0, 2, 1)
            view_mask[r0:r1, c0:c1] = (ay @ mask.astype(np.float32) @ ax.T) > 1e-3
        else:
            full, full_mask = self._embed(diff, y0, x0, mask, (0, 0, w, h))
            view_diff = to_view(full, (0, 0, w, h))
            view_mask = to_view(full_mask, (0, 0, w, h), is_mask=True) > 1e-3
        frame = contrast(view_diff, self.frame_hp, view_mask)
        ys, xs = np.nonzero(mask)
        crop = zoom_box(
            (h, w), (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        )
        part, part_mask = self._embed(diff, y0, x0, mask, crop)
        gray = self.clean[crop[1] : crop[3], crop[0] : crop[2]].astype(np.float32).mean(axis=2)
        zoom = contrast(
            to_view(part, (0, 0, part.shape[1], part.shape[0])),
            high_pass(to_view(gray, (0, 0, gray.shape[1], gray.shape[0]))),
            to_view(part_mask, (0, 0, part.shape[1], part.shape[0]), is_mask=True) > 1e-3,
        )
        return Visibility(frame, zoom)

    @staticmethod
    def _embed(
        diff: FloatArray, y0: int, x0: int, mask: BoolArray, crop: BoxPx
    ) -> tuple[FloatArray, FloatArray]:
        """The change and the mask pasted into a zero array the size of `crop`."""
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        out, out_mask = np.zeros((ch, cw, 3), np.float32), np.zeros((ch, cw), np.float32)
        sy0, sx0 = max(crop[1] - y0, 0), max(crop[0] - x0, 0)
        sy1, sx1 = min(crop[3] - y0, mask.shape[0]), min(crop[2] - x0, mask.shape[1])
        if sy1 > sy0 and sx1 > sx0:
            ty, tx = y0 + sy0 - crop[1], x0 + sx0 - crop[0]
            out[ty : ty + sy1 - sy0, tx : tx + sx1 - sx0] = diff[sy0:sy1, sx0:sx1]
            out_mask[ty : ty + sy1 - sy0, tx : tx + sx1 - sx0] = mask[sy0:sy1, sx0:sx1]
        return out, out_mask


def visibility(defective: U8Image, clean: U8Image, mask: BoolArray) -> Visibility:
    """Measure a rendered defect in both views (see the module docstring for the measure)."""
    boxes = box_from_mask(mask)
    if boxes is None:
        return Visibility(0.0, 0.0)
    h, w = mask.shape
    margin = int(3 * max(h, w) / VIEW_PX) + 2  # the view pixels of the dilated region, in full pixels
    x0, y0 = max(boxes[0][0] - margin, 0), max(boxes[0][1] - margin, 0)
    x1, y1 = min(boxes[0][2] + margin, w), min(boxes[0][3] + margin, h)
    diff = defective[y0:y1, x0:x1].astype(np.float32) - clean[y0:y1, x0:x1].astype(np.float32)
    return CleanViews(clean).measure(diff, y0, x0, mask[y0:y1, x0:x1])

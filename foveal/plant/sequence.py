"""Multi-frame sequences of one part, for the select-frames operation: 8–16 frames in which the
defect shows in only some.

Three kinds, each a small function in `KINDS`: `conveyor` (a long part or web moves past a fixed
camera; the defect enters and leaves the field of view), `rotation` (a cylindrical part turns
on rollers; the camera sees the middle ±70° of its front, so the defect turns into view and out
of it again) and `lighting` (a static part under a dome light and under grazing lights from
turning directions; a shallow relief defect shows only under some grazing lights). Geometry is
chosen so that a defect is either wholly in a frame or wholly out of it; for `lighting` the
frames that show it are measured. Per-frame masks and boxes are the truth of each frame;
`defect_frames` lists the frames whose mask is not empty. The defect is calibrated to its
difficulty on one frame that shows it, the same way `render.render_frame` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from foveal.domain import DENT, NO_DEFECT, PIT, SCRATCH
from foveal.plant.dataset import BoxN, BoxPx, Difficulty, box_from_mask
from foveal.plant.defects import defect_size
from foveal.plant.imaging import CameraOptions, Exposure, U8Image, expose, prepare, sensor_noise
from foveal.plant.render import (
    REDRAWS,
    CleanViews,
    DrawnDefect,
    NoDefectDrawn,
    Stage,
    check_spec,
    draw_calibrated,
    fit_reach,
    redraw_seed,
    streams,
)
from foveal.plant.surfaces import RENDERERS, BoolArray, FloatArray, Light, Rng, Surface, shade

SequenceKind = Literal["conveyor", "rotation", "lighting"]
VIEW_HALF_DEG = 70.0  # a rotating part is seen from -70° to +70° around the line of sight
VISIBLE_ZOOM = 2.0  # under changing light, a frame shows the defect when its zoom contrast reaches this
RELIEF_DEFECTS = (SCRATCH, PIT, DENT)  # the ones diffuse light can hide
# A PCB does not turn on rollers; only relief defects hide under a dome light.
PRODUCT_KINDS: dict[str, tuple[SequenceKind, ...]] = {
    "brushed_metal": ("conveyor", "rotation", "lighting"),
    "cast_part": ("conveyor", "rotation", "lighting"),
    "pcb": ("conveyor", "lighting"),
    "textile": ("conveyor", "rotation"),
    "painted_panel": ("conveyor", "rotation", "lighting"),
    "wood": ("conveyor", "lighting"),  # boards ride a conveyor, they do not turn
    "ceramic_tile": ("conveyor", "lighting"),
}


def kinds_for(product: str, defect_type: str) -> tuple[SequenceKind, ...]:
    kinds = PRODUCT_KINDS.get(product, ("conveyor",))
    if defect_type not in RELIEF_DEFECTS and defect_type != NO_DEFECT:
        kinds = tuple(k for k in kinds if k != "lighting")
    return kinds


@dataclass(frozen=True)
class SequenceSpec:
    """What to render; `kind` and `frames` (8–16) are drawn from the seed when None."""

    product: str
    defect_type: str = NO_DEFECT
    difficulty: Difficulty = "easy"
    kind: SequenceKind | None = None
    frames: int | None = None
    size: int = 1024  # long side of each frame
    grayscale: bool = False
    options: CameraOptions | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_spec(self.product, self.defect_type, self.difficulty, self.size)
        if self.frames is not None and not 8 <= self.frames <= 16:
            raise ValueError(f"a sequence has 8–16 frames, not {self.frames}")
        if self.kind is not None and self.kind not in kinds_for(self.product, self.defect_type):
            raise ValueError(f"{self.kind} does not suit {self.product} with {self.defect_type}")


@dataclass(frozen=True)
class RenderedSequence:
    spec: SequenceSpec
    kind: SequenceKind
    frames: list[U8Image]  # each (H, W, 3)
    masks: list[BoolArray]  # each (H, W), empty where the defect is out of sight
    boxes_px: list[BoxPx | None]
    boxes: list[BoxN | None]
    defect_frames: list[int]  # 0-based indices of the frames that show the defect


@dataclass
class Job:
    """One sequence being rendered: its spec, resolved kind and size, and its generators."""

    spec: SequenceSpec
    kind: SequenceKind
    n: int
    h: int
    w: int
    options: CameraOptions
    layout: Rng
    surface_rng: Rng
    defect_rng: Rng
    camera_rng: Rng

    @property
    def defective(self) -> bool:
        return self.spec.defect_type != NO_DEFECT

    def exposures(self, exposure: Exposure) -> list[Exposure]:
        """One camera, a fresh noise field per frame."""
        return [replace(exposure, noise_seed=int(self.camera_rng.integers(2**31))) for _ in range(self.n)]


def render_sequence(spec: SequenceSpec) -> RenderedSequence:
    """Render the sequence `spec` describes; see the module docstring. A defect that finds no
    room where it was placed is redrawn from a derived seed, as `render_frame` does."""
    for attempt in range(REDRAWS):
        try:
            return _render_sequence(replace(spec, seed=redraw_seed(spec.seed, attempt)))
        except NoDefectDrawn:
            continue
    raise NoDefectDrawn(f"{spec}: no room for the defect after {REDRAWS} draws")


def _render_sequence(spec: SequenceSpec) -> RenderedSequence:
    layout, surface_rng, defect_rng, camera_rng = streams(spec.seed)
    kinds = kinds_for(spec.product, spec.defect_type)
    kind = spec.kind if spec.kind is not None else kinds[int(layout.integers(len(kinds)))]
    n = spec.frames if spec.frames is not None else int(layout.integers(8, 17))
    drawn_options = CameraOptions.random(camera_rng)
    options = spec.options if spec.options is not None else drawn_options
    if spec.options is None and spec.product == "textile":
        options = replace(options, glare=0.0)  # matte fabric mirrors no lamp
    job = Job(
        spec,
        kind,
        n,
        round(spec.size * 0.75),
        spec.size,
        options,
        layout,
        surface_rng,
        defect_rng,
        camera_rng,
    )
    frames, masks = KINDS[kind](job)
    boxes = [box_from_mask(m) for m in masks]
    return RenderedSequence(
        spec,
        kind,
        frames,
        masks,
        [b[0] if b else None for b in boxes],
        [b[1] if b else None for b in boxes],
        [k for k, b in enumerate(boxes) if b is not None],
    )


def crop_surface(s: Surface, x0: int, x1: int) -> Surface:
    """Columns x0:x1 of a surface, as views: drawing into the crop draws into the whole."""
    return Surface(
        s.albedo[:, x0:x1], s.height[:, x0:x1], s.material[:, x0:x1], s.light, s.finish, s.substrate
    )


def _calibrate(
    job: Job,
    surface: Surface,
    radiance: FloatArray,
    centre: tuple[float, float],
    max_reach: int,
    relief_only: bool = False,
) -> DrawnDefect:
    """Draw the defect into a frame-sized part of `radiance` and calibrate it there."""
    exposure = prepare(job.camera_rng, job.options, (job.h, job.w), job.spec.grayscale)
    noise = (
        sensor_noise(exposure, radiance.shape[:2] if job.spec.grayscale else radiance.shape)
        if job.options.noise > 0
        else None
    )
    stage = Stage(radiance, exposure, noise, expose(exposure, radiance, noise))
    first = fit_reach(
        defect_size(job.defect_rng, job.spec.defect_type, job.spec.difficulty, job.w), max_reach
    )
    return draw_calibrated(
        job.spec.defect_type,
        job.spec.difficulty,
        job.defect_rng,
        surface,
        stage,
        centre,
        first,
        max_scale=1.3,
        max_reach_px=max_reach,
        relief_only=relief_only,
    )


def _conveyor(job: Job) -> tuple[list[U8Image], list[BoolArray]]:
    """The part moves `step` px per frame. With step = W/m, the canvas splits into cells one
    step wide; a defect inside one cell is wholly inside exactly m consecutive frames and
    wholly outside the others (a jitter of up to 8 px per frame is kept clear of it)."""
    m = int(job.layout.integers(3, 5))
    step = job.w // m
    canvas = RENDERERS[job.spec.product](job.surface_rng, job.h, job.w + (job.n - 1) * step + 8)
    radiance = canvas.image
    mask = np.zeros(canvas.material.shape, bool)
    shifts = [k * step + int(job.layout.integers(0, 9)) for k in range(job.n)]
    if job.defective:
        cell = int(job.layout.integers(m - 1, job.n))  # visible in frames cell-m+1 .. cell
        lo, hi = cell * step + 8, (cell + 1) * step
        reach = (hi - lo) // 2 - 2
        cx = (lo + hi) / 2
        cy = float(job.layout.uniform(reach, job.h - reach)) if job.h > 2 * reach else job.h / 2
        x0 = shifts[cell]
        drawn = _calibrate(
            job, crop_surface(canvas, x0, x0 + job.w), radiance[:, x0 : x0 + job.w], (cx - x0, cy), reach
        )
        _paste(radiance, mask, drawn, drawn.x0 + x0, lo, hi)
    exposure = prepare(job.camera_rng, job.options, (job.h, job.w), job.spec.grayscale)
    frames = [
        expose(e, radiance[:, s : s + job.w]) for e, s in zip(job.exposures(exposure), shifts, strict=True)
    ]
    return frames, [mask[:, s : s + job.w].copy() for s in shifts]


def _paste(
    radiance: FloatArray, mask: BoolArray, drawn: DrawnDefect, x0: int, lo: int = 0, hi: int = 1 << 30
) -> None:
    """Add a drawn defect's change at canvas column x0, keeping it within columns lo:hi."""
    h, w = drawn.mask.shape
    y0 = drawn.y0
    keep = np.zeros(w, bool)
    keep[max(lo - x0, 0) : max(hi - x0, 0)] = True
    window = radiance[y0 : y0 + h, x0 : x0 + w]
    np.maximum(window + drawn.diff * keep[None, :, None], 0.0, out=window)
    mask[y0 : y0 + h, x0 : x0 + w] |= drawn.mask & keep[None, :]


def _rotation(job: Job) -> tuple[list[U8Image], list[BoolArray]]:
    """A cylinder turning by `step` degrees per frame. The view spans 140° = j steps, so its two
    edges sit at the same phase of the step grid; a defect placed clear of that phase is never
    cut by an edge, and shows in j consecutive frames (fewer near the ends of the sequence)."""
    radius = (job.w / 2) / math.sin(math.radians(VIEW_HALF_DEG))
    j = max(5, math.ceil((job.n - 1) * 2 * VIEW_HALF_DEG / 215))  # total turn stays under 360° - view
    j = min(j, job.n - 1)
    step = 2 * VIEW_HALF_DEG / j
    arc = (job.n - 1) * step + 2 * VIEW_HALF_DEG
    canvas = RENDERERS[job.spec.product](job.surface_rng, job.h, int(radius * math.radians(arc)) + 2)
    radiance = canvas.image
    mask = np.zeros(canvas.material.shape, bool)
    if job.defective:
        margin = 1.5  # degrees kept clear of the view's edge
        reach = int(radius * math.radians(step / 2 - margin))
        a = int(job.layout.integers(0, job.n + j - 1))
        offset = float(job.layout.uniform(step / 2 - 0.01, step / 2 + 0.01))
        cx = radius * math.radians(a * step + offset)
        cy = float(job.layout.uniform(reach, job.h - reach)) if job.h > 2 * reach else job.h / 2
        x0 = int(min(max(cx - job.w / 2, 0), radiance.shape[1] - job.w))
        drawn = _calibrate(
            job, crop_surface(canvas, x0, x0 + job.w), radiance[:, x0 : x0 + job.w], (cx - x0, cy), reach
        )
        _paste(radiance, mask, drawn, drawn.x0 + x0)
    exposure = prepare(job.camera_rng, job.options, (job.h, job.w), job.spec.grayscale)
    shading, glint = _cylinder_light(canvas, radius, job.w)
    frames, masks = [], []
    for k, e in enumerate(job.exposures(exposure)):
        map_x, map_y = _unwrap(radius, job.h, job.w, k * step)
        part = cv2.remap(radiance, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        part = part * shading[None, :, None] + glint[None, :, None] * (part if canvas.finish.metal else 1.0)
        frames.append(expose(e, part.astype(np.float32)))
        masks.append(cv2.remap(mask.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR) > 0.25)
    return frames, masks


def _unwrap(radius: float, h: int, w: int, turned_deg: float) -> tuple[FloatArray, FloatArray]:
    """remap maps from a frame of the cylinder, turned by `turned_deg`, to its unrolled surface."""
    x = (np.arange(w, dtype=np.float64) + 0.5 - w / 2) / radius
    angle = np.degrees(np.arcsin(np.clip(x, -1, 1))) + VIEW_HALF_DEG + turned_deg
    u = (radius * np.radians(angle)).astype(np.float32)
    map_x = np.broadcast_to(u[None, :], (h, w)).copy()
    map_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)).copy()
    return map_x, map_y


def _cylinder_light(s: Surface, radius: float, w: int) -> tuple[FloatArray, FloatArray]:
    """Shading across the cylinder (Lambert on its normal) and the highlight stripe of a glossy
    or metal part, for a light above and a little to the side of the camera."""
    x = (np.arange(w, dtype=np.float64) + 0.5 - w / 2) / radius
    psi = np.arcsin(np.clip(x, -1, 1))
    light = Light.from_angles(0.0, 70.0)
    lambert = np.maximum(np.sin(psi) * light.x + np.cos(psi) * light.z, 0) / light.z
    shading = s.finish.ambient + (1 - s.finish.ambient) * lambert
    half = math.atan2(light.x, light.z + 1.0)  # the normal that mirrors the light into the camera
    glint = s.finish.specular * np.exp(-(((psi - half) / 0.08) ** 2))
    return shading.astype(np.float32), glint.astype(np.float32)


def _lighting(job: Job) -> tuple[list[U8Image], list[BoolArray]]:
    """A static part under a dome light (relief vanishes) and grazing lights from turning
    directions (relief shows, a scratch least when lit along its length). Which frames show
    the defect is measured: a zoom contrast of at least VISIBLE_ZOOM."""
    surface = RENDERERS[job.spec.product](job.surface_rng, job.h, job.w)
    domes = set(
        job.layout.choice(job.n, size=int(job.layout.integers(2, job.n // 2 + 1)), replace=False).tolist()
    )
    azimuth = float(job.layout.uniform(0, 360))
    lights: list[Light | None] = [
        None
        if k in domes
        else Light.from_angles(azimuth + k * 360 / job.n, float(job.layout.uniform(15, 28)))
        for k in range(job.n)
    ]
    lit = [
        shade(surface.albedo, surface.height, light, surface.finish) if light else surface.albedo.copy()
        for light in lights
    ]
    exposure = prepare(job.camera_rng, job.options, (job.h, job.w), job.spec.grayscale)
    exposures = job.exposures(exposure)
    frames = [expose(e, r) for e, r in zip(exposures, lit, strict=True)]
    masks = [np.zeros((job.h, job.w), bool) for _ in range(job.n)]
    if not job.defective:
        return frames, masks
    ref = next(k for k, light in enumerate(lights) if light is not None)
    ref_light = lights[ref]
    assert ref_light is not None
    posed = Surface(
        surface.albedo, surface.height, surface.material, ref_light, surface.finish, surface.substrate
    )
    reach = min(job.h, job.w) // 2 - 2
    cx, cy = (
        job.w / 2 + job.layout.uniform(-0.3, 0.3) * job.w,
        job.h / 2 + job.layout.uniform(-0.3, 0.3) * job.h,
    )
    drawn = _calibrate(job, posed, lit[ref].copy(), (cx, cy), reach, relief_only=True)
    h, w = drawn.mask.shape
    y0, x0 = drawn.y0, drawn.x0
    relief = surface.height[y0 : y0 + h, x0 : x0 + w] + drawn.relief
    for k, light in enumerate(lights):
        if light is None:
            continue  # under the dome a relief-only defect leaves the image as it was
        changed = lit[k].copy()
        albedo = surface.albedo[y0 : y0 + h, x0 : x0 + w]
        # Shade the window with and without the relief, so the window's own border cancels out.
        changed[y0 : y0 + h, x0 : x0 + w] += shade(albedo, relief, light, surface.finish) - shade(
            albedo, surface.height[y0 : y0 + h, x0 : x0 + w], light, surface.finish
        )
        image = expose(exposures[k], changed)
        change = image[y0 : y0 + h, x0 : x0 + w].astype(np.float32) - frames[k][y0 : y0 + h, x0 : x0 + w]
        if CleanViews(frames[k]).measure(change, y0, x0, drawn.mask).zoom >= VISIBLE_ZOOM:
            masks[k][y0 : y0 + h, x0 : x0 + w] = drawn.mask
        frames[k] = image  # a faint trace stays in the frame; it only does not count as shown
    return frames, masks


KINDS = {"conveyor": _conveyor, "rotation": _rotation, "lighting": _lighting}

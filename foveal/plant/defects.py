"""Defects of the taxonomy, drawn into a window of a product surface as physical changes.

Each defect edits the albedo and the height field of a `Window` (a copy of part of a
`Surface`) and returns its pixel mask; shading the window afterwards turns relief into light
and shadow, so a scratch shows a dark trench beside a bright ridge, a pit a dark centre and a
lit rim, a dent only bent shading. `DEFECTS` maps each taxonomy name to its drawing function
and to whether it is a line or a blob, which `defect_size()` needs to size it for a
difficulty. Sizes are given in pixels of the 448 px whole-frame view and scaled to the frame,
so a difficulty means the same thing at 1024 and at 2048 px.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from foveal.domain import BURN, CRACK, DENT, PIT, SCRATCH, STAIN
from foveal.plant.dataset import Difficulty
from foveal.plant.surfaces import (
    BoolArray,
    Finish,
    FloatArray,
    Light,
    Rng,
    Surface,
    blur_wide,
    f32,
    noise,
    smoothstep,
)

VIEW_PX = 448  # the long side of the model's whole-frame view
Shape = Literal["line", "blob"]

# (extent range, width range) in pixels of the 448 px view; extent is a line's length or a
# blob's diameter, width a line's half-width or a crater's radius.
SIZES: dict[Difficulty, dict[Shape, tuple[tuple[float, float], tuple[float, float]]]] = {
    "easy": {"line": ((40, 80), (0.7, 1.3)), "blob": ((14, 28), (2.0, 4.0))},
    "hard": {"line": ((12, 24), (0.22, 0.4)), "blob": ((5, 9), (0.9, 1.6))},
    "tiny": {"line": ((2, 4.5), (0.12, 0.2)), "blob": ((0.9, 1.6), (0.35, 0.6))},
}


# A dent is seen only through its shading, a light and a dark lobe that cancel once both fall
# into one pixel; a tiny dent can therefore be a little wider than other tiny blobs.
SIZE_OVERRIDES: dict[tuple[str, Difficulty], tuple[float, float]] = {(DENT, "tiny"): (2.0, 3.5)}


@dataclass(frozen=True)
class DefectSize:
    """One defect's size in full-resolution pixels and its severity in [0, 1]."""

    extent_px: float
    width_px: float
    strength: float

    @property
    def reach_px(self) -> int:
        """Half the side of a window that holds the whole defect and its halo."""
        return int(0.75 * self.extent_px + 6 * self.width_px + 8)


def defect_size(
    rng: Rng, defect_type: str, difficulty: Difficulty, long_px: int, scale: float = 1.0
) -> DefectSize:
    """Draw a size for `difficulty` on a frame whose long side is `long_px`; `scale` resizes it
    (calibration's redraws): the width fully, a growing line's length only by its square root,
    so a line that must show more gets wider rather than only longer."""
    shape = DEFECTS[defect_type][1]
    (e_lo, e_hi), (w_lo, w_hi) = SIZES[difficulty][shape]
    e_lo, e_hi = SIZE_OVERRIDES.get((defect_type, difficulty), (e_lo, e_hi))
    per_view_px = long_px / VIEW_PX
    stretch = scale if scale < 1 or shape == "blob" else math.sqrt(scale)
    extent = rng.uniform(e_lo, e_hi) * per_view_px * stretch
    width = max(rng.uniform(w_lo, w_hi) * per_view_px * scale, 0.6)
    return DefectSize(float(max(extent, 2.0)), float(width), float(rng.uniform(0.6, 1.0)))


@dataclass
class Window:
    """A copy of part of a surface that one defect edits; (x, y) is the defect's centre in it."""

    x0: int
    y0: int
    albedo: FloatArray  # (h, w, 3)
    height: FloatArray  # (h, w)
    material: BoolArray  # (h, w)
    light: Light
    finish: Finish
    substrate: FloatArray
    x: float
    y: float

    @staticmethod
    def cut(surface: Surface, cx: float, cy: float, reach: int) -> Window:
        h, w = surface.material.shape
        x0, y0 = max(int(cx) - reach, 0), max(int(cy) - reach, 0)
        x1, y1 = min(int(cx) + reach + 1, w), min(int(cy) + reach + 1, h)
        return Window(
            x0,
            y0,
            surface.albedo[y0:y1, x0:x1].copy(),
            surface.height[y0:y1, x0:x1].copy(),
            surface.material[y0:y1, x0:x1].copy(),
            surface.light,
            surface.finish,
            surface.substrate,
            cx - x0,
            cy - y0,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.material.shape[0], self.material.shape[1]

    @property
    def grid(self) -> tuple[FloatArray, FloatArray]:
        yy, xx = np.mgrid[: self.height.shape[0], : self.height.shape[1]].astype(np.float32)
        return xx, yy


# --- geometry helpers --------------------------------------------------------------------


def curve_field(shape: tuple[int, int], pts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """For each pixel: signed distance across a dense polyline, its parameter t in [0, 1] at
    the nearest point, and how far the pixel lies beyond the line's ends (0 alongside it)."""
    h, w = shape
    pts = pts[(pts[:, 0] > -0.5) & (pts[:, 0] < w - 0.5) & (pts[:, 1] > -0.5) & (pts[:, 1] < h - 0.5)]
    if len(pts) < 2:
        far = np.full(shape, 1e4, np.float32)
        return far, np.zeros(shape, np.float32), far
    rx, ry = np.round(pts[:, 0]).astype(np.intp), np.round(pts[:, 1]).astype(np.intp)
    src = np.ones(shape, np.uint8)
    src[ry, rx] = 0
    owner = np.full(shape, -1, np.intp)
    owner[ry, rx] = np.arange(len(pts))
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    zy, zx = np.nonzero(src == 0)  # OpenCV numbers the zero pixels in this row-major order
    k = owner[zy, zx][labels - 1]
    tangent = np.gradient(pts, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-6)
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dx, dy = xx - pts[k, 0], yy - pts[k, 1]
    # The distance to the nearest sample, signed by the side: a perpendicular projection alone
    # would run on along the tangent outside every sharp turn.
    side = dx * -tangent[k, 1] + dy * tangent[k, 0]
    across = np.copysign(np.hypot(dx, dy), side)
    along = dx * tangent[k, 0] + dy * tangent[k, 1]
    # Several samples share the first pixel and the last one claims it, so the start is a cluster.
    first = k <= owner[ry[0], rx[0]]
    ahead = (xx - pts[0, 0]) * tangent[0, 0] + (yy - pts[0, 1]) * tangent[0, 1]
    beyond = np.where(first, np.maximum(-ahead, 0), np.where(k == len(pts) - 1, np.maximum(along, 0), 0))
    return across.astype(np.float32), (k / (len(pts) - 1)).astype(np.float32), beyond.astype(np.float32)


def walk(
    start: tuple[float, float],
    heading: float,
    length: float,
    turn: Callable[[float], float],
    step: float = 0.4,
) -> FloatArray:
    """Dense points along a path whose heading at arc length s is heading + turn(s)."""
    s = np.arange(0.0, length + step, step)
    angles = heading + np.array([turn(v) for v in s[:: max(int(4 / step), 1)]])
    angles = np.interp(s, s[:: max(int(4 / step), 1)], angles)
    xs = start[0] + np.cumsum(np.cos(angles) * step) - step * math.cos(heading)
    ys = start[1] + np.cumsum(np.sin(angles) * step) - step * math.sin(heading)
    return f32(np.stack([xs, ys], 1))


def wiggle(rng: Rng, amplitude: float, period: float) -> Callable[[float], float]:
    """A smooth random function of arc length: three sinusoids of random phase."""
    phases = rng.uniform(0, 2 * math.pi, 3)
    periods = period * np.array([1.0, 0.47, 0.23])
    weights = amplitude * np.array([1.0, 0.5, 0.25])
    return lambda s: float(np.sum(weights * np.sin(2 * math.pi * s / periods + phases)))


def coverage(across: FloatArray, half_width: FloatArray) -> FloatArray:
    """Share of each pixel a line of that half-width covers (box filter, so sub-pixel lines fade)."""
    return np.clip(np.minimum(half_width + 0.5 - np.abs(across), 2 * half_width), 0.0, 1.0)


def blob(rng: Rng, win: Window, radius: float, roughness: float) -> FloatArray:
    """An irregular elliptical blob: 0 outside, rising to 1 at its centre."""
    xx, yy = win.grid
    angle = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.55, 1.0)
    u = (xx - win.x) * math.cos(angle) + (yy - win.y) * math.sin(angle)
    v = (-(xx - win.x) * math.sin(angle) + (yy - win.y) * math.cos(angle)) / aspect
    rho = np.sqrt(u * u + v * v) / max(radius, 0.5)
    h, w = rho.shape
    wobble = noise(rng, h, w, max(radius * 0.5, 1.0)) + 0.5 * noise(rng, h, w, max(radius * 0.2, 1.0))
    return np.clip(1.0 - rho - roughness * wobble, 0.0, 1.0).astype(np.float32)


# --- defects -----------------------------------------------------------------------------


def draw_scratch(rng: Rng, win: Window, size: DefectSize) -> BoolArray:
    """A gently curved furrow: a dark trench and, on one side, the bright ridge of pushed-up
    material; width varies along it and it fades out at both ends."""
    heading = rng.uniform(0, 2 * math.pi)
    length = size.extent_px
    bend = rng.uniform(-1, 1) / (length * rng.uniform(0.8, 3.0))
    start = (win.x - 0.5 * length * math.cos(heading), win.y - 0.5 * length * math.sin(heading))
    pts = walk(start, heading, length, lambda s: bend * (s - length / 2) + wiggle(rng, 0.03, length)(s))
    across, t, beyond = curve_field(win.shape, pts)
    vary = wiggle(rng, 0.12, 0.6)
    knots = np.linspace(0.0, 1.0, 64)
    swell = np.interp(t, knots, [vary(k) for k in knots]).astype(np.float32)
    hw = size.width_px * (0.55 + 0.45 * np.clip(np.sin(np.pi * t), 0, 1) ** 0.4) * (1 + swell)
    fade = np.exp(-((beyond / np.maximum(hw, 0.5)) ** 2)) * (0.7 + 0.3 * np.clip(np.sin(np.pi * t), 0, 1))
    trench = coverage(across, hw) * fade
    side = rng.choice([-1.0, 1.0])
    ridge = coverage(side * across - 1.9 * hw - 0.3, 0.7 * hw) * fade
    depth = 1.2 * size.strength * np.maximum(hw, 0.7)
    soft_trench = cv2.GaussianBlur(trench, (0, 0), 0.6)
    win.height += depth * (0.45 * ridge - soft_trench)
    bare = np.clip(0.6 * size.strength * trench, 0, 1)[..., None]  # the tool lays the substrate bare
    win.albedo[:] = win.albedo * (1 - bare) + win.substrate * bare
    shadow = np.maximum(1 - 0.25 * size.strength * trench, 0.1)
    win.albedo *= (shadow * (1 + 0.3 * size.strength * ridge))[..., None]
    return np.asarray((trench > 0.3) | (ridge > 0.3), bool)


def draw_crack(rng: Rng, win: Window, size: DefectSize) -> BoolArray:
    """A jagged, branching fracture: a near-black gap that tapers to nothing, with shaded lips."""
    heading = rng.uniform(0, 2 * math.pi)
    length = size.extent_px
    start = (win.x - 0.5 * length * math.cos(heading), win.y - 0.5 * length * math.sin(heading))
    jag = length / rng.uniform(12, 25)
    trunk = _jagged(rng, start, heading, length, jag)
    width = 0.7 * size.width_px  # a crack is a narrow gap; its darkness makes it show
    branches = [(trunk, width)]
    for _ in range(int(rng.integers(1, 4 if size.extent_px > 40 else 2))):
        at = rng.uniform(0.15, 0.75)
        k = int(at * (len(trunk) - 1))
        d = trunk[min(k + 4, len(trunk) - 1)] - trunk[max(k - 4, 0)]
        turn = math.atan2(float(d[1]), float(d[0])) + rng.choice([-1, 1]) * rng.uniform(0.45, 1.0)
        twig = _jagged(
            rng, (float(trunk[k, 0]), float(trunk[k, 1])), turn, length * rng.uniform(0.2, 0.45), jag
        )
        branches.append((twig, width * (1 - at) * 0.8))
    gap = np.zeros(win.height.shape, np.float32)
    lips = np.zeros(win.height.shape, np.float32)
    for k, (pts, width) in enumerate(branches):
        taper = _trunk_taper if k == 0 else _twig_taper
        across, t, beyond = curve_field(win.shape, pts)
        hw = width * taper(t) * np.exp(-beyond)
        gap = np.maximum(gap, coverage(across, hw))
        lips = np.maximum(lips, np.exp(-((across / (2.5 * hw + 1.0)) ** 2)) * (hw > 0.1))
    flaked = np.clip(0.3 * size.strength * lips * (1 - gap), 0, 1)[..., None]  # chipped edges
    win.albedo[:] = win.albedo * (1 - flaked) + win.substrate * flaked
    # A gap is dark however shallow: light that enters does not come back out.
    win.albedo *= np.maximum(1 - min(1.5 * size.strength, 0.97) * gap, 0.03)[..., None]
    win.height -= size.strength * size.width_px * cv2.GaussianBlur(gap, (0, 0), 0.7)
    return (gap > 0.25) | (lips > 0.6)


def _trunk_taper(t: FloatArray) -> FloatArray:
    """A crack is widest a third of the way along and closes towards both ends."""
    return f32(np.sqrt(np.clip(4 * t * (1 - t), 0, 1)) * (1.2 - 0.6 * t))


def _twig_taper(t: FloatArray) -> FloatArray:
    """A branch leaves the trunk at its full width and closes towards its tip."""
    return np.clip(1 - t, 0, 1) ** 0.7


def _jagged(rng: Rng, start: tuple[float, float], heading: float, length: float, jag: float) -> FloatArray:
    """A crack path: straight runs of about `jag` pixels with sharp random turns between them."""
    n = max(int(length / max(jag, 1.0)), 4)  # even a short branch zigzags
    turns = heading + np.cumsum(rng.normal(0, 0.45, n)) * 0.35 + rng.normal(0, 0.5, n)
    steps = np.stack([np.cos(turns), np.sin(turns)], 1) * (length / n)
    corners = np.vstack([np.asarray(start)[None], np.asarray(start)[None] + np.cumsum(steps, 0)])
    seg = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    dense = np.arange(0.0, s[-1], 0.4)
    return np.stack([np.interp(dense, s, corners[:, 0]), np.interp(dense, s, corners[:, 1])], 1).astype(
        np.float32
    )


def draw_pit(rng: Rng, win: Window, size: DefectSize) -> BoolArray:
    """One or a few craters: a dark bowl and a raised rim that catches the light on its lit side."""
    xx, yy = win.grid
    mask = np.zeros(win.height.shape, bool)
    count = 1 if size.extent_px < 6 * size.width_px else int(rng.integers(1, 5))
    lx, ly = win.light.x, win.light.y
    norm = math.hypot(lx, ly) or 1.0
    for k in range(count):
        r = size.width_px * (rng.uniform(0.8, 1.2) if k == 0 else rng.uniform(0.4, 0.9))
        spread = 0.0 if k == 0 else 0.5 * size.extent_px
        cx, cy = win.x + rng.uniform(-spread, spread), win.y + rng.uniform(-spread, spread)
        dx, dy = xx - cx, yy - cy
        angle = np.arctan2(dy, dx)
        wobble = (
            1
            + 0.06 * np.sin(2 * angle + rng.uniform(0, 6.3))
            + 0.03 * np.sin(5 * angle + rng.uniform(0, 6.3))
        )
        rho = np.sqrt(dx * dx + dy * dy) / (r * wobble)
        depth = 0.9 * size.strength * r
        bowl = np.clip(1 - rho * rho, 0, 1)
        rim = np.exp(-(((rho - 1.15) / 0.3) ** 2))
        win.height += depth * (0.35 * rim - bowl)
        lit = np.clip((dx * lx + dy * ly) / (norm * np.maximum(rho * r, 1e-3)), 0, 1)
        dark = np.exp(-((rho / 0.6) ** 2))
        darker = np.maximum(1 - 0.6 * size.strength * dark, 0.08)
        win.albedo *= (darker * (1 + 0.25 * size.strength * rim * lit))[..., None]
        mask |= rho < 1.3
    return mask


STAIN_TINTS = [
    np.array(t, np.float32)
    for t in [
        (0.62, 0.52, 0.32),  # oil: darker, amber
        (0.9, 0.9, 0.88),  # water mark: faint, mineral rim
        (0.7, 0.45, 0.28),  # rust-coloured coolant
        (0.55, 0.55, 0.55),
    ]
]  # grease, grey


def draw_stain(rng: Rng, win: Window, size: DefectSize) -> BoolArray:
    """A soft-edged translucent discolouration with the darker rim a drying liquid leaves."""
    body = blob(rng, win, size.extent_px / 2, 0.18)
    edge = max(0.05 * size.extent_px, 0.6)
    soft = blur_wide(smoothstep(0.0, 0.08, body), edge)
    rim = cv2.GaussianBlur(np.clip(4 * soft * (1 - soft), 0, 1), (0, 0), edge) ** 2
    h, w = soft.shape
    uneven = 1 + 0.25 * noise(rng, h, w, max(size.extent_px / 6, 1.0))
    tint = STAIN_TINTS[int(rng.integers(len(STAIN_TINTS)))]
    amount = np.clip(0.8 * size.strength * soft * uneven, 0, 0.9)[..., None]
    win.albedo *= (1 - amount) + amount * tint
    win.albedo *= np.maximum(1 - 0.2 * size.strength * rim, 0.3)[..., None]
    return (soft > 0.3) | (rim > 0.5)


TEMPER = np.array(
    [
        [1.0, 1.0, 1.0],
        [1.0, 0.88, 0.6],
        [0.85, 0.6, 0.38],
        [0.62, 0.4, 0.6],
        [0.45, 0.52, 0.85],
        [0.35, 0.3, 0.35],
    ],
    np.float32,
)  # straw, bronze, purple, blue
SCORCH = np.array(
    [
        [1.0, 1.0, 1.0],
        [0.95, 0.85, 0.6],
        [0.7, 0.5, 0.3],
        [0.45, 0.3, 0.18],
        [0.3, 0.2, 0.12],
        [0.2, 0.14, 0.1],
    ],
    np.float32,
)  # yellowing to brown


def draw_burn(rng: Rng, win: Window, size: DefectSize) -> BoolArray:
    """A scorch mark: a charred black-brown core inside a halo of heat tint (temper colours on
    metal, yellowing and browning elsewhere)."""
    heat = blob(rng, win, size.extent_px / 2, 0.25) ** 0.8
    heat = blur_wide(heat, max(0.03 * size.extent_px, 0.5))
    ramp = TEMPER if win.finish.metal else SCORCH
    stops = np.linspace(0.0, 0.6, len(ramp))
    tint = np.stack([np.interp(heat, stops, ramp[:, c]) for c in range(3)], -1).astype(np.float32)
    strength = min(size.strength, 1.0)  # discolouration saturates; more heat only chars more
    win.albedo *= 1 - strength + strength * tint
    h, w = heat.shape
    char = np.clip(smoothstep(0.45, 0.85, heat) * size.strength, 0, 1)
    soot = np.array([0.07, 0.05, 0.04], np.float32) * (1 + 0.4 * noise(rng, h, w, 1.2))[..., None]
    win.albedo[:] = win.albedo * (1 - char[..., None]) + soot * char[..., None]
    win.height += 0.3 * char * noise(rng, h, w, 1.5)  # blistered, rough char
    return heat > 0.12


def draw_dent(rng: Rng, win: Window, size: DefectSize) -> BoolArray:
    """A smooth depression: no colour change, only bent shading (and, on gloss, a bent reflection)."""
    xx, yy = win.grid
    a = size.extent_px / 2
    b = a * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, math.pi)
    u = (xx - win.x) * math.cos(angle) + (yy - win.y) * math.sin(angle)
    v = -(xx - win.x) * math.sin(angle) + (yy - win.y) * math.cos(angle)
    rho2 = (u / a) ** 2 + (v / b) ** 2
    bump = np.clip(1 - rho2, 0, 1) ** 2
    depth = 0.25 * size.strength * a  # max slope about 0.4 * strength
    win.height -= depth * bump
    if win.finish.specular > 0.1:  # a glossy surface mirrors its surroundings: the dent bends them
        gx = cv2.Sobel(bump, cv2.CV_32F, 1, 0, ksize=3, scale=0.125) * depth
        gy = cv2.Sobel(bump, cv2.CV_32F, 0, 1, ksize=3, scale=0.125) * depth
        shift = 0.15 * a
        win.albedo[:] = cv2.remap(
            win.albedo, xx + shift * gx, yy + shift * gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
    return bump > 0.15


Drawer = Callable[[Rng, Window, DefectSize], BoolArray]
DEFECTS: dict[str, tuple[Drawer, Shape]] = {
    SCRATCH: (draw_scratch, "line"),
    CRACK: (draw_crack, "line"),
    PIT: (draw_pit, "blob"),
    STAIN: (draw_stain, "blob"),
    BURN: (draw_burn, "blob"),
    DENT: (draw_dent, "blob"),
}


def draw_defect(
    defect_type: str,
    rng: Rng,
    surface: Surface,
    cx: float,
    cy: float,
    size: DefectSize,
    relief_only: bool = False,
) -> tuple[Window, BoolArray]:
    """Draw one defect centred at (cx, cy); the surface stays untouched, the edit is returned as
    a window (with the unchanged material mask) and the defect's mask in that window.
    `relief_only` keeps only the change of height: a shallow defect that diffuse light hides."""
    win = Window.cut(surface, cx, cy, size.reach_px)
    before_albedo, before_height = win.albedo.copy(), win.height.copy()
    mask = DEFECTS[defect_type][0](rng, win, size)
    if relief_only:
        win.albedo[:] = before_albedo
    # Defects stay on material: fade the edit out over holes, components and background.
    keep = cv2.GaussianBlur(win.material.astype(np.float32), (0, 0), 1.0)
    win.albedo[:] = before_albedo + (win.albedo - before_albedo) * keep[..., None]
    win.height[:] = before_height + (win.height - before_height) * keep
    return win, mask & win.material

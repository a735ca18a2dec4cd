"""Procedural product surfaces for the plant-data renderer, one small function per product.

A surface is described physically: an albedo (colour under flat frontal light), a height
field in pixels whose slopes shade that albedo under the scene's key light, a finish (matte or
metallic, how glossy) and a material mask of where a defect may sit (not in holes, not on
components). Defects edit albedo and height; `shade()` turns both into the radiance the camera
sees, so a dent bends the shading and a scratch's ridge catches the light. `PRODUCTS` maps each
training product's name to its `render_<name>(rng, height, width)`, `HELD_OUT_PRODUCTS` the
surfaces rendered only when asked for, `RENDERERS` both; every call draws its own colour,
texture scale, geometry and pose from `rng`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Rng = np.random.Generator


def f32(array: object) -> FloatArray:
    """`array` as float32, copying only when needed; also types OpenCV's loosely typed results."""
    return np.asarray(array, dtype=np.float32)


@dataclass(frozen=True)
class Light:
    """Unit vector from the surface towards the key light: x right, y down, z towards the camera."""

    x: float
    y: float
    z: float

    @staticmethod
    def from_angles(azimuth_deg: float, elevation_deg: float) -> Light:
        az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
        return Light(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))

    @staticmethod
    def random(rng: Rng) -> Light:
        return Light.from_angles(float(rng.uniform(0, 360)), float(rng.uniform(35, 65)))


@dataclass(frozen=True)
class Finish:
    """How a material reflects: metals tint their glints and take temper colours when burnt."""

    ambient: float  # share of the light that does not depend on the surface normal
    specular: float  # strength of the glint off slopes that turn towards the half-vector
    shininess: float  # Blinn-Phong exponent
    metal: bool


MATTE = Finish(ambient=0.45, specular=0.02, shininess=8.0, metal=False)
GLOSS = Finish(ambient=0.5, specular=0.15, shininess=60.0, metal=False)
METAL = Finish(ambient=0.35, specular=0.45, shininess=40.0, metal=True)


@dataclass
class Surface:
    """One product surface; arrays are full-frame, float32, y down."""

    albedo: FloatArray  # (H, W, 3) in [0, 1]
    height: FloatArray  # (H, W) relief in pixels
    material: BoolArray  # (H, W) where a defect may go
    light: Light
    finish: Finish
    substrate: FloatArray  # (3,) what a scratch lays bare: primer, laminate, fresh metal, fibre

    @property
    def image(self) -> FloatArray:
        """The radiance under the key light, (H, W, 3), about [0, 1] (glints may exceed 1)."""
        return shade(self.albedo, self.height, self.light, self.finish)


def shade(albedo: FloatArray, height: FloatArray, light: Light, finish: Finish) -> FloatArray:
    """Lambert plus Blinn-Phong, normalised so that a flat patch shows exactly its albedo."""
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    inv = gx * gx
    inv += gy * gy
    inv += 1.0
    cv2.sqrt(inv, inv)
    np.reciprocal(inv, out=inv)
    ndotl = light.z - gx * light.x - gy * light.y
    ndotl *= inv
    np.maximum(ndotl, 0.0, out=ndotl)
    ndotl *= (1.0 - finish.ambient) / light.z
    ndotl += finish.ambient
    out = albedo * ndotl[..., None]
    if finish.specular > 0:
        hx, hy, hz = light.x, light.y, light.z + 1.0
        norm = math.sqrt(hx * hx + hy * hy + hz * hz)
        hx, hy, hz = hx / norm, hy / norm, hz / norm
        ndoth = hz - gx * hx - gy * hy
        ndoth *= inv
        np.maximum(ndoth, 0.0, out=ndoth)
        cv2.pow(ndoth, finish.shininess, ndoth)
        # Relative to the flat surface's glint, which the albedo already holds.
        ndoth -= hz**finish.shininess
        ndoth *= finish.specular
        out += ndoth[..., None] * (albedo if finish.metal else 1.0)
    return f32(out)


# --- noise -------------------------------------------------------------------------------


def _normal_quantiles() -> FloatArray:
    """256 equally likely values of a unit normal. Noise drawn as random bytes looked up in
    this table costs a fraction of `standard_normal` and is Gaussian to the eye and to a CNN."""

    def inverse_cdf(p: float) -> float:
        lo, hi = -6.0, 6.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
        return (lo + hi) / 2

    table = np.array([inverse_cdf((k + 0.5) / 256) for k in range(256)], np.float32)
    return f32(table / table.std())


NORMAL_TABLE = _normal_quantiles()


def gaussian(rng: Rng, shape: tuple[int, ...]) -> FloatArray:
    """Unit normal noise of `shape`, through `NORMAL_TABLE`."""
    return f32(cv2.LUT(rng.integers(0, 256, shape, dtype=np.uint8), NORMAL_TABLE))


def noise(rng: Rng, h: int, w: int, cell_px: float, stretch: float = 1.0) -> FloatArray:
    """Smooth zero-mean, unit-variance noise; features `cell_px` across, `stretch`× longer in x."""
    cy, cx = max(cell_px, 1.0), max(cell_px * stretch, 1.0)
    gh, gw = int(h / cy) + 4, int(w / cx) + 4
    grid = gaussian(rng, (gh, gw))
    if cy == 1.0 and cx == 1.0:
        field = cv2.GaussianBlur(grid[:h, :w], (0, 0), max(cell_px, 0.3) * 0.6)
    else:
        up = cv2.resize(grid, (int(gw * cx), int(gh * cy)), interpolation=cv2.INTER_CUBIC)
        oy = int(rng.integers(0, up.shape[0] - h + 1))
        ox = int(rng.integers(0, up.shape[1] - w + 1))
        field = up[oy : oy + h, ox : ox + w]
    std = float(field[::5, ::5].std()) or 1.0
    return np.ascontiguousarray((field - float(field[::5, ::5].mean())) / std, dtype=np.float32)


def fbm(rng: Rng, h: int, w: int, cell_px: float, octaves: int = 4, gain: float = 0.5) -> FloatArray:
    """Fractal noise: octaves of `noise` at halving cell sizes, unit variance."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        out += amp * noise(rng, h, w, cell_px / 2**k)
        total += amp * amp
        amp *= gain
    return out / np.float32(math.sqrt(total))


def rotate(field: FloatArray, angle_deg: float, h: int, w: int) -> FloatArray:
    """Rotate a field about its centre and cut the middle (h, w) out of it."""
    fh, fw = field.shape[:2]
    rot = np.asarray(cv2.getRotationMatrix2D((fw / 2, fh / 2), angle_deg, 1.0), np.float64)
    rot[:, 2] -= ((fw - w) / 2, (fh - h) / 2)
    return f32(cv2.warpAffine(field, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))


def streaks(
    rng: Rng, h: int, w: int, layers: list[tuple[float, float]], tilt_deg: float, vertical: bool
) -> FloatArray:
    """(h, w, len(layers)) anisotropic noise, each layer (cell_px, stretch), running along x
    (or y when `vertical`), tilted by `tilt_deg`; drawn on just the box the tilt needs."""
    bh, bw = (w, h) if vertical else (h, w)
    c, s = math.cos(math.radians(tilt_deg)), abs(math.sin(math.radians(tilt_deg)))
    gh, gw = int(bh * c + bw * s) + 4, int(bw * c + bh * s) + 4
    field = np.stack([noise(rng, gh, gw, cell, stretch) for cell, stretch in layers], -1)
    out = rotate(field, tilt_deg, bh, bw)
    out = out.reshape(bh, bw, len(layers))
    return np.ascontiguousarray(out.transpose(1, 0, 2)) if vertical else out


def blur_wide(field: FloatArray, sigma: float) -> FloatArray:
    """A Gaussian blur whose cost does not grow with sigma: shrink, blur, grow back."""
    if sigma <= 4:
        return f32(cv2.GaussianBlur(field, (0, 0), sigma))
    h, w = field.shape[:2]
    factor = sigma / 2.0
    small = cv2.resize(
        field, (max(int(w / factor), 1), max(int(h / factor), 1)), interpolation=cv2.INTER_AREA
    )
    return f32(cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (w, h), interpolation=cv2.INTER_LINEAR))


def span(h: int, w: int) -> float:
    """The frame size features scale with: the long side of a frame, but only 1.6 × the short
    side of a long canvas (a conveyor or unrolled cylinder), so parts keep their frame scale."""
    return float(min(max(h, w), 1.6 * min(h, w)))


def repeats(h: int, w: int) -> float:
    """How many frames' worth of area a (long) canvas holds, to scale feature counts."""
    return max(h, w) / span(h, w)


def smoothstep(edge0: float, edge1: float, x: FloatArray) -> FloatArray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def disc_window(cx: float, cy: float, radius: float, h: int, w: int) -> tuple[slice, slice, FloatArray]:
    """Slices of the frame around a disc and the distance of each of its pixels to the centre."""
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, h)
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, w)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), np.hypot(xx - cx, yy - cy)


def colour(rng: Rng, base: tuple[float, float, float], spread: float = 0.06) -> FloatArray:
    """A base colour with a little brightness and hue variation between parts."""
    tint = 1.0 + rng.normal(0.0, spread / 2, 3)
    return np.clip(np.asarray(base, np.float32) * tint * rng.uniform(1 - spread, 1 + spread), 0, 1).astype(
        np.float32
    )


# --- shared features ---------------------------------------------------------------------


def add_hole(s: Surface, cx: float, cy: float, radius: float, chamfer: float) -> None:
    """A drilled hole with a 45° chamfer: dark bore, a lit and a shaded crescent on the bevel."""
    h, w = s.material.shape
    ys, xs, rho = disc_window(cx, cy, radius + chamfer + 4, h, w)
    depth = np.clip(radius + chamfer - rho, 0.0, chamfer)
    s.height[ys, xs] -= depth
    bore = smoothstep(radius + 0.8, radius - 0.8, rho)
    s.albedo[ys, xs] *= (1.0 - 0.9 * bore)[..., None]
    s.material[ys, xs] &= rho > radius + chamfer + 3


def add_edge(rng: Rng, s: Surface, background: tuple[float, float, float]) -> None:
    """Let the part end inside the frame: a straight edge with a bevel, dark fixture beyond it."""
    h, w = s.material.shape
    angle = rng.uniform(0, 2 * math.pi)
    nx, ny = math.cos(angle), math.sin(angle)
    offset = rng.uniform(0.3, 0.42) * min(h, w)  # edge this far from the centre
    yy, xx = np.ogrid[:h, :w]
    dist = ((xx - w / 2) * nx + (yy - h / 2) * ny - offset).astype(np.float32)  # > 0 outside
    bevel = max(3.0, 0.004 * span(h, w))
    near = dist > -bevel - 1  # only the bevel and the fixture change
    d = dist[near]
    s.height[near] -= np.clip(d + bevel, 0.0, bevel) * 1.5
    outside = smoothstep(-0.5, 0.5, d)[:, None]
    grain = 1 + 0.08 * noise(rng, h, w, 3.0)[near]
    fixture = colour(rng, background)[None, :] * grain[:, None]
    s.albedo[near] = s.albedo[near] * (1 - outside) + fixture * outside
    s.material &= dist < -3 * bevel


# --- products ----------------------------------------------------------------------------

METALS = {
    "aluminium": (0.64, 0.65, 0.66),
    "stainless": (0.56, 0.58, 0.61),
    "titanium": (0.52, 0.5, 0.47),
    "brass": (0.72, 0.58, 0.34),
}


def render_brushed_metal(rng: Rng, h: int, w: int) -> Surface:
    """Brushed sheet: hairline streaks along the brushing, a broad sheen band across it."""
    layers = [
        (0.8, float(rng.uniform(120, 400))),  # hairlines
        (2.5, float(rng.uniform(60, 160))),  # grit tracks
        (float(rng.uniform(60, 200)), 6.0),
    ]  # broad sheen bands
    lines = streaks(rng, h, w, layers, float(rng.normal(0, 5)), bool(rng.random() < 0.5))
    names = list(METALS)
    base = colour(rng, METALS[names[int(rng.choice(len(names), p=[0.4, 0.35, 0.15, 0.1]))]])
    shine = 1 + 0.05 * lines[..., 0] + 0.04 * lines[..., 1] + 0.07 * lines[..., 2]
    albedo = (base * shine[..., None]).astype(np.float32)
    height = (0.06 * lines[..., 0] + 0.1 * lines[..., 1]).astype(np.float32)
    s = Surface(albedo, height, np.ones((h, w), bool), Light.random(rng), METAL, np.clip(base * 1.2, 0, 1))
    for _ in range(int(rng.integers(0, 3) * repeats(h, w))):
        r = float(rng.uniform(0.015, 0.04) * span(h, w))
        add_hole(s, rng.uniform(r * 2, w - r * 2), rng.uniform(r * 2, h - r * 2), r, r * 0.25)
    if rng.random() < 0.3:
        add_edge(rng, s, (0.12, 0.12, 0.13))
    return s


def render_cast_part(rng: Rng, h: int, w: int) -> Surface:
    """Sand or die cast: grainy, mottled, with pores; machined bosses and drilled holes."""
    iron = rng.random() < 0.5
    base = colour(rng, (0.36, 0.35, 0.34) if iron else (0.6, 0.6, 0.58), 0.1)
    grain = noise(rng, h, w, float(rng.uniform(1.5, 3.0)))
    mottle = fbm(rng, h, w, float(rng.uniform(80, 200)), octaves=3)
    pores = smoothstep(2.4, 3.2, -noise(rng, h, w, float(rng.uniform(1.2, 2.2))))
    tone = (1 + 0.035 * mottle + 0.02 * grain) * (1 - 0.4 * pores)
    albedo = (base * tone[..., None]).astype(np.float32)
    rough = rng.uniform(0.1, 0.2) if iron else rng.uniform(0.05, 0.12)
    height = float(rough) * grain + 1.5 * fbm(rng, h, w, 300, octaves=2) - 0.5 * pores
    fresh = np.array([0.72, 0.72, 0.7], np.float32)  # bright metal under the casting skin
    s = Surface(
        albedo,
        height.astype(np.float32),
        np.ones((h, w), bool),
        Light.random(rng),
        METAL if not iron else Finish(0.45, 0.15, 20.0, True),
        fresh,
    )
    for _ in range(int(rng.integers(1, 4) * repeats(h, w))):
        r = float(rng.uniform(0.05, 0.13) * min(h, w))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        _add_boss(rng, s, cx, cy, r, base)
        if rng.random() < 0.7:
            add_hole(s, cx, cy, r * rng.uniform(0.3, 0.5), r * 0.08)
    for _ in range(int(rng.integers(0, 3) * repeats(h, w))):
        r = float(rng.uniform(0.015, 0.035) * span(h, w))
        add_hole(s, rng.uniform(0, w), rng.uniform(0, h), r, r * 0.2)
    return s


def _add_boss(rng: Rng, s: Surface, cx: float, cy: float, radius: float, base: FloatArray) -> None:
    """A raised, face-milled pad: a shaded flank and concentric tool marks on a brighter top."""
    h, w = s.material.shape
    flank = radius * rng.uniform(0.12, 0.22)
    ys, xs, rho = disc_window(cx, cy, radius + flank + 2, h, w)
    rise = smoothstep(radius + flank, radius, rho)
    top = smoothstep(radius, radius - 2, rho)
    s.height[ys, xs] = s.height[ys, xs] * (1 - top) + rise * flank * 0.7
    pitch = rng.uniform(2.5, 6.0)
    marks = 1 + 0.035 * np.sin(2 * np.pi * rho / pitch) + 0.02 * noise(rng, rho.shape[0], rho.shape[1], 2.0)
    machined = np.clip(base * 1.12, 0, 1) * marks[..., None]
    mix = 0.8 * top[..., None]
    s.albedo[ys, xs] = s.albedo[ys, xs] * (1 - mix) + machined * mix
    # Defects sit on the top or on the casting around it, not on the flank (its shading is ambiguous).
    s.material[ys, xs] &= (rho < radius - 2) | (rho > radius + flank + 2)


def render_textile(rng: Rng, h: int, w: int) -> Surface:
    """Woven fabric, plain or twill: round yarns over and under, fibres, slubs, slight skew."""
    pitch = float(rng.uniform(4.0, 9.0))
    angle = math.radians(rng.normal(0, 4))
    yy, xx = np.ogrid[:h, :w]
    wobble = 0.35 * pitch
    u = (xx * math.cos(angle) + yy * math.sin(angle)).astype(np.float32) + wobble * noise(
        rng, h, w, 60 * pitch
    )
    v = (yy * math.cos(angle) - xx * math.sin(angle)).astype(np.float32) + wobble * noise(
        rng, h, w, 60 * pitch
    )
    warp, weft, period = _yarns(rng)
    tile = _weave_tile(period)
    per_px = TILE_CELL_PX / pitch
    weave = cv2.remap(
        tile,
        _wrap(u * per_px, tile.shape[1]),
        _wrap(v * per_px, tile.shape[0]),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    warp_up, bump = weave[..., 0], weave[..., 1]
    thread_u, thread_v = np.floor(u / pitch), np.floor(v / pitch)
    tone_w = 1 + 0.06 * _sample(rng, u / 0.9, v / 25.0) + 0.06 * _sample(rng, thread_u, v / (30 * pitch))
    tone_f = 1 + 0.06 * _sample(rng, u / 25.0, v / 0.9) + 0.06 * _sample(rng, u / (30 * pitch), thread_v)
    occlusion = 0.85 + 0.15 * bump  # the gaps between yarns see less light
    tone_w *= warp_up * occlusion
    tone_f *= (1 - warp_up) * occlusion
    albedo = cv2.merge([warp[c] * tone_w + weft[c] * tone_f for c in range(3)])
    height = (bump * pitch * 0.1).astype(np.float32)
    fuzz = np.clip((warp + weft) * 0.5 + 0.35, 0, 1)  # abraded fibres scatter light: paler
    return Surface(albedo.astype(np.float32), height, np.ones((h, w), bool), Light.random(rng), MATTE, fuzz)


TILE_CELL_PX = 16  # resolution of one thread crossing in the weave tile


def _weave_tile(period: int) -> FloatArray:
    """One repeat of the weave, (period·16, period·16, 2): which yarn is on top, and its bump."""
    size = period * TILE_CELL_PX
    a = (np.arange(size) + 0.5) / TILE_CELL_PX
    i, fu = np.divmod(a[None, :], 1.0)
    j, fv = np.divmod(a[:, None], 1.0)
    cells = (i + j).astype(np.int32) % period
    warp_up = (cells != 0) if period > 2 else (cells == 0)
    across = np.where(warp_up, fu, fv)
    along = np.where(warp_up, fv, fu)
    bump = np.sin(np.pi * across) ** 0.6 * (0.55 + 0.45 * np.sin(np.pi * along) ** 0.5)
    return np.stack([warp_up.astype(np.float32), bump.astype(np.float32)], -1)


def _sample(rng: Rng, x: npt.NDArray[np.floating[Any]], y: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Sample a periodic unit-variance noise grid at arbitrary (x, y) grid coordinates."""
    grid = gaussian(rng, (256, 256))
    x, y = np.broadcast_arrays(x, y)
    return f32(cv2.remap(grid, _wrap(x, 256), _wrap(y, 256), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP))


def _wrap(x: npt.NDArray[np.floating[Any]], n: int) -> FloatArray:
    """x mod n as float32 (remap takes coordinates as 16-bit fixed point, so keep them small)."""
    v = f32(x)
    return f32(v - np.floor(v * np.float32(1.0 / n)) * np.float32(n))


YARNS = [
    ((0.16, 0.24, 0.42), (0.72, 0.7, 0.66)),  # denim: indigo warp, ecru weft (twill only)
    ((0.62, 0.55, 0.42), (0.6, 0.53, 0.4)),  # khaki
    ((0.45, 0.45, 0.46), (0.5, 0.5, 0.5)),  # grey
    ((0.82, 0.8, 0.76), (0.85, 0.83, 0.8)),  # white
    ((0.12, 0.14, 0.22), (0.15, 0.17, 0.26)),  # navy
    ((0.55, 0.12, 0.1), (0.5, 0.1, 0.09)),
]  # red


def _yarns(rng: Rng) -> tuple[FloatArray, FloatArray, int]:
    """Warp and weft colours and the weave period (2: plain, 3 or 4: twill)."""
    k = int(rng.integers(len(YARNS)))
    warp, weft = YARNS[k]
    period = int(rng.choice([3, 4])) if k == 0 else int(rng.choice([2, 3, 4]))
    return colour(rng, warp), colour(rng, weft), period


PAINTS = [
    (0.62, 0.06, 0.06),
    (0.86, 0.86, 0.84),
    (0.5, 0.52, 0.55),
    (0.08, 0.16, 0.38),
    (0.05, 0.05, 0.06),
    (0.9, 0.72, 0.1),
    (0.2, 0.36, 0.22),
    (0.82, 0.78, 0.68),
]


def render_painted_panel(rng: Rng, h: int, w: int) -> Surface:
    """Glossy paint: orange peel, a distorted reflection band, metallic flake, maybe a gap or crease."""
    base = colour(rng, PAINTS[int(rng.integers(len(PAINTS)))], 0.05)
    peel = fbm(rng, h, w, float(rng.uniform(10, 24)), octaves=2)
    height = (peel * rng.uniform(0.06, 0.15)).astype(np.float32)
    # A light tube reflected in the paint; orange peel wobbles it, which is how peel is seen.
    angle = rng.uniform(0, math.pi)
    yy, xx = np.ogrid[:h, :w]
    across = ((xx - w / 2) * math.sin(angle) - (yy - h / 2) * math.cos(angle)).astype(np.float32)
    across = across + 6.0 * peel
    band = np.exp(-(((across - rng.uniform(-0.4, 0.4) * h) / (rng.uniform(0.05, 0.2) * h)) ** 2))
    tone = 1 + rng.uniform(0.08, 0.25) * band + 0.015 * noise(rng, h, w, 1.0)
    if rng.random() < 0.4:  # metallic flake
        tone = tone + 0.25 * smoothstep(2.5, 3.5, noise(rng, h, w, 1.0))
    albedo = (base * tone[..., None]).astype(np.float32)
    primer = colour(rng, (0.62, 0.62, 0.6) if base.mean() < 0.5 else (0.42, 0.43, 0.44))
    s = Surface(albedo, height, np.ones((h, w), bool), Light.random(rng), GLOSS, primer)
    feature = rng.random()
    if feature < 0.3:
        add_edge(rng, s, (0.1, 0.1, 0.11))
    elif feature < 0.55:
        _add_crease(rng, s)
    return s


def _add_crease(rng: Rng, s: Surface) -> None:
    """A styling line pressed into the panel: a sharp change of slope along a straight line."""
    h, w = s.material.shape
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.ogrid[:h, :w]
    dist = ((xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)).astype(np.float32)
    dist -= rng.uniform(-0.3, 0.3) * min(h, w)
    fold = cv2.GaussianBlur(np.abs(np.broadcast_to(dist, (h, w))), (0, 0), 2.5)
    s.height -= (rng.uniform(0.03, 0.07) * fold).astype(np.float32)
    s.material &= np.abs(dist) > 8


def render_pcb(rng: Rng, h: int, w: int) -> Surface:
    """Populated board: solder mask over copper traces, vias, tin or gold pads, chips and ICs
    (drawn in `foveal.plant.pcb`, imported here lazily because it builds on this module)."""
    from foveal.plant.pcb import draw_board

    return draw_board(rng, h, w)


# --- held-out surfaces: never in the training mix or FovealBench -------------------------

WOODS = {
    "oak": (0.62, 0.45, 0.28),
    "maple": (0.8, 0.66, 0.48),
    "walnut": (0.38, 0.25, 0.16),
    "pine": (0.78, 0.6, 0.38),
}
VARNISH = Finish(ambient=0.5, specular=0.1, shininess=30.0, metal=False)


def render_wood(rng: Rng, h: int, w: int) -> Surface:
    """Varnished wood boards: growth rings bent round knots, fine grain and pores along the
    fibre, dark seams between planks. A scratch through the varnish shows pale wood."""
    along_x = bool(rng.random() < 0.5)
    tilt = math.radians(rng.normal(0, 3))
    yy, xx = np.ogrid[:h, :w]
    u, v = (xx, yy) if along_x else (yy, xx)  # u along the fibre, v across it
    across = (v * math.cos(tilt) - u * math.sin(tilt)).astype(np.float32)
    pitch = float(rng.uniform(0.02, 0.06) * span(h, w))  # ring spacing
    phase = across / pitch + 1.5 * noise(rng, h, w, pitch * 8, stretch=1.0)
    for _ in range(int(rng.integers(0, 3) * repeats(h, w))):  # knots pull the rings round them
        kx, ky = rng.uniform(0, w), rng.uniform(0, h)
        r = float(rng.uniform(0.015, 0.04) * span(h, w))
        rx, ry = (r * 2.5, r) if along_x else (r, r * 2.5)  # knots stretch along the fibre
        phase += f32(3.0 * np.exp(-(((xx - kx) / rx) ** 2 + ((yy - ky) / ry) ** 2)))
    frac = phase - np.floor(phase)
    latewood = smoothstep(0.55, 0.85, f32(frac)) * smoothstep(1.0, 0.9, f32(frac))
    layers = [(0.8, float(rng.uniform(40, 120))), (2.0, 30.0)]
    fibre = streaks(rng, h, w, layers, math.degrees(tilt), not along_x)
    pores = smoothstep(2.2, 3.0, -fibre[..., 0])
    base = colour(rng, WOODS[list(WOODS)[int(rng.integers(len(WOODS)))]], 0.08)
    tone = (1 - 0.22 * latewood) * (1 + 0.04 * fibre[..., 1]) * (1 - 0.25 * pores)
    albedo = (base * tone[..., None]).astype(np.float32)
    height = f32(0.05 * fibre[..., 1] - 0.3 * pores + 0.08 * latewood)
    material = np.ones((h, w), bool)
    plank = float(rng.uniform(0.25, 0.5) * span(h, w))
    offset = float(rng.uniform(0, plank))
    seam_at = np.abs(((across + offset) % plank) - plank / 2)  # 0 in the middle of a plank
    seam = f32(seam_at > plank / 2 - 1.5)
    albedo *= (1 - 0.75 * seam)[..., None]
    height -= 1.2 * seam
    material &= seam_at < plank / 2 - 6
    bare = np.clip(base * 1.35 + 0.05, 0, 1).astype(np.float32)
    return Surface(albedo, height, material, Light.random(rng), VARNISH, bare)


GLAZES = [
    (0.9, 0.89, 0.86),  # white
    (0.82, 0.75, 0.62),  # beige
    (0.7, 0.38, 0.24),  # terracotta
    (0.22, 0.38, 0.6),  # blue
    (0.3, 0.32, 0.3),  # anthracite
]


def render_ceramic_tile(rng: Rng, h: int, w: int) -> Surface:
    """Glazed tiles in a grout grid: a mottled glaze with a few faint speckles, rounded tile
    edges, recessed grout. A chip or scratch through the glaze shows the pale body."""
    size = float(rng.uniform(0.18, 0.4) * span(h, w))
    grout = float(rng.uniform(2.5, 6.0))
    angle = math.radians(rng.normal(0, 2))
    yy, xx = np.ogrid[:h, :w]
    u = (xx * math.cos(angle) + yy * math.sin(angle)).astype(np.float32) + float(rng.uniform(0, size))
    v = (yy * math.cos(angle) - xx * math.sin(angle)).astype(np.float32) + float(rng.uniform(0, size))
    edge = np.maximum(np.abs((u % size) - size / 2), np.abs((v % size) - size / 2))
    inner = size / 2 - edge  # distance from the nearest joint's centre line
    in_grout = f32(inner < grout / 2)
    bevel = smoothstep(grout / 2, grout / 2 + 4.0, f32(inner))
    base = colour(rng, GLAZES[int(rng.integers(len(GLAZES)))], 0.05)
    tile_id = (np.floor(u / size) * 7 + np.floor(v / size) * 13).astype(np.int64) % 17
    per_tile = f32(1 + 0.03 * (tile_id / 8.0 - 1.0))  # tiles of one batch differ a little
    mottle = fbm(rng, h, w, float(rng.uniform(30, 90)), octaves=3)
    speckle = smoothstep(3.1, 3.6, noise(rng, h, w, 1.2))
    tone = per_tile * (1 + 0.03 * mottle) * (1 - 0.12 * speckle)
    albedo = (base * tone[..., None]).astype(np.float32)
    joint = colour(rng, (0.55, 0.54, 0.5), 0.1) * f32(1 + 0.08 * noise(rng, h, w, 2.0))[..., None]
    albedo = albedo * (1 - in_grout[..., None]) + joint * in_grout[..., None]
    height = f32(2.0 * bevel + 0.04 * mottle)
    material = inner > grout / 2 + 6
    body = np.array([0.86, 0.82, 0.74], np.float32)
    return Surface(f32(albedo), height, material, Light.random(rng), GLOSS, body)


Renderer = Callable[[Rng, int, int], Surface]
PRODUCTS: dict[str, Renderer] = {
    "brushed_metal": render_brushed_metal,
    "cast_part": render_cast_part,
    "pcb": render_pcb,
    "textile": render_textile,
    "painted_panel": render_painted_panel,
}
# Rendered only when named (`foveal data generate --product wood`): surfaces no model was
# trained on, for measuring the generic prompt and retraining on a new product.
HELD_OUT_PRODUCTS: dict[str, Renderer] = {
    "wood": render_wood,
    "ceramic_tile": render_ceramic_tile,
}
RENDERERS: dict[str, Renderer] = {**PRODUCTS, **HELD_OUT_PRODUCTS}

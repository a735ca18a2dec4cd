"""Camera effects for the plant-data renderer: what happens between the lit part and the file.

`CameraOptions` lists the effects (uneven lighting, lens vignetting, a specular glare blob,
slight blur, shot and read noise, JPEG artefacts); `CameraOptions.random(rng)` draws a typical
plant camera. `prepare()` draws everything random about one exposure once (where the glare
sits, which way the light falls off, the noise seed), so `expose()` turns the clean and the
defective radiance of the same frame into images that differ only by the defect. A
grayscale camera gives three equal channels, so every frame is (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from foveal.plant.dataset import BoxPx
from foveal.plant.surfaces import FloatArray, Rng, f32, gaussian

U8Image = npt.NDArray[np.uint8]


def u8(array: object) -> U8Image:
    """`array` as uint8 without a copy when it already is; also types OpenCV's results."""
    return np.asarray(array, dtype=np.uint8)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, what mono sensors roughly see


@dataclass(frozen=True)
class CameraOptions:
    """Camera effects; zero (or None) turns an effect off."""

    light_gradient: float = 0.0  # relative change of illumination from one side of the frame to the other
    vignetting: float = 0.0  # relative fall-off of brightness in the corners
    glare: float = 0.0  # peak radiance a specular highlight blob adds (1 = full white)
    noise: float = 0.0  # read-noise sigma in 8-bit levels; shot noise grows with it and with brightness
    blur_px: float = 0.0  # Gaussian sigma of lens and motion blur
    jpeg_quality: int | None = None  # encode and decode at this quality

    @staticmethod
    def random(rng: Rng) -> CameraOptions:
        """A typical line camera: some light fall-off and noise, sometimes glare, blur, JPEG."""
        return CameraOptions(
            light_gradient=float(rng.uniform(0.05, 0.35)) if rng.random() < 0.7 else 0.0,
            vignetting=float(rng.uniform(0.05, 0.3)) if rng.random() < 0.6 else 0.0,
            glare=float(rng.uniform(0.15, 0.45)) if rng.random() < 0.3 else 0.0,
            noise=float(rng.uniform(0.8, 3.0)),
            blur_px=float(rng.uniform(0.3, 0.8)) if rng.random() < 0.5 else 0.0,
            jpeg_quality=int(rng.integers(75, 96)) if rng.random() < 0.4 else None,
        )


@dataclass(frozen=True)
class Exposure:
    """Everything random about one exposure, drawn once so clean and defective frames match."""

    options: CameraOptions
    grayscale: bool
    gain: FloatArray  # (H, W) illumination × vignetting, in 8-bit levels per unit radiance
    glare: FloatArray | None  # (H, W) added light, in 8-bit levels
    noise_seed: int


def prepare(
    rng: Rng, options: CameraOptions, shape: tuple[int, int], grayscale: bool, avoid: BoxPx | None = None
) -> Exposure:
    """Draw the light fall-off, the glare blob (kept off `avoid`, the defect) and the noise seed."""
    h, w = shape
    # Light fall-off and glare are smooth: draw them at 1/8 scale and interpolate up.
    sh, sw = max(h // 8, 2), max(w // 8, 2)
    yy, xx = np.ogrid[:sh, :sw]
    xx, yy = (xx + 0.5) * (w / sw), (yy + 0.5) * (h / sh)
    u = ((xx - w / 2) / max(h, w)).astype(np.float32)
    v = ((yy - h / 2) / max(h, w)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    gain = 1.0 + options.light_gradient * (u * math.cos(angle) + v * math.sin(angle))
    corner = (w * w + h * h) / (4 * max(h, w) ** 2)
    gain = gain * (1.0 - options.vignetting * (u * u + v * v) / corner)
    glare = None
    if options.glare > 0:
        gx, gy = _glare_centre(rng, w, h, avoid)
        radius = rng.uniform(0.08, 0.25) * max(h, w)
        aspect = rng.uniform(0.4, 1.0)
        d2 = ((xx - gx) / radius) ** 2 + ((yy - gy) / (radius * aspect)) ** 2
        glare = _upscale(255.0 * options.glare * np.exp(-d2), h, w)
    gain = _upscale(gain * 255.0, h, w)  # radiance 1 is 8-bit white
    return Exposure(options, grayscale, gain, glare, int(rng.integers(2**31)))


def _upscale(field: npt.NDArray[np.floating[Any]], h: int, w: int) -> FloatArray:
    return f32(cv2.resize(f32(field), (w, h), interpolation=cv2.INTER_LINEAR))


def _glare_centre(rng: Rng, w: int, h: int, avoid: BoxPx | None) -> tuple[float, float]:
    """A glare centre at least a quarter of the frame away from the defect, where possible."""
    best = (rng.uniform(0, w), rng.uniform(0, h))
    if avoid is None:
        return best
    ax, ay = (avoid[0] + avoid[2]) / 2, (avoid[1] + avoid[3]) / 2
    for _ in range(20):
        if math.hypot(best[0] - ax, best[1] - ay) > 0.25 * max(h, w) + max(
            avoid[2] - avoid[0], avoid[3] - avoid[1]
        ):
            break
        best = (rng.uniform(0, w), rng.uniform(0, h))
    return best


def sensor_noise(exposure: Exposure, shape: tuple[int, ...]) -> FloatArray:
    """The exposure's unit noise field: the same for every call, so frames pair up exactly."""
    return gaussian(np.random.default_rng(exposure.noise_seed), shape)


def expose(exposure: Exposure, radiance: FloatArray, noise: FloatArray | None = None) -> U8Image:
    """Radiance (H, W, 3) in about [0, 1] to an 8-bit RGB frame, through optics and sensor.
    Pass `noise` (from `sensor_noise`) to reuse one noise field for several frames."""
    h, w = radiance.shape[:2]
    if noise is None and exposure.options.noise > 0:
        noise = sensor_noise(exposure, (h, w) if exposure.grayscale else (h, w, 3))
    return _develop(exposure, radiance, (0, 0, w, h), noise)


def expose_region(
    exposure: Exposure, radiance: FloatArray, base: U8Image, box: BoxPx, noise: FloatArray | None
) -> U8Image:
    """`base` (the frame `expose` made) with only the pixels around `box` developed again from
    `radiance`: what `expose` would give when the radiance changed only inside `box`. The
    redone region is aligned to JPEG's 16 px blocks and developed with a 32 px margin, so
    blur and chroma subsampling see the same neighbours as in the whole frame (the test
    checks the two are byte-identical)."""
    h, w = base.shape[:2]
    reach = math.ceil(3 * exposure.options.blur_px) + 1
    mx0, my0 = max((box[0] - reach) // 16 * 16, 0), max((box[1] - reach) // 16 * 16, 0)
    mx1, my1 = min(-(-(box[2] + reach) // 16) * 16, w), min(-(-(box[3] + reach) // 16) * 16, h)
    cx0, cy0, cx1, cy1 = max(mx0 - 32, 0), max(my0 - 32, 0), min(mx1 + 32, w), min(my1 + 32, h)
    part = _develop(
        exposure,
        radiance[cy0:cy1, cx0:cx1],
        (cx0, cy0, cx1, cy1),
        None if noise is None else noise[cy0:cy1, cx0:cx1],
    )
    # Decoding upsamples chroma from neighbouring blocks, so the blocks' rims change too.
    px0, py0, px1, py1 = max(mx0 - 8, 0), max(my0 - 8, 0), min(mx1 + 8, w), min(my1 + 8, h)
    out = base.copy()
    out[py0:py1, px0:px1] = part[py0 - cy0 : py1 - cy0, px0 - cx0 : px1 - cx0]
    return out


def _develop(exposure: Exposure, radiance: FloatArray, crop: BoxPx, noise: FloatArray | None) -> U8Image:
    """Optics, tone curve, sensor noise, quantisation and JPEG for the part `crop` of a frame."""
    x0, y0, x1, y1 = crop
    opts = exposure.options
    img = radiance * exposure.gain[y0:y1, x0:x1, None]  # in 8-bit levels from here on
    if exposure.glare is not None:
        img += exposure.glare[y0:y1, x0:x1, None]
    if opts.blur_px > 0:
        img = f32(cv2.GaussianBlur(img, (0, 0), opts.blur_px))
    knee = 0.85 * 255.0
    bright = img > knee  # highlights roll off instead of clipping hard, like a sensor's tone curve
    if bright.any():
        over = img[bright] - knee
        img[bright] = knee + over / (1.0 + over / (255.0 - knee))
    if exposure.grayscale:
        img = f32(cv2.transform(img, LUMA[None, :]))
    if noise is not None:
        # Shot noise grows with the signal: look its sigma up from the quantised level.
        sigma = f32(cv2.LUT(cv2.convertScaleAbs(img), _noise_sigma(opts.noise)))
        sigma *= noise
        img += sigma
    np.maximum(img, 0.0, out=img)
    out = u8(cv2.convertScaleAbs(img))  # rounds and saturates at 255
    if opts.jpeg_quality is not None:
        out = _jpeg(out, opts.jpeg_quality)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out)


def _noise_sigma(level: float) -> FloatArray:
    """Sensor noise sigma per 8-bit level: read noise plus shot noise."""
    read = level * 0.6
    return f32(np.sqrt(read * read + 1.5 * level * level * np.arange(256) / 255.0))


def _jpeg(image: U8Image, quality: int) -> U8Image:
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return image
    out = u8(cv2.imdecode(data, cv2.IMREAD_UNCHANGED))
    return out if out.ndim == 2 else u8(cv2.cvtColor(out, cv2.COLOR_BGR2RGB))

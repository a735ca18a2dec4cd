"""The printed-circuit-board product for the plant-data renderer, drawn with OpenCV primitives.

A board is a solder mask over copper traces (buses of parallel traces with 45° jogs, ending
in tented vias), tin or gold pads, chip resistors and capacitors, SOIC packages with gull-wing
leads, soft shadows and white silkscreen with reference designators. Placement keeps
footprints apart on a 1 mm grid. `foveal.plant.surfaces.render_pcb` calls `draw_board`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from foveal.plant.surfaces import GLOSS, FloatArray, Light, Rng, Surface, blur_wide, colour, noise, span

MASKS = [(0.1, 0.36, 0.2), (0.08, 0.3, 0.16), (0.16, 0.42, 0.22), (0.06, 0.16, 0.4), (0.06, 0.07, 0.07)]
PAD_FINISH = [(0.78, 0.78, 0.76), (0.86, 0.68, 0.34)]  # tin (HASL), gold (ENIG)
# Footprints in mm: body (length, width), body colour, lead layout.
CHIPS = [(1.0, 0.5), (1.6, 0.8), (2.0, 1.25), (3.2, 1.6)]


def draw_board(rng: Rng, h: int, w: int) -> Surface:
    """Populated board: solder mask over copper traces, vias, tin or gold pads, chips and ICs."""
    mm = span(h, w) / rng.uniform(25, 55)  # pixels per millimetre
    mask_colour = colour(rng, MASKS[int(rng.choice(len(MASKS), p=[0.45, 0.2, 0.15, 0.12, 0.08]))])
    copper = np.zeros((h, w), np.uint8)
    _draw_traces(rng, copper, mm)
    cu = copper.astype(np.float32) / 255.0
    weave = (
        0.03
        * np.sin(np.arange(w, dtype=np.float32) * (2 * np.pi / (0.55 * mm)))[None, :]
        * np.sin(np.arange(h, dtype=np.float32) * (2 * np.pi / (0.55 * mm)))[:, None]
    )
    tone = 1 + weave + 0.025 * noise(rng, h, w, 2.0)
    over_cu = np.clip(mask_colour * np.array([1.45, 1.3, 0.9], np.float32), 0, 1)
    albedo = (mask_colour * (1 - cu[..., None]) + over_cu * cu[..., None]) * tone[..., None]
    height = cu * (0.035 * mm) + 0.15 * noise(rng, h, w, 6.0)
    laminate = np.array([0.78, 0.72, 0.5], np.float32)  # FR-4 under a scratched solder mask
    s = Surface(
        albedo.astype(np.float32),
        height.astype(np.float32),
        np.ones((h, w), bool),
        Light.random(rng),
        GLOSS,
        laminate,
    )
    board = _Board(s, mm, PAD_FINISH[int(rng.random() < 0.3)], over_cu)
    for _ in range(int(h * w / (mm * mm) / 6)):
        board.place(rng)
    board.finish(rng)
    return s


def _draw_traces(rng: Rng, copper: npt.NDArray[np.uint8], mm: float) -> None:
    """Buses of parallel traces with 45° jogs, ending in vias, the way routers lay them out."""
    h, w = copper.shape
    for _ in range(int(rng.integers(6, 16))):
        count, pitch = int(rng.integers(1, 8)), rng.uniform(0.35, 0.7) * mm
        width = max(1, round(rng.uniform(0.12, 0.3) * mm))
        heading = int(rng.integers(8)) * 2  # in steps of 22.5°, so 45° multiples
        pts = [np.array([rng.uniform(0, w), rng.uniform(0, h)])]
        for _leg in range(int(rng.integers(2, 5))):
            heading = (heading + int(rng.choice([-2, 0, 2]))) % 16
            step = np.array([math.cos(heading * math.pi / 8), math.sin(heading * math.pi / 8)])
            pts.append(pts[-1] + step * rng.uniform(4, 20) * mm)
        path = np.array(pts)
        normals = _miter_normals(path)
        for k in range(count):
            line = path + normals * (k - count / 2) * pitch
            cv2.polylines(
                copper, [np.round(line * 16).astype(np.int32)], False, (255,), width, cv2.LINE_AA, 4
            )
            for end in (line[0], line[-1]):
                if rng.random() < 0.5:
                    cv2.circle(copper, (int(end[0]), int(end[1])), int(0.3 * mm), (255,), -1, cv2.LINE_AA)


def _miter_normals(path: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    seg = np.diff(path, axis=0)
    seg /= np.linalg.norm(seg, axis=1, keepdims=True)
    seg_n = np.stack([-seg[:, 1], seg[:, 0]], 1)
    normals = np.vstack([seg_n[:1], seg_n[:-1] + seg_n[1:], seg_n[-1:]])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cos_half = np.einsum("ij,ij->i", normals, np.vstack([seg_n[:1], seg_n]))
    return np.asarray(normals / np.maximum(cos_half, 0.3)[:, None], np.float64)


class _Board:
    """Places footprints without overlap and draws pads, bodies, shadows and silkscreen."""

    def __init__(self, s: Surface, mm: float, pad: tuple[float, float, float], over_cu: FloatArray) -> None:
        self.s, self.mm, self.pad, self.over_cu = s, mm, pad, over_cu
        h, w = s.material.shape
        self.taken = np.zeros((int(h / mm) + 2, int(w / mm) + 2), bool)  # 1 mm cells
        self.shadow = np.zeros((h, w), np.float32)
        self.keep_out = np.zeros((h, w), np.uint8)
        self.vias: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []

    def place(self, rng: Rng) -> None:
        kind = rng.random()
        if kind < 0.7:
            length, width = CHIPS[int(rng.integers(len(CHIPS)))]
            body = (0.07, 0.07, 0.07) if rng.random() < 0.5 else (0.55, 0.45, 0.32)
            size, leads = (length + 0.8, width + 0.2), "chip"
        else:
            n_side = int(rng.choice([4, 7, 8, 11]))
            length, width = n_side * 1.27 * (0.63 if n_side > 8 else 1.0), 3.9 if n_side < 9 else n_side * 0.8
            body, size, leads = (0.09, 0.09, 0.1), (length + 0.6, width + 2.4), "ic"
        vertical = rng.random() < 0.5
        if vertical:
            length, width, size = width, length, (size[1], size[0])
        cx, cy = rng.uniform(0, self.taken.shape[1] - 1), rng.uniform(0, self.taken.shape[0] - 1)
        cells = (
            slice(max(int(cy - size[1] / 2) - 1, 0), int(cy + size[1] / 2) + 2),
            slice(max(int(cx - size[0] / 2) - 1, 0), int(cx + size[0] / 2) + 2),
        )
        if self.taken[cells].any():
            return
        self.taken[cells] = True
        self._draw(rng, cx * self.mm, cy * self.mm, length, width, body, leads, vertical)

    def _draw(
        self,
        rng: Rng,
        x: float,
        y: float,
        length: float,
        width: float,
        body: tuple[float, float, float],
        leads: str,
        vertical: bool,
    ) -> None:
        if leads == "chip":
            along, across = (width, length) if vertical else (length, width)
            for side in (-1, 1):
                end = side * (along / 2)
                self._part(x, y, end + side * 0.1, 0.0, 0.4, across / 2 + 0.15, self.pad, 0.05, vertical)
                self._part(x, y, end - side * 0.15, 0.0, 0.15, across / 2, (0.8, 0.8, 0.79), 0.45, vertical)
                if rng.random() < 0.6:
                    self._stub(rng, x, y, end + side * 0.5, side, vertical)
            self._part(x, y, 0.0, 0.0, along / 2 - 0.3, across / 2, body, 0.5, vertical)
            name = f"{'RC'[int(body[0] > 0.3)]}{int(rng.integers(1, 99))}"
        else:
            self._ic(x, y, length, width, vertical)
            name = f"U{int(rng.integers(1, 20))}"
        self._silk(rng, x, y, length / 2 + 0.5, width / 2 + 0.5, name)

    def _part(
        self,
        x: float,
        y: float,
        off_along: float,
        off_across: float,
        half_along: float,
        half_across: float,
        rgb: tuple[float, float, float],
        height_mm: float,
        vertical: bool,
    ) -> None:
        """A rectangle given along/across the footprint's axis, which is y when vertical."""
        mm = self.mm
        if vertical:
            self._rect(x + off_across * mm, y + off_along * mm, half_across, half_along, rgb, height_mm)
        else:
            self._rect(x + off_along * mm, y + off_across * mm, half_along, half_across, rgb, height_mm)

    def _stub(self, rng: Rng, x: float, y: float, off_along: float, side: int, vertical: bool) -> None:
        """A short trace from a pad to a via, under the mask."""
        mm, length = self.mm, rng.uniform(0.8, 3.0)
        start = (
            np.array([x, y]) + (np.array([0.0, off_along]) if vertical else np.array([off_along, 0.0])) * mm
        )
        step = (np.array([0.0, side]) if vertical else np.array([side, 0.0])) * length * mm
        self.vias.append((start, start + step))

    def _ic(self, x: float, y: float, length: float, width: float, vertical: bool) -> None:
        """SOIC-style package: gull-wing leads on the two long sides, a pin-1 dimple."""
        n = max(int((length if not vertical else width) / 1.27), 2)
        pitch = (length if not vertical else width) / n
        for k in range(n):
            off = (k - (n - 1) / 2) * pitch
            for side in (-1, 1):
                rx = x + (off * self.mm if not vertical else side * (width / 2 + 0.6) * self.mm)
                ry = y + (side * (width / 2 + 0.6) * self.mm if not vertical else off * self.mm)
                half = (0.25, 0.9) if not vertical else (0.9, 0.25)
                self._rect(rx, ry, half[0] + 0.05, half[1] + 0.1, self.pad, 0.05)
                self._rect(rx, ry, *half, (0.82, 0.82, 0.82), 0.3)
        self._rect(x, y, length / 2, width / 2, (0.09, 0.09, 0.1), 1.2)
        if not vertical:
            scale = 0.6 * self.mm / 22.0
            cv2.putText(
                self.s.albedo,
                "74HC" + str(int(x) % 90 + 10),
                (int(x - length / 3 * self.mm), int(y + 0.3 * self.mm)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (0.3, 0.3, 0.3),
                max(1, round(0.08 * self.mm)),
                cv2.LINE_AA,
            )
        dot_x, dot_y = x - (length / 2 - 0.6) * self.mm, y + (width / 2 - 0.6) * self.mm
        cv2.circle(
            self.s.albedo,
            (int(dot_x), int(dot_y)),
            max(int(0.25 * self.mm), 1),
            (0.05, 0.05, 0.05),
            -1,
            cv2.LINE_AA,
        )

    def _rect(
        self,
        cx: float,
        cy: float,
        half_w_mm: float,
        half_h_mm: float,
        rgb: tuple[float, float, float],
        height_mm: float,
    ) -> None:
        mm = self.mm
        p1 = (int(cx - half_w_mm * mm), int(cy - half_h_mm * mm))
        p2 = (int(cx + half_w_mm * mm), int(cy + half_h_mm * mm))
        cv2.rectangle(self.s.albedo, p1, p2, rgb, -1)
        cv2.rectangle(self.s.height, p1, p2, (height_mm * mm,), -1)
        cv2.rectangle(self.keep_out, p1, p2, 255, -1)
        if height_mm > 0.2:  # raised bodies cast a soft shadow away from the light
            light = self.s.light
            dx, dy = -light.x / light.z * height_mm * mm, -light.y / light.z * height_mm * mm
            cv2.rectangle(
                self.shadow,
                (int(p1[0] + dx), int(p1[1] + dy)),
                (int(p2[0] + dx), int(p2[1] + dy)),
                (1.0,),
                -1,
            )

    def _silk(self, rng: Rng, x: float, y: float, half_w_mm: float, half_h_mm: float, name: str) -> None:
        """Silkscreen: the courtyard outline and the reference designator next to it."""
        mm, white = self.mm, (0.86, 0.87, 0.84)
        thick = max(1, round(0.12 * mm))
        cv2.rectangle(
            self.s.albedo,
            (int(x - half_w_mm * mm), int(y - half_h_mm * mm)),
            (int(x + half_w_mm * mm), int(y + half_h_mm * mm)),
            white,
            thick,
            cv2.LINE_AA,
        )
        scale = 0.8 * mm / 22.0  # Hershey simplex capitals are about 22 px tall at scale 1
        org = (int(x + (half_w_mm + 0.3) * mm), int(y - (half_h_mm - 0.8) * mm))
        cv2.putText(self.s.albedo, name, org, cv2.FONT_HERSHEY_SIMPLEX, scale, white, thick, cv2.LINE_AA)

    def finish(self, rng: Rng) -> None:
        s, mm = self.s, self.mm
        for start, end in self.vias:  # pad stubs: copper under the mask, a tented via at the end
            a, b = (int(start[0]), int(start[1])), (int(end[0]), int(end[1]))
            cv2.line(
                s.albedo, a, b, tuple(float(c) for c in self.over_cu), max(1, round(0.2 * mm)), cv2.LINE_AA
            )
            cv2.circle(s.albedo, b, int(0.3 * mm), tuple(float(c) for c in self.over_cu), -1, cv2.LINE_AA)
            cv2.circle(s.albedo, b, max(int(0.13 * mm), 1), (0.1, 0.12, 0.1), -1, cv2.LINE_AA)
            cv2.circle(s.height, b, int(0.3 * mm), (0.04 * mm,), -1)
            cv2.circle(self.keep_out, b, int(0.3 * mm), (255,), -1)
        soft = blur_wide(self.shadow, 0.3 * self.mm)
        body = self.keep_out > 0
        s.albedo *= (1 - 0.45 * soft * ~body)[..., None]
        s.height[:] = cv2.GaussianBlur(s.height, (0, 0), 1.2)
        s.albedo[:] = cv2.GaussianBlur(s.albedo, (0, 0), 0.6)
        keep = cv2.dilate(self.keep_out, np.ones((5, 5), np.uint8))
        s.material &= keep == 0

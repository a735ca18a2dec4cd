"""What can the vision tower see? Its cell head run on FovealBench frames at several scales, a
diagnostic for where the quality bars are lost (tiny defects) and for any new backbone.

Two measurements on the first N single images of a bench:
- frame scan: the whole frame resized to `scale` of its original size (1.0 = every original
  pixel; the 448 px whole view the model is shown is about 0.3 of a 1,500 px frame), the cell
  head on it, the highest cell's P(defect) as the frame's score: AUROC of defective against good
  frames per difficulty, the false-reject rate at <= 1 % escape, how often that highest cell's
  look (0.32 of the frame around it) holds the defect's centre, and the tower's time;
- native windows: 224 px windows of the original pixels (two holding the defect, two anywhere,
  per frame; fixed seed): AUROC of windows holding a defect against the others, per difficulty,
  and the share of defect cells whose type the cell head names right. No crop budget stands
  between a defect and the head here, so this is the tower's own ceiling.

It also writes a sheet of tiny defects (112 px of original pixels around each, 3x, nearest
neighbour) to `--sheet`: what "tiny" means to the eye. Prints tables; the last line is one
JSON object with the figures, also written to `--out`. About 4 min for 300 images on two cores.

Run: `.venv/bin/python bench/tower_sight.py --bench /work/data/fbench/test --n 300`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.domain import DEFECT_TYPES
from foveal.evaluation.inference import read_rgb
from foveal.model import loader
from foveal.model.pixels import normalized
from foveal.plant.dataset import Label, read_labels
from foveal.reasoning.pointer import CellPointer
from foveal.training.pretrain import auroc

DIFFICULTIES = ("easy", "hard", "tiny")
WINDOW = 224


def by_difficulty(scores: npt.NDArray[np.float64], defect: npt.NDArray[np.bool_],
                  difficulty: npt.NDArray[np.str_]) -> dict[str, float | None]:
    """AUROC of each difficulty's defects (and all of them) against every negative."""
    out: dict[str, float | None] = {}
    for d in (*DIFFICULTIES, "all"):
        chosen = ~defect | (defect & ((difficulty == d) if d != "all" else True))
        out[d] = auroc(scores[chosen], defect[chosen])
    return out


def scan(ptr: CellPointer, spec: object, labels: list[Label], folder: Path, scales: list[float]
         ) -> dict[str, dict[str, object]]:
    defect = np.array([lb.defect_type not in (None, "none") for lb in labels])
    difficulty = np.array([lb.difficulty or "none" for lb in labels])
    peaks = {s: np.zeros(len(labels)) for s in scales}
    hits: dict[float, list[bool]] = {s: [] for s in scales}
    hit_difficulty: list[str] = []
    ms: dict[float, list[float]] = {s: [] for s in scales}
    for i, lb in enumerate(labels):
        frame = read_rgb(folder / str(lb.image))
        h, w = frame.shape[:2]
        for s in scales:
            began = time.perf_counter()
            size = (max(56, round(w * s / 56) * 56), max(56, round(h * s / 56) * 56))
            image = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            pixels = torch.from_numpy(normalized(image, spec)).to(ptr.tower.dtype)  # type: ignore[arg-type]
            cells = ptr._cell_maps([pixels])[0]
            ms[s].append((time.perf_counter() - began) * 1000)
            peaks[s][i] = float(cells.max())
            if lb.bbox is not None:
                at = int(cells.flatten().argmax())
                r, c = at // cells.shape[1], at % cells.shape[1]
                x1, y1, x2, y2 = lb.bbox
                hits[s].append(abs((c + 0.5) / cells.shape[1] - (x1 + x2) / 2) < 0.16
                               and abs((r + 0.5) / cells.shape[0] - (y1 + y2) / 2) < 0.16)
        if lb.bbox is not None:
            hit_difficulty.append(lb.difficulty or "none")
        if i % 50 == 0:
            print(f"  scan {i}/{len(labels)}", flush=True)
    out: dict[str, dict[str, object]] = {}
    for s in scales:
        threshold = np.quantile(peaks[s][defect], 0.01)
        held = np.array(hits[s])
        where = np.array(hit_difficulty)
        out[str(s)] = dict(auroc=by_difficulty(peaks[s], defect, difficulty),
                           false_reject_at_escape=float(np.mean(peaks[s][~defect] >= threshold)),
                           peak_holds={d: float(held[where == d].mean()) for d in DIFFICULTIES},
                           ms_p50=float(np.median(ms[s])))
    return out


def native_windows(labels: list[Label], folder: Path) -> Iterator[
        tuple[Label, npt.NDArray[np.uint8], npt.NDArray[np.bool_] | None, int, int, int]]:
    """Per frame, two `WINDOW` px windows of original pixels holding its defect (when it has one)
    and two anywhere, from a fixed seed: (label, frame, mask, defect type index, y0, x0). The
    window protocol of this bench and of bench/fine_sight.py."""
    rng = random.Random(2)
    for lb in labels:
        frame = read_rgb(folder / str(lb.image))
        mask = read_rgb(folder / lb.mask)[:, :, 0] > 0 if lb.mask else None
        h, w = frame.shape[:2]
        kind = DEFECT_TYPES.index(lb.defect_type) if lb.defect_type in DEFECT_TYPES else 0
        spots = []
        if mask is not None and mask.any():
            ys, xs_ = np.nonzero(mask)
            cy, cx = int(ys.mean()), int(xs_.mean())
            spots += [(min(max(0, cy - rng.randint(8, WINDOW - 8)), h - WINDOW),
                       min(max(0, cx - rng.randint(8, WINDOW - 8)), w - WINDOW)) for _ in range(2)]
        spots += [(rng.randint(0, h - WINDOW), rng.randint(0, w - WINDOW)) for _ in range(2)]
        for y0, x0 in spots:
            yield lb, frame, mask, kind, y0, x0


def windows(ptr: CellPointer, spec: object, labels: list[Label], folder: Path) -> dict[str, object]:
    cell = ptr.tower.cell_px
    xs, targets, difficulty = [], [], []
    for lb, frame, mask, kind, y0, x0 in native_windows(labels, folder):
        target = np.zeros((WINDOW // cell, WINDOW // cell), np.int64)
        if mask is not None:
            part = mask[y0:y0 + WINDOW, x0:x0 + WINDOW].astype(np.float32)
            touched = cv2.resize(part, target.shape[::-1], interpolation=cv2.INTER_AREA) > 0
            target = np.where(touched, kind, 0)
        xs.append(normalized(frame[y0:y0 + WINDOW, x0:x0 + WINDOW], spec))  # type: ignore[arg-type]
        targets.append(target)
        difficulty.append(lb.difficulty or "none")
    tower = ptr.tower
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(tower.head(tower.backbone(torch.from_numpy(np.stack(xs[i:i + 64]))
                                                                   .to(tower.dtype))).float(), 1)
                           for i in range(0, len(xs), 64)])
    y = torch.from_numpy(np.stack(targets))
    holds = (y > 0).flatten(1).any(1).numpy()
    score = (1 - probs[:, 0]).flatten(1).amax(1).numpy()
    named = probs[:, 1:].argmax(1) + 1
    where = np.array(difficulty)
    type_right = {}
    for d in DIFFICULTIES:
        chosen = torch.from_numpy(where == d)[:, None, None] & (y > 0)
        type_right[d] = float((named[chosen] == y[chosen]).float().mean()) if bool(chosen.any()) else None
    return dict(windows=len(xs), auroc=by_difficulty(score, holds, where), defect_cells_type_right=type_right)


def sheet(labels: list[Label], folder: Path, out: Path, n: int = 8) -> None:
    tiles = []
    for lb in [lb for lb in labels if lb.difficulty == "tiny" and lb.bbox_px][:n]:
        frame = read_rgb(folder / str(lb.image))
        x1, y1, x2, y2 = lb.bbox_px  # type: ignore[misc]
        h, w = frame.shape[:2]
        top = min(max(0, (y1 + y2) // 2 - 56), h - 112)
        left = min(max(0, (x1 + x2) // 2 - 56), w - 112)
        tile = cv2.resize(frame[top:top + 112, left:left + 112], (336, 336), interpolation=cv2.INTER_NEAREST)
        cv2.putText(tile, f"{lb.defect_type}, {lb.product}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 64, 64), 1, cv2.LINE_AA)
        tiles.append(tile)
    if len(tiles) < n:
        return
    grid = np.vstack([np.hstack(tiles[: n // 2]), np.hstack(tiles[n // 2:])])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--scales", default="0.35,0.5,0.75,1.0")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tower_sight.json")
    parser.add_argument("--sheet", type=Path, default=Path("docs/images/tiny-defects.jpg"))
    args = parser.parse_args()
    vlm = loader.load(args.model)
    ptr = CellPointer(vlm)
    labels = [lb for lb in read_labels(args.bench) if not lb.is_sequence and lb.image][: args.n]
    spec = vlm.chat.spec
    scales = [float(s) for s in args.scales.split(",")]
    frames = scan(ptr, spec, labels, args.bench, scales)
    native = windows(ptr, spec, labels, args.bench)
    sheet(labels, args.bench, args.sheet)

    def joined(values: dict[str, float | None], keys: tuple[str, ...], digits: int = 3) -> str:
        return " / ".join("-" if values[k] is None else f"{values[k]:.{digits}f}" for k in keys)

    every = (*DIFFICULTIES, "all")
    print(f"\nframe scan, {len(labels)} images: AUROC easy / hard / tiny / all, "
          "false reject at <= 1 % escape, peak look holds the defect (easy / hard / tiny), tower ms")
    for s, row in frames.items():
        print(f"  scale {s:<5} {joined(row['auroc'], every)}   {row['false_reject_at_escape']:.3f}   "  # type: ignore[arg-type]
              f"{joined(row['peak_holds'], DIFFICULTIES, 2)}   {row['ms_p50']:.0f}")  # type: ignore[arg-type]
    print(f"native windows ({native['windows']}): AUROC {joined(native['auroc'], every)}; "  # type: ignore[arg-type]
          f"defect cells' type right {joined(native['defect_cells_type_right'], DIFFICULTIES)}")  # type: ignore[arg-type]
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    line = json.dumps(dict(benchmark="tower_sight", model=str(args.model), n=len(labels), frame_scan=frames,
                           native_windows=native, commit=git_commit(), machine=machine))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

"""Stage 0: pre-train the compact model's convolutional vision backbone on the renderer's labels.

Pixel Reasoner starts from a pretrained Qwen2.5-VL; nothing pretrained is reachable here, so the
backbone first learns to see: every cell of a view (one token's cell: 28 or 56 px; the whole
frame at the pixel budget, a wide crop holding the defect, zooms on the labelled defect, a zoom
somewhere else) is classified as `none` or the defect type whose mask it touches. That teaches
*where* (whole and wide views) and *what* (zooms); SFT then teaches the protocol with the
backbone frozen. Views are cut with the same operations code inference uses, so the pixels
match what the model will see. When the tower has a cell head (`cell_classes`) stage 0 trains
that head, which then stays in the model and feeds the merger.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from foveal.domain import DEFECT_TYPES
from foveal.model.loader import VLM
from foveal.model.pixels import CLIP_MEAN, CLIP_STD
from foveal.model.vision import CellHead, ConvVisionTower
from foveal.operations import CROP, ImageBudget, View, Workspace, execute, look_box
from foveal.plant.dataset import Label, defect_mask, load_image
from foveal.training.trajectories import crop_box, tool_call

FACTOR = 28  # Qwen2.5-VL's cell; a model's own is `tower.cell_px` / `budget.factor`


@dataclass
class VisionSample:
    view: npt.NDArray[np.uint8]  # (h, w, 3) as the model sees it
    target: npt.NDArray[np.int64]  # (h/cell, w/cell) class index per cell, 0 = none
    kind: str  # "whole", "wide" (a crop holding the defect), "zoom" (on the defect), "other"
    difficulty: str = ""


@dataclass
class PretrainReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    cell_auroc: float | None = None
    localisation: float | None = None  # whole views: the top cell touches the defect
    zoom_type_accuracy: float | None = None  # zooms on the defect: the type named by the cells
    localisation_by_difficulty: dict[str, float] = field(default_factory=dict)
    view_type_accuracy: float | None = None  # whole views: the view head names the type (none too)


def cell_targets(mask: npt.NDArray[np.bool_] | None, view: View, type_index: int,
                 cell: int = FACTOR) -> npt.NDArray[np.int64]:
    """Class per `cell` px cell of `view`: `type_index` where the cell's region of the original
    frame holds a defect pixel, else 0."""
    rows, cols = view.pixels.shape[0] // cell, view.pixels.shape[1] // cell
    if mask is None or type_index == 0:
        return np.zeros((rows, cols), dtype=np.int64)
    left, top, right, bottom = view.region
    region = mask[top:bottom, left:right].astype(np.float32)
    touched = cv2.resize(region, (cols, rows), interpolation=cv2.INTER_AREA) > 0
    return np.where(touched, type_index, 0).astype(np.int64)


Box4 = tuple[float, float, float, float]


def jittered_box(box: Box4, rng: random.Random) -> Box4:
    """A zoom box holding `box` at a random scale (side 0.05-0.35 of the frame) and offset: the
    same defect seen through many crops, the variety a few thousand frames otherwise lack."""
    x1, y1, x2, y2 = box
    side_x = max(x2 - x1, rng.uniform(0.05, 0.35))
    side_y = max(y2 - y1, rng.uniform(0.05, 0.35))
    left = rng.uniform(max(0.0, x2 - side_x), min(x1, 1.0 - side_x))
    top = rng.uniform(max(0.0, y2 - side_y), min(y1, 1.0 - side_y))
    right, bottom = min(1.0, left + side_x), min(1.0, top + side_y)
    return (round(left, 3), round(top, 3), round(right, 3), round(bottom, 3))


def wide_box(box: Box4, rng: random.Random) -> Box4:
    """A large crop (side 0.4-0.8 of the frame) holding `box`: the defect at a scale between
    the whole view and a zoom, on a different background window each time."""
    x1, y1, x2, y2 = box
    side_x, side_y = max(x2 - x1, rng.uniform(0.4, 0.8)), max(y2 - y1, rng.uniform(0.4, 0.8))
    left = rng.uniform(max(0.0, x2 - side_x), max(0.0, min(x1, 1.0 - side_x)))
    top = rng.uniform(max(0.0, y2 - side_y), max(0.0, min(y1, 1.0 - side_y)))
    right, bottom = min(1.0, left + side_x), min(1.0, top + side_y)
    return (round(left, 3), round(top, 3), round(right, 3), round(bottom, 3))


def samples_for(label: Label, folder: Path, rng: random.Random, budget: ImageBudget = ImageBudget(),
                zooms: int = 4, wide: int = 0, others: int = 1) -> list[VisionSample]:
    """The whole view, `wide` large crops holding the defect, `zooms` jittered zooms on it
    (defective items; the first is the trajectories' crop) and `others` zooms anywhere. Cells
    are the budget's factor (one token each)."""
    if label.image is None:
        return []
    cell = budget.factor
    frame = load_image(folder, label.image)
    mask = defect_mask(folder, label, frame.shape[:2])
    type_index = DEFECT_TYPES.index(label.defect_type) if label.defect_type in DEFECT_TYPES else 0
    difficulty = label.difficulty or "none"
    ws = Workspace([frame], budget)
    out = [VisionSample(ws.views[0].pixels, cell_targets(mask, ws.views[0], type_index, cell), "whole",
                        difficulty)]
    boxes: list[tuple[str, tuple[float, float, float, float]]] = []
    if label.bbox is not None:
        boxes += [("wide", wide_box(label.bbox, rng)) for _ in range(wide)]
        boxes.append(("zoom", crop_box(label.bbox)))
        boxes += [("zoom", jittered_box(label.bbox, rng)) for _ in range(zooms - 1)]
    else:
        boxes += [("wide", wide_box((0.5, 0.5, 0.5, 0.5), rng)) for _ in range(wide)]
    for _ in range(others):
        side = rng.uniform(0.08, 0.3)
        x, y = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
        boxes.append(("other", (round(x, 2), round(y, 2), round(x + side, 2), round(y + side, 2))))
    for kind, box in boxes:
        result = execute(tool_call(CROP, {"bbox_2d": list(box), "target_image": 1}), ws)
        if result.ok:
            view = result.views[0]
            target = cell_targets(mask, view, type_index, cell)
            out.append(VisionSample(view.pixels, target, kind, difficulty))
    return out


def _window(sample: VisionSample, side: int, rng: random.Random, cell: int = FACTOR
            ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """A random side x side window of the view on the cell grid (views smaller than that are padded)."""
    h, w = sample.view.shape[:2]
    cells = side // cell
    view = np.zeros((side, side, 3), dtype=np.uint8)
    target = np.full((cells, cells), -100, dtype=np.int64)
    r0 = rng.randint(0, max(0, h // cell - cells))
    c0 = rng.randint(0, max(0, w // cell - cells))
    part = sample.view[r0 * cell: (r0 + cells) * cell, c0 * cell: (c0 + cells) * cell]
    view[: part.shape[0], : part.shape[1]] = part
    t = sample.target[r0: r0 + cells, c0: c0 + cells]
    target[: t.shape[0], : t.shape[1]] = t
    return _augment(view, target, rng)


def _augment(view: npt.NDArray[np.uint8], target: npt.NDArray[np.int64], rng: random.Random
             ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Flips, quarter turns (cells move with the pixels), a brightness/contrast change per
    colour channel and, half the time, a little sensor noise."""
    turns = rng.randrange(4)
    view, target = np.rot90(view, turns), np.rot90(target, turns)
    if rng.random() < 0.5:
        view, target = view[:, ::-1], target[:, ::-1]
    gain = rng.uniform(0.8, 1.2) * np.array([rng.uniform(0.92, 1.08) for _ in range(3)], np.float32)
    offset = rng.uniform(-20, 20)
    jittered = view.astype(np.float32) * gain + offset
    if rng.random() < 0.5:
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, rng.uniform(1.0, 4.0), view.shape)
        jittered += noise.astype(np.float32)
    jittered = np.clip(jittered, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(jittered), np.ascontiguousarray(target)


def _pixels(tower: ConvVisionTower, views: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    """(B, 3, H, W) normalized images, the same normalization as the patches the tower reads."""
    spec_mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    spec_std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 255.0
    return ((x - spec_mean) / spec_std).to(tower.dtype)


def pretrain(vlm: VLM, samples: Sequence[VisionSample], held_out: Sequence[VisionSample], *, steps: int,
             batch_size: int = 16, lr: float = 3e-3, side: int = 336, defect_weight: float = 5.0,
             defect_share: float = 0.5, view_weight: float = 0.5, seed: int = 0,
             on_step: Callable[[int, float], None] | None = None) -> PretrainReport:
    """Train the backbone (stem and blocks) of `vlm`'s tower in place; report held-out quality."""
    tower = vlm.model.model.visual
    assert isinstance(tower, ConvVisionTower)
    head = tower.head or CellHead(tower.feature_dim, len(DEFECT_TYPES))  # a tower without one: thrown away
    params = list({id(p): p for p in [*tower.backbone_parameters(), *head.parameters()]}.values())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1),
                                                   pct_start=0.1)
    weights = torch.tensor([1.0] + [defect_weight] * (len(DEFECT_TYPES) - 1))
    rng = random.Random(seed)
    defective = [s for s in samples if bool(s.target.any())] or list(samples)
    report = PretrainReport(steps=steps, seconds=0.0)
    started = time.perf_counter()
    tower.train()
    for step in range(steps):
        batch = [_window(rng.choice(defective if rng.random() < defect_share else samples), side, rng,
                         tower.cell_px) for _ in range(batch_size)]
        x = _pixels(tower, [b[0] for b in batch])
        y = torch.from_numpy(np.stack([b[1] for b in batch]))  # (B, cells, cells)
        maps = tower.backbone(x)  # (B, C, cells, cells)
        loss = nn.functional.cross_entropy(head(maps), y, weight=weights, ignore_index=-100)
        y_view = y.clamp(min=0).flatten(1).amax(1)  # (B,) the view's type: one defect per frame
        loss = loss + view_weight * nn.functional.cross_entropy(head.whole(maps), y_view)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        report.losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, report.losses[-1])
    tower.eval()
    report.seconds = time.perf_counter() - started
    _score(tower, head, held_out, report)
    return report


@torch.no_grad()
def _score(tower: ConvVisionTower, head: CellHead, held_out: Sequence[VisionSample],
           report: PretrainReport) -> None:
    scores, truths = [], []
    hits = total = type_hits = type_total = view_hits = view_total = 0
    by_difficulty: dict[str, list[int]] = {}
    for sample in held_out:
        maps = tower.backbone(_pixels(tower, [sample.view]))
        probs = torch.softmax(head(maps), dim=1)[0]
        defect = 1.0 - probs[0]  # (rows, cols)
        truth = torch.from_numpy(sample.target) > 0
        scores += defect.flatten().tolist()
        truths += truth.flatten().tolist()
        if sample.kind == "whole":
            view_total += 1
            view_hits += int(int(head.whole(maps)[0].argmax()) == int(sample.target.max()))
        if sample.kind == "whole" and bool(truth.any()):
            total += 1
            hit = int(truth.flatten()[int(defect.flatten().argmax())])
            hits += hit
            by_difficulty.setdefault(sample.difficulty, []).append(hit)
        if sample.kind == "zoom" and bool(truth.any()):
            type_total += 1
            summed = (probs[1:] * truth).flatten(1).sum(-1)
            type_hits += int(int(summed.argmax()) + 1 == int(sample.target[truth.numpy()].max()))
    report.cell_auroc = auroc(np.array(scores), np.array(truths, dtype=bool))
    report.localisation = hits / total if total else None
    report.zoom_type_accuracy = type_hits / type_total if type_total else None
    report.view_type_accuracy = view_hits / view_total if view_total else None
    report.localisation_by_difficulty = {k: sum(v) / len(v) for k, v in sorted(by_difficulty.items())}


def auroc(scores: npt.NDArray[np.float64], truths: npt.NDArray[np.bool_]) -> float | None:
    """Area under the ROC curve by the rank statistic (ties get average ranks).

    >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    """
    positives, negatives = int(truths.sum()), int((~truths).sum())
    if not positives or not negatives:
        return None
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[truths].sum() - positives * (positives + 1) / 2) / (positives * negatives))


__all__ = ["CellHead", "PretrainReport", "VisionSample", "auroc", "cell_targets",
           "pretrain", "samples_for", "wide_box"]




PEAK_SIDE = 0.2  # the side of a look at a defect-free part's cell-head peak without cell looks (v6)


@torch.no_grad()
def cell_peaks(tower: ConvVisionTower, labels: Sequence[Label], folder: Path, budget: ImageBudget,
               on_item: Callable[[int], None] | None = None, cell_looks: bool = False
               ) -> dict[str, tuple[Box4, float]]:
    """Per single-image label: a box on the whole view's most defect-like cell under the
    tower's cell head, and that cell's defect probability. This is what the decoder itself is
    shown (the head's summary enters every image token), so a look placed here is one the model
    can learn to make. The box: that cell's `look_box` with `cell_looks`, else a `PEAK_SIDE`
    box centred on it (v6). Needs a tower with a cell head."""
    _need_head(tower)
    out: dict[str, tuple[Box4, float]] = {}
    for n, label in enumerate(labels):
        if label.image is not None:
            out[label.id] = _peak(tower, load_image(folder, label.image), budget, cell_looks)
        if on_item is not None:
            on_item(n)
    return out


@torch.no_grad()
def frame_peaks(tower: ConvVisionTower, labels: Sequence[Label], folder: Path, budget: ImageBudget,
                on_item: Callable[[int], None] | None = None, cell_looks: bool = False
                ) -> dict[str, tuple[int, Box4, float]]:
    """Per sequence label: the frame (0-based) whose whole view peaks highest under the cell
    head, with that peak's box and probability as `cell_peaks` gives them. Close to the frame a
    look-first pointer selects first and crops (`foveal.reasoning.pointer.rank_frames`, which
    reads every other frame at 336 px and reranks 8 looks at full resolution)."""
    _need_head(tower)
    out: dict[str, tuple[int, Box4, float]] = {}
    for n, label in enumerate(labels):
        if label.frames:
            peaks = [_peak(tower, load_image(folder, f), budget, cell_looks) for f in label.frames]
            best = max(range(len(peaks)), key=lambda k: (peaks[k][1], -k))
            out[label.id] = (best, *peaks[best])
        if on_item is not None:
            on_item(n)
    return out


def _need_head(tower: ConvVisionTower) -> None:
    if tower.head is None:
        raise ValueError("the tower has no cell head (cell_classes = 0): no peaks to look at")


def _peak(tower: ConvVisionTower, frame: npt.NDArray[np.uint8], budget: ImageBudget, cell_looks: bool
          ) -> tuple[Box4, float]:
    """The box on the most defect-like cell of `frame`'s whole view, and its defect probability."""
    assert tower.head is not None
    view = Workspace([frame], budget).views[0].pixels
    defect = 1.0 - torch.softmax(tower.head(tower.backbone(_pixels(tower, [view]))), dim=1)[0, 0]
    rows, cols = defect.shape
    best = int(defect.flatten().argmax())
    if cell_looks:
        box = look_box(rows, cols, best // cols, best % cols)
    else:
        cx, cy = (best % cols + 0.5) / cols, (best // cols + 0.5) / rows
        x1 = min(max(cx - PEAK_SIDE / 2, 0.0), 1.0 - PEAK_SIDE)
        y1 = min(max(cy - PEAK_SIDE / 2, 0.0), 1.0 - PEAK_SIDE)
        box = (x1, y1, x1 + PEAK_SIDE, y1 + PEAK_SIDE)
    return box, float(defect.max())

"""Stage 0: pre-train the compact model's convolutional vision backbone on the renderer's labels.

Pixel Reasoner starts from a pretrained Qwen2.5-VL; nothing pretrained is reachable here, so the
backbone first learns to see: every 28 px cell of a view (the whole frame at the pixel budget,
a zoom on the labelled defect, a zoom somewhere else) is classified as `none` or the defect type
whose mask it touches. That teaches *where* (whole views) and *what* (zooms); SFT then teaches
the protocol with the backbone frozen. Views are cut with the same operations code inference
uses, so the pixels match what the model will see.
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
from foveal.model.vision import ConvVisionTower
from foveal.operations import CROP, ImageBudget, View, Workspace, execute
from foveal.plant.dataset import Label, load_image
from foveal.training.trajectories import crop_box, tool_call

FACTOR = 28


@dataclass
class VisionSample:
    view: npt.NDArray[np.uint8]  # (h, w, 3) as the model sees it
    target: npt.NDArray[np.int64]  # (h/28, w/28) class index per cell, 0 = none
    kind: str  # "whole", "zoom" (on the defect) or "other" (a zoom elsewhere)


@dataclass
class PretrainReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    cell_auroc: float | None = None
    localisation: float | None = None  # whole views: the top cell touches the defect
    zoom_type_accuracy: float | None = None  # zooms on the defect: the type named by the cells


def cell_targets(mask: npt.NDArray[np.bool_] | None, view: View, type_index: int) -> npt.NDArray[np.int64]:
    """Class per 28 px cell of `view`: `type_index` where the cell's region of the original
    frame holds a defect pixel, else 0."""
    rows, cols = view.pixels.shape[0] // FACTOR, view.pixels.shape[1] // FACTOR
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


def samples_for(label: Label, folder: Path, rng: random.Random, budget: ImageBudget = ImageBudget(),
                zooms: int = 4) -> list[VisionSample]:
    """The whole view, `zooms` jittered zooms on the defect (defective items; the first is the
    trajectories' crop) and a zoom elsewhere."""
    if label.image is None:
        return []
    frame = load_image(folder, label.image)
    mask = load_image(folder, label.mask)[:, :, 0] > 0 if label.mask else None
    type_index = DEFECT_TYPES.index(label.defect_type) if label.defect_type in DEFECT_TYPES else 0
    ws = Workspace([frame], budget)
    out = [VisionSample(ws.views[0].pixels, cell_targets(mask, ws.views[0], type_index), "whole")]
    boxes: list[tuple[str, tuple[float, float, float, float]]] = []
    if label.bbox is not None:
        boxes.append(("zoom", crop_box(label.bbox)))
        boxes += [("zoom", jittered_box(label.bbox, rng)) for _ in range(zooms - 1)]
    side = rng.uniform(0.08, 0.3)
    x, y = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
    boxes.append(("other", (round(x, 2), round(y, 2), round(x + side, 2), round(y + side, 2))))
    for kind, box in boxes:
        result = execute(tool_call(CROP, {"bbox_2d": list(box), "target_image": 1}), ws)
        if result.ok:
            view = result.views[0]
            out.append(VisionSample(view.pixels, cell_targets(mask, view, type_index), kind))
    return out


class CellHead(nn.Module):
    """Per-cell classifier on the backbone's maps, plus a view-level one on their mean and max
    (training only; not part of the saved model)."""

    def __init__(self, channels: int, classes: int = len(DEFECT_TYPES)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, 1)
        self.view = nn.Linear(2 * channels, classes)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.conv(maps)  # type: ignore[no-any-return]  # (B, classes, rows, cols)

    def whole(self, maps: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], dim=1)  # (B, 2C)
        return self.view(pooled)  # type: ignore[no-any-return]  # (B, classes)


def _window(sample: VisionSample, side: int, rng: random.Random
            ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """A random side x side window of the view on the 28 px grid (views smaller than that are padded)."""
    h, w = sample.view.shape[:2]
    cells = side // FACTOR
    view = np.zeros((side, side, 3), dtype=np.uint8)
    target = np.full((cells, cells), -100, dtype=np.int64)
    r0 = rng.randint(0, max(0, h // FACTOR - cells))
    c0 = rng.randint(0, max(0, w // FACTOR - cells))
    part = sample.view[r0 * FACTOR: (r0 + cells) * FACTOR, c0 * FACTOR: (c0 + cells) * FACTOR]
    view[: part.shape[0], : part.shape[1]] = part
    t = sample.target[r0: r0 + cells, c0: c0 + cells]
    target[: t.shape[0], : t.shape[1]] = t
    return _augment(view, target, rng)


def _augment(view: npt.NDArray[np.uint8], target: npt.NDArray[np.int64], rng: random.Random
             ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Flips, quarter turns (cells move with the pixels) and a brightness/contrast change."""
    turns = rng.randrange(4)
    view, target = np.rot90(view, turns), np.rot90(target, turns)
    if rng.random() < 0.5:
        view, target = view[:, ::-1], target[:, ::-1]
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    jittered = np.clip(view.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
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
    head = CellHead(tower.feature_dim)
    params = [*tower.stem.parameters(), *tower.blocks.parameters(), *head.parameters()]
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
        batch = [_window(rng.choice(defective if rng.random() < defect_share else samples), side, rng)
                 for _ in range(batch_size)]
        x = _pixels(tower, [b[0] for b in batch])
        y = torch.from_numpy(np.stack([b[1] for b in batch]))  # (B, cells, cells)
        maps = tower.blocks(tower.stem(x))  # (B, C, cells, cells)
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
    hits = total = type_hits = type_total = 0
    for sample in held_out:
        probs = torch.softmax(head(tower.blocks(tower.stem(_pixels(tower, [sample.view])))), dim=1)[0]
        defect = 1.0 - probs[0]  # (rows, cols)
        truth = torch.from_numpy(sample.target) > 0
        scores += defect.flatten().tolist()
        truths += truth.flatten().tolist()
        if sample.kind == "whole" and bool(truth.any()):
            total += 1
            hits += int(truth.flatten()[int(defect.flatten().argmax())])
        if sample.kind == "zoom" and bool(truth.any()):
            type_total += 1
            summed = (probs[1:] * truth).flatten(1).sum(-1)
            type_hits += int(int(summed.argmax()) + 1 == int(sample.target[truth.numpy()].max()))
    report.cell_auroc = auroc(np.array(scores), np.array(truths, dtype=bool))
    report.localisation = hits / total if total else None
    report.zoom_type_accuracy = type_hits / type_total if type_total else None


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
           "pretrain", "samples_for"]

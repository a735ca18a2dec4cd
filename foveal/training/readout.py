"""Refit the type read on the looks the loop actually reads (`foveal train readout`).

A grounded answer's type is read by a linear classifier on the backbone maps' pooled mean and
max, on the last look before the answer: with probes, a tight look centred on the crop's most
defect-like cell (`foveal.reasoning.pointer`). Stage 0 trained the view head's classifier
(`CellHead.view`) on whole views, wide crops and zooms cut around the labelled defect, not on the
loop's own looks, whose placement follows the cell head. This stage runs the greedy loop, as
inspection runs it, over the defective items of labelled data. Each answer whose type was read
gives what it was read from (`Trace.answer_features`) and the label's type. The tower's type
reader (`ConvVisionTower.reader`, added as a copy of the view head's classifier when the model
has none) is refitted on those pairs. Nothing else changes: the view head's probabilities that
every image token carries stay as they were, so the decoder sees the same tokens and takes the
same decisions. (Session 22's first version refitted the view head itself, and 9 of 1,200 test
decisions moved: docs/benchmarks.md, "Readout refit".)

A share of the items (`holdout`, split by item) is kept out of the fit and reports the read's
accuracy before and after; the saved model is then refitted on all of them.

With `crop_steps` the reader first gets a backbone of its own (`ConvVisionTower.reader_backbone`,
a copy of the tower's), fine-tuned with its classifier on tight looks cut, as the pointer cuts
them, around the labelled defects of the data: a look near the defect, then the tight look
near it inside that look's crop, at the probes' pixels (`tight_crops`). The looks the loop takes
are few per item and placed by the cell head; these are as many as wanted and always hold the
defect, which is what a reader should learn from. The held-out items are kept out of this fit
too, and the saved model is the one checked on them (the fine-tune is not run twice). The image
tokens still come from the tower's own backbone, so every decision stays the decoder's as before.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.evaluation.bench import traces_for
from foveal.evaluation.inference import read_rgb
from foveal.model import loader
from foveal.model.loader import VLM
from foveal.model.pixels import PixelSpec, normalized
from foveal.model.vision import ConvVisionTower
from foveal.operations import (
    ImageBudget,
    RGBImage,
    crop_of,
    look_at,
    pad_and_clamp,
    pixel_region,
    to_original,
)
from foveal.plant.dataset import Label, read_labels
from foveal.reasoning.loop import LoopOptions
from foveal.reasoning.pointer import probe_budget, tight_look

Progress = Callable[[str, int, int], None]
# how far from the defect's centre an emulated look and its tight look are placed: the look's
# cell is 0.04 of the frame, the tight look's centre one of its crop's 8 x 8 cells, and the cell
# head's peak is not always the defect's centre
LOOK_JITTER = 0.04  # of the frame
TIGHT_JITTER = 0.06  # of the look's crop


@dataclass
class ReadoutConfig:
    model: Path
    data: list[Path]
    out: Path
    max_items: int | None = None  # defective items per data folder
    batch_size: int = 8
    # full-batch AdamW from the stage-0 weights; a gentle fit: chosen on five 80/20 splits of
    # train21's 819 readings (held-out accuracy 0.609 -> 0.654; 300 steps at 1e-2 overfit, 0.588)
    steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 1.0
    holdout: float = 0.2
    seed: int = 0
    # fine-tune a backbone of the reader's own on this many steps of tight looks at the labelled
    # defects first (0: the reader reads the tower's maps, as before)
    crop_steps: int = 0
    crops_per_item: int = 8
    crop_batch: int = 24
    crop_lr: float = 1e-3  # one-cycle peak for the backbone; the classifier's is 3x
    # what the loop's reads fit: "linear" refits the reader's classifier (session 23);
    # "temperature" only a temperature on its logits, folded into it: every read type stays,
    # their probabilities (an answer's confidence, hence `uncertain` verdicts) become calibrated
    loop_fit: str = "linear"


@dataclass
class Readings:
    features: torch.Tensor  # (N, 2C)
    types: torch.Tensor  # (N,) index into DEFECT_TYPES (never none)
    items: list[str]


def defect_boxes(label: Label) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(frame index, normalized box) of each frame of an item where its defect is labelled."""
    if label.defect_type == NO_DEFECT:
        return []
    if label.image is not None:
        return [] if label.bbox is None else [(0, tuple(label.bbox))]  # type: ignore[list-item]
    if label.frame_boxes is not None:
        return [(k, tuple(box)) for k, box in enumerate(label.frame_boxes) if box is not None]  # type: ignore[misc]
    if label.bbox is not None and label.bbox_frame is not None:
        return [(label.bbox_frame, tuple(label.bbox))]  # type: ignore[list-item]
    return []


def probe_side(budget: ImageBudget) -> int:
    """The side of the square the probes of a model with this pixel budget are cut at."""
    probes = probe_budget(budget)
    return int(max(1, round(probes.max_pixels ** 0.5 / probes.factor)) * probes.factor)


def tight_crops(frame: RGBImage, box: tuple[float, float, float, float], count: int,
                rng: np.random.Generator, budget: ImageBudget) -> list[RGBImage]:
    """`count` tight looks at the defect in `box` (normalized to `frame`), cut as the pointer
    cuts them: a look near the defect, then the tight look near it inside that look's crop, from
    the original pixels at the probes' budget (`probe_budget` of the model's `budget`), resized
    to that budget's square so that they batch."""
    height, width = frame.shape[:2]
    probes, side = probe_budget(budget), probe_side(budget)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    out: list[RGBImage] = []
    for _ in range(count):
        dx, dy = rng.uniform(-LOOK_JITTER, LOOK_JITTER, 2)
        look = look_at(cx + dx, cy + dy)
        left, top, right, bottom = pixel_region(to_original(pad_and_clamp(look), (0, 0, width, height)))
        u, v = (cx * width - left) / (right - left), (cy * height - top) / (bottom - top)
        du, dv = rng.uniform(-TIGHT_JITTER, TIGHT_JITTER, 2)
        tight = tight_look(u + du, v + dv)
        view = crop_of(tight, frame, (left, top, right, bottom), 0, probes)
        if not isinstance(view, str):
            square = cv2.resize(view.pixels, (side, side), interpolation=cv2.INTER_AREA)
            out.append(np.asarray(square, np.uint8))
    return out


@dataclass
class Crops:
    pixels: npt.NDArray[np.uint8]  # (N, side, side, 3)
    types: npt.NDArray[np.int64]  # (N,) index into DEFECT_TYPES (never none)
    items: list[str]


def cut_crops(vlm: VLM, config: ReadoutConfig, progress: Progress | None = None) -> Crops:
    """`crops_per_item` tight looks at every labelled defect (of images and of sequences'
    frames) in the data."""
    rng = np.random.default_rng(config.seed)
    folders = [(folder, [lb for lb in read_labels(folder) if defect_boxes(lb)][:config.max_items])
               for folder in config.data]
    total, done = sum(len(labels) for _, labels in folders), 0
    side = probe_side(vlm.budget)
    # filled in place: a list of crops stacked at the end would hold them twice (19k crops, 6 GB)
    pixels = np.zeros((total * config.crops_per_item, side, side, 3), np.uint8)
    types: list[int] = []
    items: list[str] = []
    for folder, labels in folders:
        for label in labels:
            boxes = defect_boxes(label)
            shares = np.array_split(np.arange(config.crops_per_item), len(boxes))
            for (frame_index, box), share in zip(boxes, shares, strict=True):
                if not len(share):
                    continue
                path = label.image if label.image is not None else (label.frames or [])[frame_index]
                for crop in tight_crops(read_rgb(folder / path), box, len(share), rng, vlm.budget):
                    pixels[len(items)] = crop
                    types.append(DEFECT_TYPES.index(label.defect_type))
                    items.append(f"{folder}:{label.id}")
            done += 1
            if progress is not None:
                progress("cutting tight looks", done, total)
    if not items:
        raise ValueError("no labelled defect to cut tight looks at in the data")
    return Crops(pixels[:len(items)], np.array(types), items)


def _crop_batch(tower: ConvVisionTower, crops: Crops, rows: npt.NDArray[np.int64], spec: PixelSpec,
                rng: np.random.Generator | None = None) -> torch.Tensor:
    """Normalized pixels of `rows`; with `rng` flipped, turned and shifted in colour (a defect's
    type does not depend on its orientation or the light)."""
    images = []
    for row in rows:
        image = crops.pixels[row]
        if rng is not None:
            image = np.rot90(image[:, ::-1] if rng.random() < 0.5 else image, int(rng.integers(4)))
        images.append(normalized(np.ascontiguousarray(image), spec))
    x = torch.from_numpy(np.stack(images)).to(tower.dtype)
    if rng is not None:
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, (len(rows), 3, 1, 1))).to(x.dtype)
        shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (len(rows), 3, 1, 1))).to(x.dtype)
        x = x * gain + shift
    return x


def _read_logits(tower: ConvVisionTower, x: torch.Tensor) -> torch.Tensor:
    """The reader's defect-type logits (B, 6) on a batch of normalized pixels."""
    assert tower.reader_backbone is not None and tower.head is not None
    return tower.type_logits(tower.head.pooled(tower.reader_backbone(x)))[:, 1:len(DEFECT_TYPES)]


def crop_accuracy(tower: ConvVisionTower, crops: Crops, rows: list[int], spec: PixelSpec) -> float | None:
    if not rows:
        return None
    right = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 32):
            batch = np.array(rows[start:start + 32])
            guess = _read_logits(tower, _crop_batch(tower, crops, batch, spec)).argmax(1).numpy() + 1
            right += int((guess == crops.types[batch]).sum())
    return right / len(rows)


def one_cycle(optimizer: torch.optim.Optimizer, lrs: list[float], steps: int
              ) -> torch.optim.lr_scheduler.LRScheduler:
    """A one-cycle schedule over `steps` (a tenth warming up, at least one step), or the peak
    rates throughout for fewer than 3 steps. torch's `OneCycleLR` divides by zero when its
    warm-up ends on step 0 (10 steps at a tenth), so the warm-up is never shorter than that."""
    if steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=steps,
                                               pct_start=max(0.1, 2.0 / steps))


def finetune_on_crops(vlm: VLM, config: ReadoutConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Give the reader a backbone of its own and fine-tune it with the reader on tight looks at
    the labelled defects of the data, the held-out items kept out; returns the report."""
    tower = vlm.model.model.visual
    assert isinstance(tower, ConvVisionTower)
    crops = cut_crops(vlm, config, progress)
    tower.enable_reader_backbone()
    assert tower.reader is not None and tower.reader_backbone is not None
    fit_rows, held = split(crops.items, config.holdout, config.seed)
    spec = vlm.chat.spec
    before = crop_accuracy(tower, crops, held, spec)
    modules = (tower.reader_backbone, tower.reader)
    for module in modules:
        module.train()
        module.requires_grad_(True)
    lrs = [config.crop_lr, 3 * config.crop_lr]
    groups = [{"params": list(m.parameters()), "lr": lr} for m, lr in zip(modules, lrs, strict=True)]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    schedule = one_cycle(optimizer, lrs, config.crop_steps)
    rng = np.random.default_rng(config.seed)
    pool = np.array(fit_rows)
    losses: list[float] = []
    for step in range(1, config.crop_steps + 1):
        batch = rng.choice(pool, min(config.crop_batch, len(pool)), replace=False)
        logits = _read_logits(tower, _crop_batch(tower, crops, batch, spec, rng))
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(crops.types[batch] - 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress("fine-tuning the reader on tight looks", step, config.crop_steps)
    for module in modules:
        module.eval()
        module.requires_grad_(False)
    after = crop_accuracy(tower, crops, held, spec)
    return {"crops": len(crops.items), "items": len(set(crops.items)), "held_out_crops": len(held),
            "held_out_accuracy_before": before, "held_out_accuracy_after": after,
            "first_loss": float(np.mean(losses[:20])) if losses else None,
            "last_loss": float(np.mean(losses[-20:])) if losses else None}


def collect(vlm: VLM, config: ReadoutConfig, progress: Progress | None = None) -> tuple[Readings, int]:
    """The greedy loop over the defective items of every folder; the pairs of what the head read
    and the labelled type, one per item whose answer named a defect; and how many items ran."""
    features: list[npt.NDArray[np.float32]] = []
    types: list[int] = []
    items: list[str] = []
    folders = [(folder, [lb for lb in read_labels(folder) if lb.defect_type != NO_DEFECT][:config.max_items])
               for folder in config.data]
    total = sum(len(labels) for _, labels in folders)
    done = 0
    for folder, labels in folders:
        truth = {label.id: label.defect_type for label in labels}
        tick = None if progress is None else \
            (lambda n, _, base=done: progress("loop on defective items", base + n, total))
        for trace in traces_for(vlm, labels, folder, LoopOptions(), config.batch_size, on_item=tick):
            if trace.answer_features is not None and truth[trace.item_id] in DEFECT_TYPES:
                features.append(trace.answer_features)
                types.append(DEFECT_TYPES.index(truth[trace.item_id]))
                items.append(f"{folder}:{trace.item_id}")
        done += len(labels)
    if not features:
        raise ValueError("no answer's type was read by the view head: the model needs a cell head, "
                         "and the data defective items it detects")
    return Readings(torch.from_numpy(np.stack(features)).float(), torch.tensor(types), items), total


def _accuracy(view: torch.nn.Linear, readings: Readings, rows: list[int]) -> float | None:
    if not rows:
        return None
    with torch.no_grad():
        logits = view(readings.features[rows])[:, 1:len(DEFECT_TYPES)]
    return float((logits.argmax(1) + 1 == readings.types[rows]).float().mean())


def fit(view: torch.nn.Linear, readings: Readings, rows: list[int], config: ReadoutConfig) -> None:
    """Cross-entropy over the defect types (not `none`: the decoder has said there is a defect),
    full batch, from the layer's present weights."""
    x, y = readings.features[rows], readings.types[rows] - 1
    optimizer = torch.optim.AdamW(view.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(view(x)[:, 1:len(DEFECT_TYPES)], y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()


TEMPERATURES = torch.logspace(-1.0, 1.5, 501)  # 0.1 to 31.6, searched by likelihood: one scalar


def fit_temperature(view: torch.nn.Linear, readings: Readings, rows: list[int]) -> float:
    """The temperature whose softened defect-type probabilities give the reads of `rows` the
    highest likelihood."""
    with torch.no_grad():
        logits = view(readings.features[rows])[:, 1:len(DEFECT_TYPES)].float()
        y = readings.types[rows] - 1
        losses = torch.stack([torch.nn.functional.cross_entropy(logits / t, y) for t in TEMPERATURES])
    return float(TEMPERATURES[int(losses.argmin())])


def calibration_error(view: torch.nn.Linear, readings: Readings, rows: list[int],
                      bins: int = 5) -> float | None:
    """Expected calibration error of the read types' probabilities (`bins` equal-width bins):
    how far the probability of the type read is from how often it is right."""
    if not rows:
        return None
    with torch.no_grad():
        probs = view(readings.features[rows])[:, 1:len(DEFECT_TYPES)].float().softmax(1)
    top, guess = probs.max(1)
    right = (guess + 1 == readings.types[rows]).float()
    which = (top * bins).long().clamp(max=bins - 1)
    return float(sum((which == b).float().mean() * (top[which == b].mean() - right[which == b].mean()).abs()
                     for b in range(bins) if bool((which == b).any())))


def fold_temperature(view: torch.nn.Linear, temperature: float) -> None:
    """Divide the classifier's logits by `temperature` for good (its argmax stays)."""
    with torch.no_grad():
        view.weight.div_(temperature)
        view.bias.div_(temperature)


def split(items: list[str], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices for fitting and for the held-out check (whole items on one side)."""
    names = sorted(set(items))
    random.Random(seed).shuffle(names)
    held = set(names[:round(holdout * len(names))])
    return [i for i, n in enumerate(items) if n not in held], [i for i, n in enumerate(items) if n in held]


def run(config: ReadoutConfig, progress: Progress | None = None) -> dict[str, Any]:
    """With `crop_steps`, fine-tune the reader's own backbone on tight looks first; then (with
    `steps`) collect the loop's reads, check on the held-out items, refit on all; save; returns
    the report."""
    vlm = loader.load(config.model, tower_precision="float32")
    tower = vlm.model.model.visual
    if getattr(tower, "head", None) is None:
        raise ValueError(f"{config.model}: the model has no view head to read types with (a compact "
                         "checkpoint with stage 0's cell head is needed)")
    if not config.crop_steps and not config.steps:
        raise ValueError("nothing to fit: give crop_steps, steps or both")
    if config.loop_fit not in ("linear", "temperature"):  # before any work: a typo loses nothing
        raise ValueError(f"loop_fit must be 'linear' or 'temperature', not {config.loop_fit!r}")
    reader = tower.enable_reader()  # a copy of the view head's classifier when it had none
    report: dict[str, Any] = {}
    if config.crop_steps:
        report["tight_looks"] = finetune_on_crops(vlm, config, progress)
    if config.steps and config.loop_fit == "temperature":
        readings, ran = collect(vlm, config, progress)
        fit_rows, held_rows = split(readings.items, config.holdout, config.seed)
        everything = list(range(len(readings.items)))
        check = copy.deepcopy(reader)
        fold_temperature(check, fit_temperature(reader, readings, fit_rows))
        temperature = fit_temperature(reader, readings, everything)
        report.update({"items_run": ran, "readings": len(readings.items), "held_out": len(held_rows),
                       "accuracy": _accuracy(reader, readings, everything), "temperature": temperature,
                       "held_out_calibration_error_before": calibration_error(reader, readings, held_rows),
                       "held_out_calibration_error_after": calibration_error(check, readings, held_rows)})
        fold_temperature(reader, temperature)
    elif config.steps:
        readings, ran = collect(vlm, config, progress)
        start = {k: v.detach().clone() for k, v in reader.state_dict().items()}
        fit_rows, held_rows = split(readings.items, config.holdout, config.seed)
        before = _accuracy(reader, readings, held_rows)
        fit(reader, readings, fit_rows, config)
        after = _accuracy(reader, readings, held_rows)
        reader.load_state_dict(start)  # the saved model: refitted on every reading
        fit(reader, readings, list(range(len(readings.items))), config)
        report.update({"items_run": ran, "readings": len(readings.items), "held_out": len(held_rows),
                       "held_out_accuracy_before": before, "held_out_accuracy_after": after,
                       "fit_accuracy": _accuracy(reader, readings, list(range(len(readings.items)))),
                       "per_type": {DEFECT_TYPES[t]: int((readings.types == t).sum())
                                    for t in range(1, len(DEFECT_TYPES))}})
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings["data"] = [str(p) for p in config.data]
    suffix = "tight" if config.crop_steps else \
        ("calibrated" if config.loop_fit == "temperature" else "reader")
    vlm.version = f"{vlm.version}-{suffix}"
    earlier = [*vlm.meta.get("earlier_readouts", []), vlm.meta["readout"]] if "readout" in vlm.meta else []
    loader.save(vlm, config.out, meta={"readout": {**settings, **report},
                                       **({"earlier_readouts": earlier} if earlier else {})})
    return report

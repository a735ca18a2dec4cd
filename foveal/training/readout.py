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
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.evaluation.bench import traces_for
from foveal.model import loader
from foveal.model.loader import VLM
from foveal.plant.dataset import read_labels
from foveal.reasoning.loop import LoopOptions

Progress = Callable[[int, int], None]


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


@dataclass
class Readings:
    features: torch.Tensor  # (N, 2C)
    types: torch.Tensor  # (N,) index into DEFECT_TYPES (never none)
    items: list[str]


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
        tick = None if progress is None else (lambda n, _, base=done: progress(base + n, total))
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


def split(items: list[str], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices for fitting and for the held-out check (whole items on one side)."""
    names = sorted(set(items))
    random.Random(seed).shuffle(names)
    held = set(names[:round(holdout * len(names))])
    return [i for i, n in enumerate(items) if n not in held], [i for i, n in enumerate(items) if n in held]


def run(config: ReadoutConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Collect, check on the held-out items, refit on all, save; returns the report."""
    vlm = loader.load(config.model)
    tower = vlm.model.model.visual
    if getattr(tower, "head", None) is None:
        raise ValueError(f"{config.model}: the model has no view head to read types with (a compact "
                         "checkpoint with stage 0's cell head is needed)")
    reader = tower.enable_reader()  # a copy of the view head's classifier when it had none
    readings, ran = collect(vlm, config, progress)
    start = {k: v.detach().clone() for k, v in reader.state_dict().items()}
    fit_rows, held_rows = split(readings.items, config.holdout, config.seed)
    before = _accuracy(reader, readings, held_rows)
    fit(reader, readings, fit_rows, config)
    after = _accuracy(reader, readings, held_rows)
    reader.load_state_dict(start)  # the saved model: refitted on every reading
    fit(reader, readings, list(range(len(readings.items))), config)
    report = {"items_run": ran, "readings": len(readings.items), "held_out": len(held_rows),
              "held_out_accuracy_before": before, "held_out_accuracy_after": after,
              "fit_accuracy": _accuracy(reader, readings, list(range(len(readings.items)))),
              "per_type": {DEFECT_TYPES[t]: int((readings.types == t).sum())
                           for t in range(1, len(DEFECT_TYPES))}}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings["data"] = [str(p) for p in config.data]
    vlm.version = f"{vlm.version}-reader"
    loader.save(vlm, config.out, meta={"readout": {**settings, **report}})
    return report

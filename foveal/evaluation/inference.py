"""Run a model over files or a FovealBench folder: what `foveal predict` and `foveal eval` share.

`discover` turns paths into inspections: an image file is one inspection; a directory whose
image files all have numeric names (`00.png`, `01.png`, ...) is one sequence; any other
directory contributes each image inside (recursively, sorted). `record` is the stable JSON
line of `foveal predict` (DESIGN.md): image, verdict, defect_type, confidence, bbox
(normalized to the original frame, or null), steps, latency_ms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from foveal.domain import Verdict
from foveal.errors import FovealError
from foveal.evaluation.metrics import Prediction
from foveal.operations import RGBImage
from foveal.plant.dataset import Label
from foveal.reasoning.loop import Inspection, Loop, Trace
from foveal.reasoning.prompts import inspection_prompt

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class InputError(FovealError):
    """A path to inspect does not exist, is not an image, or cannot be decoded."""


@dataclass(frozen=True)
class Item:
    name: str  # the path as the user gave it (or found under a directory they gave)
    frames: tuple[Path, ...]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover(paths: Sequence[str]) -> list[Item]:
    items: list[Item] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{given} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            items.append(Item(given, (path,)))
        elif path.is_dir():
            items += _walk(path, given)
        else:
            raise InputError(f"{given} does not exist")
    return items


def _walk(folder: Path, shown: str) -> list[Item]:
    images = _images(folder)
    if len(images) >= 2 and all(p.stem.isdigit() for p in images):
        return [Item(shown, tuple(images))]
    out = [Item(str(Path(shown) / p.name), (p,)) for p in images]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        out += _walk(sub, str(Path(shown) / sub.name))
    return out


def read_rgb(path: Path) -> RGBImage:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot decode {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # type: ignore[return-value]


def inspections(items: Sequence[Item], product: str | None = None,
                defect_types: Sequence[str] | None = None) -> Iterator[Inspection]:
    for item in items:
        frames = [read_rgb(p) for p in item.frames]
        yield Inspection(frames, inspection_prompt(product, defect_types, len(frames)), item_id=item.name)


def run(loop: Loop, inspections_: Iterator[Inspection], batch_size: int,
        on_done: Callable[[Trace], None]) -> None:
    """Run the loop over a stream in batches (frames are read only as each batch needs them)."""
    batch: list[Inspection] = []
    for inspection in inspections_:
        batch.append(inspection)
        if len(batch) == batch_size:
            for trace in loop.run(batch):
                on_done(trace)
            batch = []
    if batch:
        for trace in loop.run(batch):
            on_done(trace)


def record(trace: Trace) -> dict[str, Any]:
    """The `foveal predict` JSON object of one inspection (`image` is filled from item_id)."""
    box = trace.box
    return {
        "image": trace.item_id,
        "verdict": str(trace.verdict),
        "defect_type": trace.defect_type,
        "confidence": round(trace.confidence, 6),
        "defect_score": round(trace.defect_score, 6),
        "bbox": [round(v, 6) for v in (box.x1, box.y1, box.x2, box.y2)] if box else None,
        "bbox_frame": trace.box_frame,
        "steps": [{"text": s.text, "operation": s.operation, "arguments": s.arguments, "ok": s.ok,
                   "error": s.error, "box": [s.box.x1, s.box.y1, s.box.x2, s.box.y2] if s.box else None,
                   "frame": s.frame_index, "latency_ms": round(s.latency_ms, 3)} for s in trace.steps],
        "operations": trace.operations,
        "forced_answer": trace.forced_answer,
        "latency_ms": round(trace.latency_ms, 3),
    }


def prediction(trace: Trace, item_id: str) -> Prediction:
    box = trace.box
    return Prediction(item_id=item_id, defect_type=trace.defect_type or "unanswered",
                      defect_score=trace.defect_score, confidence=trace.confidence,
                      bbox=(box.x1, box.y1, box.x2, box.y2) if box else None, bbox_frame=trace.box_frame,
                      operations=trace.operations, operation_errors=trace.operation_errors,
                      latency_ms=trace.latency_ms, uncertain=trace.verdict == Verdict.UNCERTAIN)


def bench_items(folder: Path, labels: Sequence[Label]) -> list[Item]:
    items = []
    for label in labels:
        rels = [label.image] if label.image else list(label.frames or [])
        items.append(Item(label.id, tuple(folder / rel for rel in rels)))
    return items

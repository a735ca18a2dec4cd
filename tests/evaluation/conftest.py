"""A hand-built set of ten items whose metrics the tests compute by hand.

| id | product | truth        | answer  | score | ops (err) | evidence box          | latency |
|----|---------|--------------|---------|-------|-----------|-----------------------|---------|
| g1 | metal   | none         | none    | 0.10  | 0         | -                     | 100     |
| g2 | metal   | none         | scratch | 0.60  | 1         | -                     | 300     |
| g3 | pcb     | none         | none    | 0.30  | 0         | -                     | 200     |
| e1 | metal   | scratch easy | scratch | 0.90  | 0         | -                     | 150     |
| e2 | pcb     | pit easy     | none    | 0.30  | 0         | -                     | 120     |
| h1 | metal   | crack hard   | crack   | 0.80  | 2 (1)     | covers -> hit         | 900     |
| h2 | pcb     | stain hard   | scratch | 0.70  | 1         | short by 0.004 -> hit | 800     |
| t1 | pcb     | pit tiny     | pit     | 0.95  | 3         | misses -> miss        | 1200    |
| t2 | metal   | dent tiny    | banana  | 0.55  | 1 (1)     | -                     | 700     |
| s1 | pcb     | pit tiny seq | pit     | 0.85  | 2         | frame 1 covers -> hit | 2000    |
"""

from __future__ import annotations

from typing import Any

import pytest

from foveal.evaluation.metrics import Prediction
from foveal.plant.dataset import BoxN, Label


def image_label(item_id: str, product: str, defect_type: str = "none", bbox: BoxN | None = None,
                difficulty: str | None = None) -> Label:
    return Label(id=item_id, image=f"images/{item_id}.png", product=product, defect_type=defect_type,
                 bbox=bbox, difficulty=difficulty, width=100, height=100)


def sequence_label(item_id: str, product: str, defect_type: str, frame_boxes: list[BoxN | None],
                   difficulty: str | None = "tiny") -> Label:
    return Label(id=item_id, frames=[f"sequences/{item_id}/{k:02d}.png" for k in range(len(frame_boxes))],
                 product=product, defect_type=defect_type, difficulty=difficulty,
                 frame_boxes=frame_boxes, defect_frames=[k for k, b in enumerate(frame_boxes) if b],
                 width=100, height=100)


def prediction(item_id: str, defect_type: str, score: float, *, ops: int = 0, errors: int = 0,
               bbox: BoxN | None = None, frame: int | None = None, latency: float = 100.0,
               **extra: Any) -> Prediction:
    return Prediction(item_id=item_id, defect_type=defect_type, defect_score=score,
                      confidence=extra.get("confidence", 0.9), bbox=bbox, bbox_frame=frame,
                      operations=ops, operation_errors=errors, latency_ms=latency,
                      uncertain=extra.get("uncertain", False))


def hand_labels() -> list[Label]:
    return [
        image_label("g1", "metal"),
        image_label("g2", "metal"),
        image_label("g3", "pcb"),
        image_label("e1", "metal", "scratch", (0.10, 0.10, 0.20, 0.20), "easy"),
        image_label("e2", "pcb", "pit", (0.50, 0.50, 0.55, 0.55), "easy"),
        image_label("h1", "metal", "crack", (0.40, 0.40, 0.50, 0.45), "hard"),
        image_label("h2", "pcb", "stain", (0.30, 0.30, 0.40, 0.40), "hard"),
        image_label("t1", "pcb", "pit", (0.70, 0.70, 0.71, 0.71), "tiny"),
        image_label("t2", "metal", "dent", (0.20, 0.20, 0.21, 0.21), "tiny"),
        sequence_label("s1", "pcb", "pit", [None, (0.50, 0.50, 0.52, 0.52), None]),
    ]


def hand_predictions() -> list[Prediction]:
    return [
        prediction("g1", "none", 0.10, latency=100),
        prediction("g2", "scratch", 0.60, ops=1, latency=300),
        prediction("g3", "none", 0.30, latency=200),
        prediction("e1", "scratch", 0.90, latency=150),
        prediction("e2", "none", 0.30, latency=120),
        prediction("h1", "crack", 0.80, ops=2, errors=1, bbox=(0.38, 0.38, 0.52, 0.47), latency=900),
        prediction("h2", "scratch", 0.70, ops=1, bbox=(0.304, 0.30, 0.40, 0.40), latency=800),
        prediction("t1", "pit", 0.95, ops=3, bbox=(0.60, 0.60, 0.70, 0.70), latency=1200),
        prediction("t2", "banana", 0.55, ops=1, errors=1, latency=700),
        prediction("s1", "pit", 0.85, ops=2, bbox=(0.49, 0.49, 0.53, 0.53), frame=1, latency=2000),
    ]


@pytest.fixture
def labels() -> list[Label]:
    return hand_labels()


@pytest.fixture
def predictions() -> list[Prediction]:
    return hand_predictions()

"""One inspection as the review page shows it: the frame's facts, the model's answer, every step
with its evidence crops (images fetched separately, by id), the zoom boxes in the order the model
drew them, the frame strip of a sequence with the selected frames marked, and the review history.
Reads only; the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer, selectinload

from foveal.dashboard.reviews import Box4, Label, current_label, model_label
from foveal.storage.models import EvidenceCrop, Inspection, Review, Step

ZOOM = "crop_image_normalized"
SELECT = "select_frames"


@dataclass(frozen=True)
class CropView:
    id: int
    width: int
    height: int
    box: Box4
    frame_index: int


@dataclass(frozen=True)
class StepView:
    index: int
    operation: str
    arguments: dict[str, Any]
    text: str
    error: str | None
    duration_ms: float
    crops: list[CropView]
    zoom_number: int | None  # 1, 2, … for the zooms in order; None for other steps


@dataclass(frozen=True)
class StripFrame:
    index: int  # 0-based in the sequence
    selected: bool
    crop_id: int | None  # an image of this frame the model saw (a selected frame), if any
    boxes: list[int] = field(default_factory=list)  # zoom numbers drawn on this frame


@dataclass(frozen=True)
class ReviewView:
    id: int
    reviewer: str
    reviewed_at: datetime
    action: str
    decision: str
    label: str  # "defect: scratch", "ok", "" for a comment
    box: Box4 | None
    note: str | None


@dataclass(frozen=True)
class InspectionView:
    id: int
    frame_id: uuid.UUID
    line: str
    station: str
    camera: str
    product: str
    part_serial: str
    captured_at: datetime
    inspected_at: datetime
    width: int | None
    height: int | None
    has_frame_image: bool
    sequence_length: int
    verdict: str
    defect_type: str
    confidence: float
    model: str
    operations: int
    latency_ms: float
    timings: dict[str, Any]
    model_box: Box4 | None
    label: Label
    steps: list[StepView]
    zooms: list[tuple[int, Box4, int]]  # (number, box, frame_index) in order
    strip: list[StripFrame]
    reviews: list[ReviewView]


def load(session: Session, inspection_id: int) -> InspectionView | None:
    inspection = session.scalars(
        select(Inspection).where(Inspection.id == inspection_id).options(
            selectinload(Inspection.frame),
            selectinload(Inspection.steps).selectinload(Step.crops).options(defer(EvidenceCrop.image)),
            selectinload(Inspection.reviews))
    ).first()
    if inspection is None:
        return None
    frame = inspection.frame
    steps, zooms = _steps(inspection.steps)
    return InspectionView(
        id=inspection.id, frame_id=inspection.frame_id, line=frame.line, station=frame.station,
        camera=frame.camera, product=frame.product, part_serial=frame.part_serial,
        captured_at=frame.captured_at, inspected_at=inspection.created_at, width=frame.width,
        height=frame.height, has_frame_image=frame.blob_key is not None,
        sequence_length=frame.sequence_length, verdict=inspection.verdict,
        defect_type=inspection.defect_type, confidence=inspection.confidence,
        model=f"{inspection.model_name}/{inspection.model_version}", operations=inspection.operations,
        latency_ms=inspection.latency_ms, timings=dict(inspection.timings),
        model_box=model_label(inspection).box, label=current_label(session, inspection),
        steps=steps, zooms=zooms, strip=_strip(frame.sequence_length, steps),
        reviews=[_review(r) for r in reversed(inspection.reviews)],
    )


def _steps(steps: list[Step]) -> tuple[list[StepView], list[tuple[int, Box4, int]]]:
    views: list[StepView] = []
    zooms: list[tuple[int, Box4, int]] = []
    for step in steps:
        crops = [CropView(c.id, c.width, c.height, (c.box_x1, c.box_y1, c.box_x2, c.box_y2), c.frame_index)
                 for c in step.crops]
        number = None
        if step.operation == ZOOM and crops:
            number = len(zooms) + 1
            zooms.extend((number, crop.box, crop.frame_index) for crop in crops[:1])
        views.append(StepView(step.index, step.operation, dict(step.arguments), step.text, step.error,
                              step.duration_ms, crops, number))
    return views, zooms


def _strip(length: int, steps: list[StepView]) -> list[StripFrame]:
    if length <= 1:
        return []
    seen: dict[int, int] = {}
    boxes: dict[int, list[int]] = {}
    for step in steps:
        for crop in step.crops:
            if step.operation == SELECT and 0 <= crop.frame_index < length:
                seen.setdefault(crop.frame_index, crop.id)
            if step.zoom_number is not None and crop.frame_index >= 0:
                boxes.setdefault(crop.frame_index, []).append(step.zoom_number)
    return [StripFrame(k, k in seen, seen.get(k), boxes.get(k, [])) for k in range(length)]


def _review(review: Review) -> ReviewView:
    if review.decision == "comment":
        label = ""
    elif review.corrected_verdict == "defect":
        label = f"defect: {review.corrected_type}"
    else:
        label = review.corrected_verdict or ""
    box = None
    if review.corrected_box_x1 is not None:
        box = (review.corrected_box_x1, review.corrected_box_y1 or 0.0, review.corrected_box_x2 or 0.0,
               review.corrected_box_y2 or 0.0)
    return ReviewView(review.id, review.reviewer, review.reviewed_at, review.action, review.decision,
                      label, box, review.note)

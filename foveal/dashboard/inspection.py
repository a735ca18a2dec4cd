"""One inspection as the review page shows it: the frame's facts, the model's answer, every step
with its evidence crops (images fetched separately, by id), the zoom boxes in the order the model
drew them, the frame strip of a sequence (every frame, the ones the model selected numbered in
the order it selected them) and the review history. Reads only; the caller owns the transaction.

For a sequence the large viewer shows one frame, `shown_frame`: the one the model's evidence box
is in (its last zoom), else the first frame it selected, else frame 1. A box a reviewer draws is
drawn on that frame, which is how the export knows which frame a reviewed box belongs to.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer, selectinload

from foveal.dashboard.reviews import Box4, Label, current_label, model_label
from foveal.storage.models import EvidenceCrop, Frame, Inspection, ModelVersion, Review, Step

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
    selection: int | None  # 1, 2, … in the order the model selected frames; None: not selected
    kept: bool  # the full frame is in the blob store (`/media/frames/{id}/{index}`)
    crop_id: int | None  # an image of this frame the model saw (a selected frame), if any
    zooms: list[tuple[int, Box4]] = field(default_factory=list)  # (zoom number, box) drawn on this frame

    @property
    def selected(self) -> bool:
        return self.selection is not None


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
    has_frame_image: bool  # the frame the viewer shows is in the blob store
    sequence_length: int
    shown_frame: int  # 0-based: the frame in the large viewer (0 for a single image)
    model_box_shown: bool  # the model's evidence box is on the shown frame
    verdict: str
    defect_type: str
    confidence: float
    model: str
    registered: str | None  # the model_versions row of that model: name, version, stage, parent
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
            selectinload(Inspection.frame).selectinload(Frame.blobs),
            selectinload(Inspection.steps).selectinload(Step.crops).options(defer(EvidenceCrop.image)),
            selectinload(Inspection.reviews),
            selectinload(Inspection.registered_model).selectinload(ModelVersion.parent))
    ).first()
    if inspection is None:
        return None
    frame = inspection.frame
    steps, zooms = _steps(inspection.steps)
    kept = {blob.position for blob in frame.blobs}
    seen = [(step.operation, [crop.frame_index for crop in step.crops]) for step in steps]
    shown = shown_frame(seen, frame.sequence_length, kept)
    box_on = zoom_frame(seen)
    return InspectionView(
        id=inspection.id, frame_id=inspection.frame_id, line=frame.line, station=frame.station,
        camera=frame.camera, product=frame.product, part_serial=frame.part_serial,
        captured_at=frame.captured_at, inspected_at=inspection.created_at, width=frame.width,
        height=frame.height, has_frame_image=shown in kept,
        sequence_length=frame.sequence_length, shown_frame=shown,
        model_box_shown=box_on is None or box_on == shown, verdict=inspection.verdict,
        defect_type=inspection.defect_type, confidence=inspection.confidence,
        model=f"{inspection.model_name}/{inspection.model_version}",
        registered=registered(inspection.registered_model), operations=inspection.operations,
        latency_ms=inspection.latency_ms, timings=dict(inspection.timings),
        model_box=model_label(inspection).box, label=current_label(session, inspection),
        steps=steps, zooms=zooms,
        strip=_strip(frame.sequence_length, steps, kept, selection_order(seen, frame.sequence_length)),
        reviews=[_review(r) for r in reversed(inspection.reviews)],
    )


def registered(row: ModelVersion | None) -> str | None:
    """How the model that made an inspection is registered, in words, for the side panel."""
    if row is None or row.stage == "served":  # `served`: known only by its Triton name and version
        return None
    words = f"{row.name} {row.version} ({row.stage}"
    if row.parent is not None:
        words += f", from {row.parent.name} {row.parent.version}"
    return words + ")"


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


def zoom_frame(steps: Iterable[tuple[str, Sequence[int]]]) -> int | None:
    """The frame (0-based) of the last zoom into a sequence frame (where the model's evidence box
    is), or None when there is none. `steps` are (operation, frame index of each crop) in order.

    >>> zoom_frame([("select_frames", [4, 2]), ("crop_image_normalized", [2]), ("answer", [])])
    2
    >>> zoom_frame([("crop_image_normalized", [-1])]) is None
    True
    """
    last = None
    for operation, frames in steps:
        if operation == ZOOM and frames and frames[0] >= 0:
            last = frames[0]
    return last


def selection_order(steps: Iterable[tuple[str, Sequence[int]]], length: int) -> dict[int, int]:
    """Frame (0-based) → its number (1, 2, …) in the order the model first selected it.

    >>> selection_order([("select_frames", [5, 1]), ("select_frames", [1, 3])], 8)
    {5: 1, 1: 2, 3: 3}
    """
    order: dict[int, int] = {}
    for operation, frames in steps:
        if operation == SELECT:
            for k in frames:
                if 0 <= k < length and k not in order:
                    order[k] = len(order) + 1
    return order


def crop_frames(session: Session, inspection_id: int) -> list[tuple[str, list[int]]]:
    """(operation, frame index of each crop) of every step of an inspection, in order: what
    `zoom_frame`, `selection_order` and `shown_frame` read."""
    rows = session.execute(
        select(Step.index, Step.operation, EvidenceCrop.frame_index)
        .outerjoin(EvidenceCrop, EvidenceCrop.step_id == Step.id)
        .where(Step.inspection_id == inspection_id).order_by(Step.index, EvidenceCrop.ordinal)).all()
    steps: dict[int, tuple[str, list[int]]] = {}
    for index, operation, frame_index in rows:
        frames = steps.setdefault(index, (operation, []))[1]
        if frame_index is not None:
            frames.append(frame_index)
    return list(steps.values())


def shown_frame(steps: Sequence[tuple[str, Sequence[int]]], length: int, kept: Collection[int]) -> int:
    """The frame the large viewer shows (see the module docstring); 0 for a single image or when
    the frame it would be was not kept.

    >>> shown_frame([("select_frames", [6, 3]), ("crop_image_normalized", [3])], 8, range(8))
    3
    >>> shown_frame([("select_frames", [6, 3])], 8, range(8)), shown_frame([], 8, range(8))
    (6, 0)
    """
    if length <= 1:
        return 0
    candidate = zoom_frame(steps)
    if candidate is None:
        candidate = next(iter(selection_order(steps, length)), 0)
    return candidate if candidate in kept else 0


def _strip(length: int, steps: list[StepView], kept: Collection[int], order: dict[int, int]
           ) -> list[StripFrame]:
    if length <= 1:
        return []
    seen: dict[int, int] = {}
    zooms: dict[int, list[tuple[int, Box4]]] = {}
    for step in steps:
        for crop in step.crops:
            if step.operation == SELECT and 0 <= crop.frame_index < length:
                seen.setdefault(crop.frame_index, crop.id)
        if step.zoom_number is not None and step.crops and step.crops[0].frame_index >= 0:
            zooms.setdefault(step.crops[0].frame_index, []).append((step.zoom_number, step.crops[0].box))
    return [StripFrame(k, order.get(k), k in kept, seen.get(k), zooms.get(k, [])) for k in range(length)]


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

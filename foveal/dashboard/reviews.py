"""Review actions on an inspection, each stored as one `reviews` row: who, when, what they did
(`action`), and the whole label after it (`corrected_verdict`, `corrected_type`, box).

Actions: `confirm` (the current label is right; an `uncertain` best guess becomes a verdict),
`reject` (a false alarm: ok / none, no box), `relabel` (another defect type, the box kept),
`box` (a drawn or adjusted defect box), `comment` (a note, the label unchanged). The latest
decisive row (not a comment) is the inspection's label. A client-generated `request_id` makes
every submission idempotent: the same key again returns the stored row and adds nothing, so a
double submit is never lost nor doubled. The caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from foveal.domain import NO_DEFECT, Taxonomy
from foveal.errors import DashboardError
from foveal.storage.models import REVIEW_ACTIONS, Inspection, Review

Box4 = tuple[float, float, float, float]
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True)
class Label:
    """What an inspection is labelled now: the model's answer, or the latest review's."""

    verdict: str
    defect_type: str
    box: Box4 | None
    source: str  # "model" or the reviewer's name
    at: datetime | None = None


@dataclass(frozen=True)
class ReviewRequest:
    action: str
    request_id: uuid.UUID
    defect_type: str | None = None
    box: Box4 | None = None
    note: str | None = None


def model_label(inspection: Inspection) -> Label:
    return Label(inspection.verdict, inspection.defect_type, _box(inspection.box_x1, inspection.box_y1,
                                                                  inspection.box_x2, inspection.box_y2),
                 "model", inspection.created_at)


def review_label(review: Review) -> Label:
    return Label(review.corrected_verdict or "ok", review.corrected_type or NO_DEFECT,
                 _box(review.corrected_box_x1, review.corrected_box_y1, review.corrected_box_x2,
                      review.corrected_box_y2), review.reviewer, review.reviewed_at)


def current_label(session: Session, inspection: Inspection) -> Label:
    latest = session.scalars(select(Review).where(Review.inspection_id == inspection.id,
                                                  Review.decision != "comment")
                             .order_by(Review.reviewed_at.desc(), Review.id.desc()).limit(1)).first()
    return model_label(inspection) if latest is None else review_label(latest)


def check_box(box: Box4) -> Box4:
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        raise DashboardError(f"box {list(box)} is not a normalized box (0 <= x1 < x2 <= 1, same for y)", 422)
    return (x1, y1, x2, y2)


def _after(action: str, label: Label, request: ReviewRequest, taxonomy: Taxonomy) -> tuple[str, Label | None]:
    """The decision and the label after `action` on `label` (None: the label is unchanged)."""
    if action == "comment":
        if not (request.note or "").strip():
            raise DashboardError("a comment needs some text", 422)
        return "comment", None
    if action == "confirm":
        verdict = label.verdict
        if verdict == "uncertain":  # confirming a best guess turns it into a verdict
            verdict = "ok" if label.defect_type == NO_DEFECT else "defect"
        box = label.box if verdict == "defect" else None
        return "confirm", Label(verdict, label.defect_type if verdict == "defect" else NO_DEFECT, box, "")
    if action == "reject":
        return "correct", Label("ok", NO_DEFECT, None, "")
    if action == "relabel":
        wanted = request.defect_type or ""
        if wanted not in taxonomy:
            raise DashboardError(f"defect type {wanted!r} is not one of {', '.join(taxonomy.names)}", 422)
        if wanted == NO_DEFECT:
            return "correct", Label("ok", NO_DEFECT, None, "")
        return "correct", Label("defect", wanted, label.box, "")
    # action == "box"
    if request.box is None:
        raise DashboardError("a box action needs a box", 422)
    kind = request.defect_type or label.defect_type
    if kind == NO_DEFECT or kind not in taxonomy:
        raise DashboardError("a defect box needs a defect type: relabel first or send defect_type", 422)
    return "correct", Label("defect", kind, check_box(request.box), "")


def record_review(session: Session, inspection_id: int, reviewer: str, request: ReviewRequest,
                  taxonomy: Taxonomy) -> tuple[Review, bool]:
    """Store the action; returns the row and whether it is new (False: this request_id was seen)."""
    if request.action not in REVIEW_ACTIONS:
        raise DashboardError(f"action {request.action!r} is not one of {', '.join(REVIEW_ACTIONS)}", 422)
    seen = session.scalars(select(Review).where(Review.request_id == request.request_id)).first()
    if seen is not None:
        return _same_request(seen, inspection_id), False
    # Serialise reviews of one inspection: each computes its label from the one before.
    inspection = session.scalars(select(Inspection).where(Inspection.id == inspection_id)
                                 .with_for_update()).first()
    if inspection is None:
        raise DashboardError(f"no inspection {inspection_id}", 404)
    decision, label = _after(request.action, current_label(session, inspection), request, taxonomy)
    box = label.box if label is not None else None
    values = dict(
        inspection_id=inspection_id, reviewer=reviewer, decision=decision, action=request.action,
        corrected_verdict=label.verdict if label else None,
        corrected_type=label.defect_type if label else None,
        corrected_box_x1=box[0] if box else None, corrected_box_y1=box[1] if box else None,
        corrected_box_x2=box[2] if box else None, corrected_box_y2=box[3] if box else None,
        note=(request.note or "").strip()[:MAX_NOTE_CHARS] or None, request_id=request.request_id,
    )
    statement = (insert(Review).values(values).on_conflict_do_nothing(index_elements=[Review.request_id])
                 .returning(Review.id))
    new_id = session.execute(statement).scalar_one_or_none()
    if new_id is None:  # a concurrent submission of the same request won the race
        seen = session.scalars(select(Review).where(Review.request_id == request.request_id)).one()
        return _same_request(seen, inspection_id), False
    row = session.get(Review, new_id)
    assert row is not None
    return row, True


def _same_request(review: Review, inspection_id: int) -> Review:
    if review.inspection_id != inspection_id:
        raise DashboardError("this request_id was already used for another inspection", 409)
    return review


def _box(x1: float | None, y1: float | None, x2: float | None, y2: float | None) -> Box4 | None:
    if x1 is None or y1 is None or x2 is None or y2 is None:
        return None
    return (x1, y1, x2, y2)

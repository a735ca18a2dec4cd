"""The review queue: filters, ordering and keyset paging over inspections.

Order: `uncertain` first, then `defect`, then (only while reviewing what is pending) `ok`
verdicts less confident than their line's threshold; inside each verdict least confident first,
the inspection id breaking ties. Each verdict is one range scan of the index
`ix_inspections_verdict_confidence_id` from the cursor `(rank, confidence, id)`, so a page costs
the same on page 1 and page 2,000 (measured in bench/dashboard_queue.py). Filters on the frame
(line, station, product) join `frames` by primary key; the review status is an anti-join on the
reviews index. The caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, select, tuple_
from sqlalchemy.orm import Session

from foveal.errors import DashboardError
from foveal.storage.models import VERDICTS, Frame, Inspection, LineThreshold, Review

RANKED: tuple[str, ...] = ("uncertain", "defect", "ok")
REVIEW_STATES: tuple[str, ...] = ("pending", "reviewed", "confirmed", "corrected", "all")


@dataclass(frozen=True)
class QueueFilters:
    """What the reviewer narrowed the queue to; empty strings mean "any"."""

    line: str = ""
    station: str = ""
    product: str = ""
    verdict: str = ""
    defect_type: str = ""
    review: str = "pending"
    model_version: str = ""
    since: date | None = None  # inspected on or after (UTC day)
    until: date | None = None  # inspected on or before (UTC day)

    @classmethod
    def parse(cls, params: dict[str, str]) -> QueueFilters:
        """From query parameters; unknown values become a DashboardError naming the parameter."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = (params.get(f.name) or "").strip()
            if f.name in ("since", "until"):
                try:
                    values[f.name] = date.fromisoformat(raw) if raw else None
                except ValueError:
                    raise DashboardError(f"{f.name}: {raw!r} is not a date (YYYY-MM-DD)", 422) from None
            elif raw or f.name != "review":
                values[f.name] = raw[:200]
        if values.get("verdict") and values["verdict"] not in VERDICTS:
            raise DashboardError(f"verdict: {values['verdict']!r} is not one of {', '.join(VERDICTS)}", 422)
        if values.get("review", "pending") not in REVIEW_STATES:
            raise DashboardError(f"review: {values['review']!r} is not one of {', '.join(REVIEW_STATES)}",
                                 422)
        return cls(**values)

    def query(self) -> dict[str, str]:
        """The non-empty filters as query parameters (for links that keep them)."""
        out = {k: (v.isoformat() if isinstance(v, date) else str(v)) for k, v in asdict(self).items() if v}
        if out.get("review") == "pending":
            del out["review"]
        return out

    def verdicts(self) -> tuple[str, ...]:
        return (self.verdict,) if self.verdict else RANKED


@dataclass(frozen=True)
class Cursor:
    """A position in queue order: after (or before) the inspection with this key."""

    rank: int
    confidence: float
    id: int

    def encode(self) -> str:
        return f"{self.rank}_{self.confidence!r}_{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            rank, confidence, ident = text.split("_")
            cursor = cls(int(rank), float(confidence), int(ident))
        except ValueError:
            raise DashboardError(f"bad page cursor {text[:40]!r}", 422) from None
        if not 0 <= cursor.rank < len(RANKED):
            raise DashboardError(f"bad page cursor {text[:40]!r}", 422)
        return cursor


@dataclass(frozen=True)
class QueueRow:
    id: int
    frame_id: uuid.UUID
    line: str
    station: str
    product: str
    verdict: str
    defect_type: str
    confidence: float
    model_version: str
    operations: int
    latency_ms: float
    created_at: datetime
    sequence_length: int
    review_action: str | None  # the latest review's action, None when never reviewed
    reviewer: str | None

    @property
    def cursor(self) -> Cursor:
        return Cursor(RANKED.index(self.verdict), self.confidence, self.id)


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    next: Cursor | None  # pass as `after` for the next page
    prev: Cursor | None  # pass as `before` for the previous page


def _latest_review(column: Any) -> Any:
    return (select(column).where(Review.inspection_id == Inspection.id)
            .order_by(Review.reviewed_at.desc(), Review.id.desc()).limit(1).scalar_subquery())


def _decisive() -> Any:
    return and_(Review.inspection_id == Inspection.id, Review.decision != "comment")


def _latest_decision() -> Any:
    return (select(Review.decision).where(_decisive())
            .order_by(Review.reviewed_at.desc(), Review.id.desc()).limit(1).scalar_subquery())


def _base(filters: QueueFilters) -> Select[*tuple[Any, ...]]:
    i, f = Inspection, Frame
    query = select(
        i.id, i.frame_id, f.line, f.station, f.product, i.verdict, i.defect_type, i.confidence,
        i.model_version, i.operations, i.latency_ms, i.created_at, f.sequence_length,
        _latest_review(Review.action).label("review_action"),
        _latest_review(Review.reviewer).label("reviewer"),
    ).join(f, f.frame_id == i.frame_id)
    for name, column in (("line", f.line), ("station", f.station), ("product", f.product),
                         ("defect_type", i.defect_type), ("model_version", i.model_version)):
        value = getattr(filters, name)
        if value:
            query = query.where(column == value)
    if filters.since is not None:
        query = query.where(i.created_at >= datetime.combine(filters.since, time.min, UTC))
    if filters.until is not None:
        end = datetime.combine(filters.until + timedelta(days=1), time.min, UTC)
        query = query.where(i.created_at < end)
    review = {
        "pending": ~exists().where(_decisive()),
        "reviewed": exists().where(_decisive()),
        "confirmed": _latest_decision() == "confirm",
        "corrected": _latest_decision() == "correct",
    }.get(filters.review)
    return query if review is None else query.where(review)


def _segment(session: Session, filters: QueueFilters, verdict: str, key: tuple[float, int] | None,
             forward: bool, limit: int) -> list[QueueRow]:
    i = Inspection
    query = _base(filters).where(i.verdict == verdict)
    if verdict == "ok" and not filters.verdict and filters.review == "pending":
        # Confident `ok` verdicts need no human; a line's threshold says what "confident" means.
        query = query.join(LineThreshold, LineThreshold.line == Frame.line).where(
            i.confidence < LineThreshold.review_below)
    if key is not None:
        position = tuple_(i.confidence, i.id)
        query = query.where(position > tuple_(*key) if forward else position < tuple_(*key))
    order = (i.confidence, i.id) if forward else (i.confidence.desc(), i.id.desc())
    rows = session.execute(query.order_by(*order).limit(limit)).all()
    return [QueueRow(**row._mapping) for row in rows]


def _scan(session: Session, filters: QueueFilters, start: Cursor | None, forward: bool,
          limit: int) -> list[QueueRow]:
    """Up to `limit` rows strictly after (forward) or before `start`, in scan order."""
    ranked = [(RANKED.index(v), v) for v in filters.verdicts()]
    if not forward:
        ranked.reverse()
    out: list[QueueRow] = []
    for rank, verdict in ranked:
        if start is not None and (rank < start.rank if forward else rank > start.rank):
            continue
        key = (start.confidence, start.id) if start is not None and rank == start.rank else None
        out += _segment(session, filters, verdict, key, forward, limit - len(out))
        if len(out) >= limit:
            break
    return out


def queue_page(session: Session, filters: QueueFilters, *, after: Cursor | None = None,
               before: Cursor | None = None, limit: int = 50) -> QueuePage:
    """One page of the queue after `after`, or before `before`, or the first page."""
    if before is not None:
        rows = _scan(session, filters, before, False, limit + 1)
        more_before = len(rows) > limit
        rows = rows[:limit][::-1]
        return QueuePage(rows, rows[-1].cursor if rows else None,
                         rows[0].cursor if rows and more_before else None)
    rows = _scan(session, filters, after, True, limit + 1)
    more_after = len(rows) > limit
    rows = rows[:limit]
    prev = rows[0].cursor if rows and _scan(session, filters, rows[0].cursor, False, 1) else None
    return QueuePage(rows, rows[-1].cursor if rows and more_after else None, prev)


def neighbour(session: Session, filters: QueueFilters, key: Cursor, forward: bool) -> int | None:
    """The id of the inspection next to `key` in queue order (it need not be in the queue itself)."""
    rows = _scan(session, filters, key, forward, 1)
    return rows[0].id if rows else None


def cursor_of(session: Session, inspection_id: int) -> Cursor | None:
    row = session.execute(select(Inspection.verdict, Inspection.confidence)
                          .where(Inspection.id == inspection_id)).one_or_none()
    if row is None:
        return None
    return Cursor(RANKED.index(row.verdict), row.confidence, inspection_id)


def filter_choices(session: Session) -> dict[str, list[str]]:
    """Distinct values for the filter menus (each read from an indexed column)."""
    def distinct(column: Any) -> list[str]:
        return [str(v) for v in session.scalars(select(column).distinct().order_by(column).limit(500))]

    return {"line": distinct(Frame.line), "station": distinct(Frame.station),
            "product": distinct(Frame.product), "model_version": distinct(Inspection.model_version),
            "defect_type": distinct(Inspection.defect_type)}


def with_review(filters: QueueFilters, review: str) -> QueueFilters:
    return replace(filters, review=review)

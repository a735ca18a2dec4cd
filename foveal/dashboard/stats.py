"""The statistics page's figures, straight from PostgreSQL for one time window.

Per time bucket (hours for windows up to two days, else days; UTC): the defect rate per line
and per defect type (share of inspections with that verdict and type), the false-reject rate from
reviews (of reviewed inspections the model called defects, the share a reviewer labelled ok),
the rate of pixel-space reasoning (RaPR: share of inspections that used an operation) and
operations per inspection, and latency p50 / p95. Over the whole window: the confusion matrix of
the model's answer against the reviewer's label (latest decisive review), and totals. The
caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

LATEST = """latest AS (
    SELECT DISTINCT ON (inspection_id) inspection_id, corrected_verdict, corrected_type
    FROM reviews WHERE decision <> 'comment' ORDER BY inspection_id, reviewed_at DESC, id DESC)"""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    bucket: str  # "hour" | "day"

    @classmethod
    def around(cls, session: Session, since: date | None, until: date | None) -> Window:
        """The asked-for days, else the 30 days up to the newest inspection."""
        newest = session.scalar(text("SELECT max(created_at) FROM inspections")) or datetime.now(UTC)
        end = (datetime.combine(until + timedelta(days=1), time.min, UTC) if until
               else newest + timedelta(seconds=1))
        start = datetime.combine(since, time.min, UTC) if since else end - timedelta(days=30)
        if since is None:  # start at the oldest data inside the default window, so the axis is used
            oldest = session.scalar(text("SELECT min(created_at) FROM inspections WHERE created_at >= :s"),
                                    {"s": start})
            start = max(start, oldest or start)
        return cls(start, end, "hour" if end - start <= timedelta(days=2) else "day")


@dataclass
class Series:
    """name → {bucket: value}, over the window's buckets."""

    buckets: list[datetime]
    values: dict[str, dict[datetime, float]] = field(default_factory=dict)


@dataclass
class Stats:
    window: Window
    totals: dict[str, float]
    defect_rate_by_line: Series
    defect_rate_by_type: Series
    false_reject: Series
    rapr: Series
    latency: Series
    confusion_rows: list[str]
    confusion_cols: list[str]
    confusion: dict[tuple[str, str], int]


# The SQL below is assembled from the constants above only (S608 does not see that); every value
# travels as a bound parameter.
def _rows(session: Session, sql: str, window: Window) -> list[Any]:
    params = {"start": window.start, "end": window.end, "bucket": window.bucket}
    return list(session.execute(text(sql), params))


BUCKET = "date_trunc(:bucket, i.created_at AT TIME ZONE 'UTC')"
IN_WINDOW = "i.created_at >= :start AND i.created_at < :end"


def compute(session: Session, window: Window) -> Stats:
    volume = {r.b: r.n for r in _rows(session, f"SELECT {BUCKET} AS b, count(*) AS n FROM inspections i "
                                                f"WHERE {IN_WINDOW} GROUP BY 1", window)}
    buckets = sorted(volume)
    by_line, by_type, false_reject, rapr, latency = (Series(buckets) for _ in range(5))
    for r in _rows(session, f"""SELECT {BUCKET} AS b, f.line, count(*) AS n,
            count(*) FILTER (WHERE i.verdict = 'defect') AS d
            FROM inspections i JOIN frames f ON f.frame_id = i.frame_id WHERE {IN_WINDOW} GROUP BY 1, 2""",
                   window):
        by_line.values.setdefault(r.line, {})[r.b] = r.d / r.n
    for r in _rows(session, f"""SELECT {BUCKET} AS b, i.defect_type AS kind, count(*) AS d FROM inspections i
            WHERE {IN_WINDOW} AND i.verdict = 'defect' GROUP BY 1, 2""", window):
        by_type.values.setdefault(r.kind, {})[r.b] = r.d / volume[r.b]
    for r in _rows(session, f"""WITH {LATEST} SELECT {BUCKET} AS b, count(*) AS n,
            count(*) FILTER (WHERE l.corrected_verdict = 'ok') AS fr
            FROM inspections i JOIN latest l ON l.inspection_id = i.id
            WHERE {IN_WINDOW} AND i.verdict = 'defect' GROUP BY 1""", window):
        false_reject.values.setdefault("false-reject rate", {})[r.b] = r.fr / r.n
    for r in _rows(session, f"""SELECT {BUCKET} AS b, avg((i.operations > 0)::int) AS rapr,
            avg(i.operations) AS ops,
            percentile_cont(0.5) WITHIN GROUP (ORDER BY i.latency_ms) AS p50,
            percentile_cont(0.95) WITHIN GROUP (ORDER BY i.latency_ms) AS p95
            FROM inspections i WHERE {IN_WINDOW} GROUP BY 1""", window):
        rapr.values.setdefault("RaPR", {})[r.b] = float(r.rapr)
        rapr.values.setdefault("operations / inspection", {})[r.b] = float(r.ops)
        latency.values.setdefault("p50", {})[r.b] = float(r.p50)
        latency.values.setdefault("p95", {})[r.b] = float(r.p95)
    rows, cols, confusion = _confusion(session, window)
    return Stats(window, _totals(session, window), by_line, by_type, false_reject, rapr, latency,
                 rows, cols, confusion)


def _confusion(session: Session, window: Window) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    counts: dict[tuple[str, str], int] = {}
    for r in _rows(session, f"""WITH {LATEST} SELECT
            CASE WHEN i.verdict = 'uncertain' THEN 'uncertain' WHEN i.verdict = 'ok' THEN 'none'
                 ELSE i.defect_type END AS model,
            CASE WHEN l.corrected_verdict = 'ok' THEN 'none' ELSE l.corrected_type END AS reviewer,
            count(*) AS n
            FROM inspections i JOIN latest l ON l.inspection_id = i.id WHERE {IN_WINDOW} GROUP BY 1, 2""",
                   window):
        counts[(r.model, r.reviewer)] = int(r.n)
    types = sorted({m for m, _ in counts} | {v for _, v in counts}, key=lambda t: (t != "none", t))
    return types, [t for t in types if t != "uncertain"], counts


def _totals(session: Session, window: Window) -> dict[str, float]:
    r = _rows(session, f"""WITH {LATEST} SELECT count(*) AS n,
            count(*) FILTER (WHERE i.verdict = 'defect') AS defects,
            count(*) FILTER (WHERE i.verdict = 'uncertain') AS uncertain,
            count(l.inspection_id) AS reviewed,
            count(*) FILTER (WHERE i.verdict = 'defect' AND l.inspection_id IS NOT NULL) AS reviewed_defects,
            count(*) FILTER (WHERE i.verdict = 'defect' AND l.corrected_verdict = 'ok') AS false_rejects,
            coalesce(avg((i.operations > 0)::int), 0) AS rapr, coalesce(avg(i.operations), 0) AS ops,
            coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY i.latency_ms), 0) AS p95
            FROM inspections i LEFT JOIN latest l ON l.inspection_id = i.id WHERE {IN_WINDOW}""", window)[0]
    out = {k: float(v) for k, v in r._mapping.items()}
    reviewed_defects = out["reviewed_defects"]
    out["false_reject_rate"] = out["false_rejects"] / reviewed_defects if reviewed_defects else 0.0
    out["defect_rate"] = out["defects"] / out["n"] if out["n"] else 0.0
    return out

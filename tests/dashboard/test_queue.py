"""The review queue on the real PostgreSQL: order (uncertain, then defects least confident first,
then `ok` under the line's threshold), every filter, keyset paging that visits each row exactly
once in both directions, the neighbour links, and the query plan using the queue index.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_queue.py`.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from foveal.dashboard import queue as q
from foveal.dashboard import sample
from foveal.storage.models import LineThreshold
from tests.dashboard.conftest import Env, sign_in

N = 400


@pytest.fixture(scope="module")
def seeded(env: Env) -> Env:
    with env.sessions() as session, session.begin():
        sample.bulk_seed(session, N, datetime.now(UTC) - timedelta(days=2))
        session.execute(text("ANALYZE"))
    return env


def _all(env: Env, filters: q.QueueFilters, limit: int = 7) -> list[q.QueueRow]:
    rows: list[q.QueueRow] = []
    after = None
    with env.sessions() as session:
        while True:
            page = q.queue_page(session, filters, after=after, limit=limit)
            rows += page.rows
            if page.next is None:
                return rows
            after = page.next


def test_order_is_uncertain_then_defects_by_confidence(seeded: Env) -> None:
    rows = _all(seeded, q.QueueFilters())
    verdicts = [r.verdict for r in rows]
    assert set(verdicts) == {"uncertain", "defect"}  # no line threshold yet: no ok verdicts
    assert verdicts == sorted(verdicts, key=q.RANKED.index)
    for verdict in ("uncertain", "defect"):
        keys = [(r.confidence, r.id) for r in rows if r.verdict == verdict]
        assert keys == sorted(keys)
    with seeded.sessions() as session:
        expected = session.scalar(text("SELECT count(*) FROM inspections WHERE verdict <> 'ok'"))
    assert len(rows) == expected


def test_line_threshold_adds_unconfident_ok_verdicts_last(seeded: Env) -> None:
    with seeded.sessions() as session, session.begin():
        session.merge(LineThreshold(line="line-2", review_below=0.3, updated_by="test"))
    try:
        rows = _all(seeded, q.QueueFilters())
        oks = [r for r in rows if r.verdict == "ok"]
        assert oks and all(r.line == "line-2" and r.confidence < 0.3 for r in oks)
        assert [r.verdict for r in rows][-len(oks) :] == ["ok"] * len(oks)
    finally:
        with seeded.sessions() as session, session.begin():
            session.execute(text("DELETE FROM line_thresholds"))


def test_paging_forward_and_back_visits_each_row_once(seeded: Env) -> None:
    filters = q.QueueFilters(review="all")
    forward = _all(seeded, filters, limit=13)
    assert len({r.id for r in forward}) == len(forward) == N
    backward: list[q.QueueRow] = []
    with seeded.sessions() as session:
        page = q.queue_page(session, filters, before=forward[-1].cursor, limit=13)
        backward = [*page.rows, forward[-1]]
        while page.prev is not None:
            page = q.queue_page(session, filters, before=page.prev, limit=13)
            backward = page.rows + backward
    assert [r.id for r in backward] == [r.id for r in forward]


@pytest.mark.parametrize(
    "name, value",
    [
        ("line", "line-3"),
        ("station", "station-5"),
        ("product", "pcb"),
        ("verdict", "uncertain"),
        ("defect_type", "crack"),
        ("model_version", "2"),
    ],
)
def test_each_filter_keeps_only_matching_rows(seeded: Env, name: str, value: str) -> None:
    rows = _all(seeded, q.QueueFilters(review="all", **{name: value}), limit=50)
    assert rows and all(str(getattr(r, name)) == value for r in rows)


def test_date_range_filter(seeded: Env) -> None:
    with seeded.sessions() as session:
        day = session.scalar(text("SELECT min(created_at) FROM inspections")).date()
    rows = _all(seeded, q.QueueFilters(review="all", since=day, until=day), limit=50)
    assert rows and all(r.created_at.astimezone(UTC).date() == day for r in rows)
    later = _all(seeded, q.QueueFilters(review="all", since=day + timedelta(days=1)), limit=50)
    assert not {r.id for r in rows} & {r.id for r in later}


def test_neighbour_is_the_next_row_in_queue_order(seeded: Env) -> None:
    rows = _all(seeded, q.QueueFilters())[:5]
    with seeded.sessions() as session:
        for a, b in itertools.pairwise(rows):
            assert q.neighbour(session, q.QueueFilters(), a.cursor, True) == b.id
            assert q.neighbour(session, q.QueueFilters(), b.cursor, False) == a.id


def test_queue_scan_uses_the_queue_index(seeded: Env) -> None:
    # Sequential scans off, so the plan shows what PostgreSQL *can* use on a tiny table.
    statement = (
        q._base(q.QueueFilters())
        .where(text("inspections.verdict = 'defect'"))
        .order_by(text("inspections.confidence, inspections.id"))
        .limit(50)
    )
    with seeded.sessions() as session:
        session.execute(text("SET enable_seqscan = off"))
        compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in session.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_inspections_verdict_confidence_id" in plan


def test_queue_page_and_json_and_bad_input(seeded: Env, client: TestClient) -> None:
    seeded.add_user("qviewer")
    sign_in(client, "qviewer")
    page = client.get("/", params={"line": "line-1"})
    assert page.status_code == 200 and "line-1 · station" in page.text and "line-2 · station" not in page.text
    data = client.get("/api/queue", params={"verdict": "uncertain"}).json()
    assert data["rows"] and {r["verdict"] for r in data["rows"]} == {"uncertain"}
    assert client.get("/api/queue", params={"after": data["next"]}).status_code == 200
    assert client.get("/api/queue", params={"verdict": "maybe"}).status_code == 422
    assert client.get("/api/queue", params={"after": "garbage"}).status_code == 422

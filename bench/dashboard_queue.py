"""Review-queue paging at 100,000 inspections: how long one page takes, first page and deep pages,
with and without filters, through the dashboard's own query (`foveal.dashboard.queue`) and as the
whole HTTP page (sign-in cookie, query, template) through the app.

An embedded PostgreSQL of its own (the stack's `postgres` part on a free port, temporary home),
migrated, seeded with `sample.bulk_seed` (10 % uncertain, 30 % defect, 60 % ok; 4 lines,
12 stations, 5 products, 2 model versions; 1,000 reviews), ANALYZEd. Each case runs `--repeats`
times after one warm-up; the table shows median and p95 in ms, and rows returned. Prints a table
and, as its last line, one JSON object with the figures, the git commit and the machine.

Run: `.venv/bin/python bench/dashboard_queue.py [--rows 100000] [--repeats 30]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from foveal.dashboard import queue as q
from foveal.dashboard import sample, users
from foveal.settings import load_settings
from foveal.stack import Stack
from foveal.storage.database import make_engine, session_factory

PAGE = 50


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "foveal/dashboard", "bench"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, float, int]:
    fn()
    samples, rows = [], 0
    for _ in range(repeats):
        began = time.perf_counter()
        rows = fn()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="foveal-bench-queue-") as home:
        settings = load_settings(
            home=Path(home),
            postgres_port=free_port(),
            database_url="",
            kafka_bootstrap="",
            triton_url="",
            dashboard_secret_key="b" * 40,
        )
        stack = Stack(settings, parts=["postgres"])
        stack.up()
        try:
            results = run(settings, args.rows, args.repeats)
        finally:
            stack.down()
    print(f"{'case':<52} {'median ms':>10} {'p95 ms':>8} {'rows':>6}")
    for name, (median, p95, rows) in results.items():
        print(f"{name:<52} {median:>10.2f} {p95:>8.2f} {rows:>6}")
    print(
        json.dumps(
            {
                "benchmark": "dashboard_queue",
                "rows": args.rows,
                "page": PAGE,
                "repeats": args.repeats,
                "cases": {
                    k: {"median_ms": round(v[0], 3), "p95_ms": round(v[1], 3), "rows": v[2]}
                    for k, v in results.items()
                },
                "commit": git_commit(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
            }
        )
    )


def run(settings: object, rows: int, repeats: int) -> dict[str, tuple[float, float, int]]:
    from fastapi.testclient import TestClient

    from foveal.dashboard import create_app

    url = settings.postgres_url  # type: ignore[attr-defined]
    engine = make_engine(url)
    sessions = session_factory(engine)
    began = time.perf_counter()
    with sessions() as session, session.begin():
        sample.bulk_seed(session, rows, datetime.now(UTC) - timedelta(days=30))
        users.add_user(session, "bench", "bench-password", "reviewer")
        session.execute(
            text("""INSERT INTO reviews (inspection_id, reviewer, decision, action, corrected_verdict,
                                corrected_type)
                                SELECT id, 'bench', 'confirm', 'confirm', 'defect', defect_type
                                FROM inspections WHERE verdict = 'defect' ORDER BY id LIMIT 1000""")
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    print(f"seeded {rows} inspections in {time.perf_counter() - began:.1f} s")
    with sessions() as session:
        deep = _deep_cursor(session, rows)
        day = session.scalar(text("SELECT (min(created_at) + interval '1 day')::date FROM inspections"))
    cases: dict[str, Callable[[], int]] = {}

    def page(filters: q.QueueFilters, after: q.Cursor | None = None) -> Callable[[], int]:
        def go() -> int:
            with sessions() as session:
                return len(q.queue_page(session, filters, after=after, limit=PAGE).rows)

        return go

    cases["first page (pending)"] = page(q.QueueFilters())
    cases["deep page, half-way through all 100k (review=all)"] = page(q.QueueFilters(review="all"), deep)
    cases["filter line"] = page(q.QueueFilters(line="line-3"))
    cases["filter station + verdict defect"] = page(q.QueueFilters(station="station-7", verdict="defect"))
    cases["filter defect type + model version"] = page(q.QueueFilters(defect_type="crack", model_version="2"))
    cases["filter date range (one day)"] = page(
        q.QueueFilters(review="all", since=date.fromisoformat(str(day)), until=date.fromisoformat(str(day)))
    )
    cases["filter reviewed (1,000 of 100k)"] = page(q.QueueFilters(review="reviewed"))

    def neighbour() -> int:
        with sessions() as session:
            return int(q.neighbour(session, q.QueueFilters(review="all"), deep, True) is not None)

    cases["next inspection (neighbour)"] = neighbour
    with TestClient(create_app(settings)) as client:  # type: ignore[arg-type]
        token = client.get("/login").text.split('name="csrf-token" content="')[1][:64]
        client.post("/login", data={"username": "bench", "password": "bench-password", "csrf_token": token})

        def http(params: dict[str, str]) -> Callable[[], int]:
            def go() -> int:
                answer = client.get("/", params=params)
                assert answer.status_code == 200
                return answer.text.count("<tr data-href")

            return go

        cases["HTTP GET / (whole page)"] = http({})
        cases["HTTP GET / deep page"] = http({"review": "all", "after": deep.encode()})
        results = {name: timed(fn, repeats) for name, fn in cases.items()}
    engine.dispose()
    return results


def _deep_cursor(session: object, rows: int) -> q.Cursor:
    row = session.execute(
        text("""SELECT verdict, confidence, id FROM inspections  -- queue order, all verdicts
        ORDER BY array_position(ARRAY['uncertain', 'defect', 'ok'], verdict), confidence, id
        OFFSET :n LIMIT 1"""),
        {"n": rows // 2},
    ).one()  # type: ignore[attr-defined]
    return q.Cursor(q.RANKED.index(row.verdict), row.confidence, row.id)


if __name__ == "__main__":
    main()

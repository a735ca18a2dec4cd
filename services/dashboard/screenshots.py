"""Screenshots of the review dashboard for the README, taken with Debian's chromium (Playwright,
headless) on realistic data: an embedded PostgreSQL of its own (the stack's `postgres` part on a
free port, temporary home), 48 rendered plant frames (1024 px, five products, every defect type)
with scripted inspections written through the ingest worker's write path, plus 6,000 light
inspections (no images) over the two weeks before, already reviewed by two reviewers, so the
statistics have history. Writes docs/images/dashboard-{queue,inspection,stats}.jpg.

The inspections are scripted (zooms around the true defect, sometimes a wrong zoom first), not a
model's output: the committed checkpoint does not find defects yet (docs/model.md).

Run: `.venv/bin/python services/dashboard/screenshots.py [--out docs/images]`
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from foveal import blobs
from foveal.dashboard import create_app, sample, users
from foveal.plant.render import FrameSpec, render_frame
from foveal.plant.sequence import SequenceSpec, render_sequence
from foveal.settings import load_settings
from foveal.stack import Stack
from foveal.storage.database import make_engine, session_factory

CHROMIUM = "/usr/bin/chromium"
PRODUCTS = ("brushed_metal", "cast_part", "pcb", "textile", "painted_panel")
DEFECTS = ("scratch", "crack", "pit", "stain", "burn", "dent", "none", "none")
PASSWORD = "screenshots-only"  # noqa: S105 (a throw-away database)
# History with some texture: per-line defect rates (line-3 drifts up in the second week), a
# type mix, confidences and latencies drawn at random (seeded), then reviewed.
HISTORY_SQL = """
SELECT setseed(0.42);
WITH drawn AS (
    SELECT i.id, random() AS u, random() AS c, random() AS t, random() AS l, f.line,
           extract(epoch FROM interval '14 days' - i.id * interval '200 seconds') / 86400 AS age
    FROM inspections i JOIN frames f ON f.frame_id = i.frame_id),
rates AS (
    SELECT id, u, c, t, l, age,
           CASE line WHEN 'line-1' THEN 0.06 WHEN 'line-2' THEN 0.11 WHEN 'line-4' THEN 0.05
                ELSE 0.07 + greatest(0, 7 - age) * 0.012 END AS rate FROM drawn)
UPDATE inspections i SET
    created_at = now() - interval '14 days' + i.id * interval '200 seconds',
    verdict = CASE WHEN r.u < r.rate THEN 'defect' WHEN r.u < r.rate + 0.06 THEN 'uncertain' ELSE 'ok' END,
    defect_type = CASE WHEN r.u >= r.rate + 0.06 THEN 'none'
                       ELSE (ARRAY['scratch', 'scratch', 'scratch', 'stain', 'stain', 'pit', 'crack', 'dent',
                                   'burn'])[1 + floor(r.t * 9)::int] END,
    confidence = CASE WHEN r.u < r.rate THEN 0.6 + 0.39 * r.c WHEN r.u < r.rate + 0.06 THEN 0.3 + 0.3 * r.c
                      ELSE 0.7 + 0.3 * r.c END,
    operations = CASE WHEN r.u < r.rate + 0.06 THEN 1 + floor(r.l * 2)::int
                      ELSE (r.l < 0.35)::int END,
    latency_ms = 230 + 160 * r.l * r.l
                 + 110 * (CASE WHEN r.u < r.rate + 0.06 THEN 1.5 ELSE (r.l < 0.35)::int END)
                 + 200 * (r.c > 0.97)::int
FROM rates r WHERE r.id = i.id
"""
REVIEWS_SQL = """
INSERT INTO reviews (inspection_id, reviewer, reviewed_at, decision, action, corrected_verdict,
                     corrected_type)
SELECT i.id, (ARRAY['mara', 'jonas'])[i.id % 2 + 1], i.created_at + interval '20 minutes',
       CASE WHEN x.fa OR x.flip THEN 'correct' ELSE 'confirm' END,
       CASE WHEN x.fa THEN 'reject' WHEN x.flip THEN 'relabel' ELSE 'confirm' END,
       CASE WHEN x.fa OR (i.verdict = 'uncertain' AND i.defect_type = 'none') THEN 'ok'
            WHEN i.verdict = 'ok' THEN 'ok' ELSE 'defect' END,
       CASE WHEN x.fa THEN 'none' WHEN x.flip THEN (ARRAY['stain', 'pit', 'scratch'])[1 + (i.id % 3)]
            ELSE i.defect_type END
FROM inspections i,
     LATERAL (SELECT i.verdict = 'defect' AND random() < 0.08 + 0.1 * (i.confidence < 0.7)::int AS fa,
                                    i.verdict <> 'ok' AND random() < 0.12 AS flip) x
WHERE i.verdict <> 'ok' OR random() < 0.15"""


def seed(settings_home: Path, url: str) -> tuple[Callable[[int], None], str]:
    """Seed the database; returns a function that writes `n` more frames (for the live feed) and
    the inspection id of the one sequence."""
    settings = load_settings(home=settings_home, database_url=url, kafka_bootstrap="", triton_url="")
    engine = make_engine(url)
    sessions = session_factory(engine)
    store = blobs.store_for(settings)
    with sessions() as session, session.begin():
        users.add_user(session, "mara", PASSWORD, "admin")
        users.add_user(session, "jonas", PASSWORD, "reviewer")
        sample.bulk_seed(session, 6000, datetime.now(UTC) - timedelta(days=14), first=1)
        session.execute(text(HISTORY_SQL))
        session.execute(text(REVIEWS_SQL))
    rng = random.Random(7)

    def add(k: int) -> None:
        product, defect = PRODUCTS[k % len(PRODUCTS)], DEFECTS[k % len(DEFECTS)]
        rendered = render_frame(FrameSpec(product, defect, "easy", size=1024, seed=100 + k))
        uncertain = k % 7 == 3
        wrong = "stain" if k % 11 == 3 and defect not in ("stain", "none") else None
        inspection = sample.scripted(
            rendered, rng, uncertain=uncertain, wrong_type=wrong, model_version=("1", "2")[k % 4 == 0]
        )
        line = f"line-{k % 3 + 1}"
        height, width = rendered.image.shape[:2]
        sample.write_inspection(
            sessions,
            store,
            sample.png(rendered.image),
            width,
            height,
            product,
            sample.Where(line, f"station-{k % 6 + 1}"),
            inspection,
        )

    for k in range(48):
        add(k)
    # one sequence, written last so it opens the pending queue's defects by recency
    rendered_seq = render_sequence(SequenceSpec("cast_part", "crack", "easy", frames=8, size=768, seed=5))
    height, width = rendered_seq.frames[0].shape[:2]
    frame_id = sample.write_inspection(sessions, store, [sample.png(f) for f in rendered_seq.frames], width,
                                       height, "cast_part", sample.Where("line-1", "station-2"),
                                       sample.scripted_sequence(rendered_seq, random.Random(3)))
    with sessions() as session:
        sequence_id = str(session.execute(text("SELECT id FROM inspections WHERE frame_id = :f"),
                                          {"f": frame_id}).scalar_one())
    return (lambda n: [add(48 + k) for k in range(n)] and None), sequence_id


def shoot(base: str, out: Path, add: Callable[[int], None], sequence_id: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "mara")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#queue")
        page.wait_for_function("document.querySelector('#live-dot').className.includes('on')")
        add(4)  # frames committed while the page is open arrive in the live feed
        page.wait_for_function("document.querySelectorAll('#live-feed li').length >= 4")
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.screenshot(path=str(out / "dashboard-queue.jpg"), type="jpeg", quality=88)
        defect_row = (
            page.locator("#queue tbody tr", has=page.locator(".badge.defect"))
            .filter(has=page.locator("td:nth-child(8)", has_text="2"))
            .filter(has_not=page.locator(".tag", has_text="seq"))  # the sequence gets its own shot
            .first
        )
        defect_row.click()
        page.wait_for_selector("#frame-img")
        page.wait_for_function("document.querySelector('#frame-img').complete")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "dashboard-inspection.jpg"), type="jpeg", quality=88, full_page=True)
        page.goto(f"{base}/inspections/{sequence_id}")
        page.wait_for_selector("#frame-img")
        page.wait_for_function("document.querySelector('#frame-img').complete")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "dashboard-sequence.jpg"), type="jpeg", quality=88, full_page=True)
        page.goto(f"{base}/stats")
        page.wait_for_selector("svg.chart")
        page.screenshot(path=str(out / "dashboard-stats.jpg"), type="jpeg", quality=88, full_page=True)
        browser.close()


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="foveal-shots-") as home:
        pg_port, port = free_ports(2)
        pg_settings = load_settings(
            home=Path(home) / "stack",
            postgres_port=pg_port,
            database_url="",
            kafka_bootstrap="",
            triton_url="",
        )
        stack = Stack(pg_settings, parts=["postgres"])
        stack.up()
        try:
            url = pg_settings.postgres_url
            add, sequence_id = seed(Path(home), url)
            settings = load_settings(home=Path(home), database_url=url, kafka_bootstrap="", triton_url="")
            server = uvicorn.Server(
                uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            while not server.started:
                time.sleep(0.05)
            try:
                args.out.mkdir(parents=True, exist_ok=True)
                shoot(f"http://127.0.0.1:{port}", args.out, add, sequence_id)
            finally:
                server.should_exit = True
                thread.join(timeout=10)
        finally:
            stack.down()
    logging.info("screenshots written to %s", args.out)


if __name__ == "__main__":
    main()

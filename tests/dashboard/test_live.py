"""The live feed on a real uvicorn server and the real PostgreSQL: a frame written through the
pipeline's write path (one transaction with the NOTIFY) arrives as a server-sent event within
2 s of its commit, and a reconnect with `Last-Event-ID` first gets what it missed.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_live.py`.
"""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest

from tests.dashboard.conftest import Env, sign_in

pytestmark = pytest.mark.slow


def _events(
    base: str,
    cookies: httpx.Cookies,
    headers: dict[str, str],
    out: queue.Queue[dict[str, object]],
    stop: threading.Event,
) -> None:
    try:
        _read(base, cookies, headers, out, stop)
    except httpx.HTTPError:
        if not stop.is_set():  # the server going away at the end of the test is expected
            raise


def _read(
    base: str,
    cookies: httpx.Cookies,
    headers: dict[str, str],
    out: queue.Queue[dict[str, object]],
    stop: threading.Event,
) -> None:
    with (
        httpx.Client(base_url=base, cookies=cookies, timeout=30) as http,
        http.stream("GET", "/live", headers=headers) as stream,
    ):
        event: dict[str, object] = {}
        for line in stream.iter_lines():
            if stop.is_set():
                return
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                out.put(event)
                event = {}


def _signed_in(base: str, name: str) -> httpx.Cookies:
    with httpx.Client(base_url=base) as http:
        sign_in(http, name)  # type: ignore[arg-type]
        return http.cookies


def _wait_listening(base: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{base}/healthz").json()["live_feed"] is not True:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_new_inspection_arrives_within_two_seconds_and_reconnect_catches_up(env: Env, server: str) -> None:
    env.add_user("watcher")
    cookies = _signed_in(server, "watcher")
    _wait_listening(server)
    got: queue.Queue[dict[str, object]] = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(server, cookies, {}, got, stop), daemon=True)
    reader.start()
    time.sleep(0.5)  # the stream is open
    written = time.monotonic()
    inspection = env.inspection(seed=31, size=256)
    event = got.get(timeout=2.0)
    assert time.monotonic() - written < 2.0
    assert event["id"] == inspection
    data = event["data"]
    assert isinstance(data, dict) and data["verdict"] in ("ok", "defect", "uncertain")

    # A browser that was away: it says what it saw last and gets the rest, oldest first.
    missed = [env.inspection(seed=32 + k, size=256) for k in range(2)]
    again: queue.Queue[dict[str, object]] = queue.Queue()
    second = threading.Thread(
        target=_events, args=(server, cookies, {"Last-Event-ID": str(inspection)}, again, stop), daemon=True
    )
    second.start()
    assert [again.get(timeout=5)["id"] for _ in missed] == missed
    stop.set()

"""Fixtures of the dashboard tests: a real embedded PostgreSQL (the `postgres` part of the stack,
started by the same code as `foveal stack up`, on a free port under a temporary home), a fresh
migrated database per module, the dashboard app in process (`TestClient`) or as a real uvicorn
server on a free port (live feed, browser), users, and inspections of frames and of sequences
written through the pipeline's write path (`foveal.dashboard.sample.write_inspection`).
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from foveal import blobs
from foveal.dashboard import create_app, sample, users
from foveal.plant.render import FrameSpec, render_frame
from foveal.plant.sequence import RenderedSequence, SequenceSpec, render_sequence
from foveal.settings import Settings, load_settings
from foveal.stack import Stack
from foveal.storage import migrate
from foveal.storage import repository as repo
from foveal.storage.database import make_engine, session_factory
from tests.conftest import embedded_settings, free_ports

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def dashboard_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = embedded_settings(tmp_path_factory.mktemp("dashboard-pg"))
    stack = Stack(settings, parts=["postgres"])
    try:
        stack.up()
        yield settings
    finally:
        stack.down()


def _fresh_database(server_settings: Settings) -> tuple[str, str]:
    server = make_url(server_settings.postgres_url)
    name = f"d_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    return url, admin


@dataclass
class Env:
    """One migrated database and the dashboard's settings for it."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: blobs.BlobStore

    def add_user(self, name: str, role: str = "reviewer") -> str:
        with self.sessions() as session, session.begin():
            users.add_user(session, name, PASSWORD, role)
        return name

    def inspection(
        self,
        product: str = "brushed_metal",
        defect: str = "scratch",
        *,
        line: str = "line-1",
        station: str = "station-1",
        seed: int = 0,
        uncertain: bool = False,
        size: int = 256,
        model_version: str = "1",
    ) -> int:
        """A rendered frame, a scripted inspection, written as ingest writes; returns the inspection id."""
        rendered = render_frame(FrameSpec(product, defect, "easy", size=size, seed=seed))
        inspection = sample.scripted(
            rendered, random.Random(seed), uncertain=uncertain, model_version=model_version
        )
        h, w = rendered.image.shape[:2]
        frame_id = sample.write_inspection(
            self.sessions,
            self.store,
            sample.png(rendered.image),
            w,
            h,
            product,
            sample.Where(line, station),
            inspection,
        )
        return self._inspection_of(frame_id)

    def sequence(
        self,
        product: str = "brushed_metal",
        defect: str = "scratch",
        *,
        line: str = "line-seq",
        seed: int = 0,
        frames: int = 8,
        size: int = 256,
    ) -> tuple[int, RenderedSequence, repo.NewInspection]:
        """A rendered sequence, a scripted inspection (select_frames, a zoom, the answer), written
        as ingest writes; returns the inspection id, what was rendered and what was written."""
        rendered = render_sequence(SequenceSpec(product, defect, "easy", frames=frames, size=size, seed=seed))
        inspection = sample.scripted_sequence(rendered, random.Random(seed))
        h, w = rendered.frames[0].shape[:2]
        frame_id = sample.write_inspection(
            self.sessions,
            self.store,
            [sample.png(f) for f in rendered.frames],
            w,
            h,
            product,
            sample.Where(line, "station-seq"),
            inspection,
        )
        return self._inspection_of(frame_id), rendered, inspection

    def _inspection_of(self, frame_id: uuid.UUID) -> int:
        with self.sessions() as session, session.begin():
            found = repo.find_inspection(session, frame_id)
            assert found is not None
            return found.id


@pytest.fixture(scope="module")
def env(dashboard_postgres: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    url, admin = _fresh_database(dashboard_postgres)
    home = tmp_path_factory.mktemp("dashboard-home")
    settings = load_settings(
        home=home,
        database_url=url,
        blob_dir=home / "blobs",
        kafka_bootstrap="",
        triton_url="",
        dashboard_secret_key="k" * 40,
    )
    engine = make_engine(url)
    try:
        yield Env(settings, session_factory(engine), blobs.store_for(settings))
    finally:
        engine.dispose()
        name = make_url(url).database
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([0-9a-f]{64})"', html)
    assert found, html[:500]
    return found.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the CSRF token of the signed-in session."""
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"username": username, "password": password, "next": "/", "csrf_token": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)


@pytest.fixture
def client(env: Env) -> Iterator[TestClient]:
    with TestClient(create_app(env.settings)) as test_client:
        yield test_client


@contextmanager
def running_dashboard(settings: Settings) -> Iterator[str]:
    """The dashboard on a real uvicorn server (HTTP, SSE) on a free port; yields its base URL."""
    (port,) = free_ports(1)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the dashboard did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def server(env: Env) -> Iterator[str]:
    with running_dashboard(env.settings) as url:
        yield url


def root() -> Path:
    return Path(__file__).resolve().parents[2]

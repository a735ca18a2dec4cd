"""Shared fixtures: one embedded stack per test session, started by the same code as
`foveal stack up`, on free ports and a temporary home so it never touches a developer's stack.

`fresh_database_url` hands each test its own empty database on that stack's PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from foveal.settings import Settings, load_settings
from foveal.stack import Stack
from foveal.stack.process import free_ports

TEST_MODEL_REPOSITORY = Path(__file__).parent / "integration" / "model_repository"


__all__ = ["free_ports"]  # tests import it from here

SESSION_ROOT = Path(tempfile.gettempdir()) / "foveal-pytest"
KEEP_SESSIONS, KEEP_YOUNGER_S = 3, 6 * 3600


def pytest_configure(config: pytest.Config) -> None:
    """As root, the embedded PostgreSQL runs as its own system user, which must traverse the
    session's temporary folders. Every pytest session chmods the shared `/tmp/pytest-of-root`
    back to 0700 when it starts, which locked a session already running out of its own database
    (its checkpointer PANICked with "Permission denied" and 30 dashboard tests errored). So, as
    root and without `--basetemp`, each session gets a folder of its own under SESSION_ROOT; the
    newest three are kept, as pytest keeps its own, and none younger than six hours is removed."""
    if os.geteuid() != 0 or config.option.basetemp or hasattr(config, "workerinput"):
        return
    SESSION_ROOT.mkdir(exist_ok=True)
    old = sorted(SESSION_ROOT.glob("session-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in old[KEEP_SESSIONS:]:
        if time.time() - stale.stat().st_mtime > KEEP_YOUNGER_S:
            shutil.rmtree(stale, ignore_errors=True)
    config.option.basetemp = tempfile.mkdtemp(prefix="session-", dir=SESSION_ROOT)


def embedded_settings(home: Path, **overrides: object) -> Settings:
    """Settings for an embedded stack under `home` on free ports, ignoring endpoint variables."""
    kafka, pg, http, grpc, metrics = free_ports(5)
    values: dict[str, object] = dict(
        home=home, kafka_port=kafka, postgres_port=pg, triton_http_port=http,
        triton_grpc_port=grpc, triton_metrics_port=metrics,
        model_repository=TEST_MODEL_REPOSITORY,
        kafka_bootstrap="", database_url="", triton_url="",
    )
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return embedded_settings(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def embedded_stack(stack_settings: Settings) -> Iterator[Stack]:
    stack = Stack(stack_settings)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture
def fresh_database_url(embedded_stack: Stack) -> Iterator[str]:
    """SQLAlchemy URL (psycopg driver) of a brand-new empty database, dropped afterwards."""
    server = make_url(embedded_stack.settings.postgres_url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


MICRO_CORPUS = [
    "You are an industrial visual inspector.", "Inspect this part. Which defect does it show?",
    "A faint mark near the upper left. Now I will zoom in to look clearer at it. ",
    '<tool_call>{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.12, 0.34, 0.56, 0.78], '
    '"target_image": 1}}</tool_call>',
    '<tool_call>{"name": "select_frames", "arguments": {"target_frames": [1, 3]}}</tool_call>',
    "Here is the cropped image (Image Size: 448x336):", "Here are the selected frames (frames 1, 3):",
    "Execution error: answer with \\boxed{...} now.", "A thin straight line: a scratch. \\boxed{scratch}",
    "The surface looks uniform. \\boxed{none}",
    "\\boxed{crack} \\boxed{pit} \\boxed{stain} \\boxed{burn} \\boxed{dent}",
]


@pytest.fixture(scope="session")
def micro_tokenizer():  # type: ignore[no-untyped-def]
    """A small byte-level BPE tokenizer with the Qwen chat and vision tokens."""
    from foveal.model.tokenizer import train_tokenizer

    return train_tokenizer(MICRO_CORPUS * 8, vocab_size=400)


@pytest.fixture
def micro_vlm(micro_tokenizer):  # type: ignore[no-untyped-def]
    """A freshly initialised compact model of the `micro` preset (seconds to train on a CPU)."""
    from foveal.model.loader import create

    return create(micro_tokenizer, "micro", seed=0)


@pytest.fixture(scope="session")
def taught_vlm(micro_tokenizer):  # type: ignore[no-untyped-def]
    """A micro model taught the protocol (zoom, select, recover) once per session."""
    from tests.reasoning.protocol_model import teach_protocol

    return teach_protocol(micro_tokenizer)

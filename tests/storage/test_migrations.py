"""The Alembic migrations against a real PostgreSQL: they build exactly the models' schema.

Each test gets a brand-new empty database from the `fresh_database_url` fixture.
Run: `.venv/bin/python -m pytest tests/storage -q`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from foveal.storage import migrate
from foveal.storage.models import Base

REPO_ROOT = Path(__file__).resolve().parents[2]


def _head() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config("postgresql+psycopg://")).get_current_head()
    assert head is not None
    return head


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_current_is_none_on_a_database_never_migrated(fresh_database_url: str) -> None:
    assert migrate.current(fresh_database_url) is None
    assert _tables(fresh_database_url) == set()


def test_upgrade_to_head_returns_the_head_revision(fresh_database_url: str) -> None:
    assert migrate.upgrade(fresh_database_url) == _head()
    assert migrate.current(fresh_database_url) == _head()
    # A second upgrade finds nothing to do.
    assert migrate.upgrade(fresh_database_url) == _head()


def test_migrations_match_models(fresh_database_url: str) -> None:
    migrate.upgrade(fresh_database_url)
    engine = create_engine(fresh_database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def _reflect(conn: Connection, schema: str) -> dict[str, dict[str, Any]]:
    """Everything PostgreSQL reports about each table in `schema`, in comparable form."""
    inspector = inspect(conn)
    tables: dict[str, dict[str, Any]] = {}
    for table in inspector.get_table_names(schema=schema):
        if table == "alembic_version":
            continue
        foreign_keys = [
            {key: value for key, value in fk.items() if key != "referred_schema"}
            for fk in inspector.get_foreign_keys(table, schema=schema)
        ]
        tables[table] = {
            "columns": [{**c, "type": str(c["type"])} for c in inspector.get_columns(table, schema=schema)],
            "pk": inspector.get_pk_constraint(table, schema=schema),
            "fks": sorted(foreign_keys, key=lambda fk: str(fk["name"])),
            "indexes": sorted(inspector.get_indexes(table, schema=schema), key=lambda i: str(i["name"])),
            "uniques": sorted(inspector.get_unique_constraints(table, schema=schema),
                              key=lambda u: str(u["name"])),
            "checks": sorted(inspector.get_check_constraints(table, schema=schema),
                             key=lambda c: str(c["name"])),
        }
    return tables


def test_migrated_schema_equals_the_models_created_directly(fresh_database_url: str) -> None:
    # compare_metadata ignores CHECK constraints and identity options; here PostgreSQL itself
    # renders both schemas (the migration's in public, create_all's in another), so every
    # constraint expression, ON DELETE rule and identity column is compared as the server sees it.
    migrate.upgrade(fresh_database_url)
    engine = create_engine(fresh_database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE SCHEMA expected"))
            Base.metadata.create_all(conn.execution_options(schema_translate_map={None: "expected"}))
        with engine.connect() as conn:
            migrated, expected = _reflect(conn, "public"), _reflect(conn, "expected")
    finally:
        engine.dispose()
    assert set(migrated) == set(Base.metadata.tables)
    for table in expected:
        assert migrated[table] == expected[table], table


def test_upgrade_downgrade_round_trip(fresh_database_url: str) -> None:
    foveal_tables = set(Base.metadata.tables)
    migrate.upgrade(fresh_database_url)
    assert _tables(fresh_database_url) == foveal_tables | {"alembic_version"}

    assert migrate.downgrade(fresh_database_url, "base") is None
    assert _tables(fresh_database_url) == {"alembic_version"}
    engine = create_engine(fresh_database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 0
    finally:
        engine.dispose()

    assert migrate.upgrade(fresh_database_url) == _head()
    assert _tables(fresh_database_url) == foveal_tables | {"alembic_version"}


def test_0003_copies_each_frames_blob_key_to_position_0_and_its_downgrade_keeps_the_frames(
        fresh_database_url: str) -> None:
    kept, unkept = uuid.uuid4(), uuid.uuid4()
    insert_frame = text(
        "INSERT INTO frames (frame_id, line, station, camera, part_serial, product, captured_at, mime_type,"
        " width, height, blob_key, sequence_length) VALUES (:id, 'L1', 'S1', 'top', 'P-1', 'pcb', now(),"
        " 'image/png', 640, 480, :key, :n)")
    key = "file:///blobs/ab/first-frame.png"
    migrate.upgrade(fresh_database_url, "0002")
    engine = create_engine(fresh_database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:  # a sequence as 0002 stored it (first frame only), a frame with no blob
            conn.execute(insert_frame, {"id": kept, "key": key, "n": 4})
            conn.execute(insert_frame, {"id": unkept, "key": None, "n": 1})
        assert migrate.upgrade(fresh_database_url) == _head()
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT frame_id, position, blob_key, mime_type, width, height"
                                     " FROM frame_blobs")).all()
        assert [tuple(r) for r in rows] == [(kept, 0, key, "image/png", 640, 480)]

        assert migrate.downgrade(fresh_database_url, "0002") == "0002"
        assert "frame_blobs" not in _tables(fresh_database_url)
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT blob_key FROM frames WHERE frame_id = :id"), {"id": kept}) == key
        assert migrate.upgrade(fresh_database_url) == _head()
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM frame_blobs")) == 1
    finally:
        engine.dispose()


def test_0004_links_existing_inspections_to_a_row_per_served_model_and_its_downgrade_unlinks_them(
        fresh_database_url: str) -> None:
    migrate.upgrade(fresh_database_url, "0003")
    engine = create_engine(fresh_database_url, poolclass=NullPool)
    frames = [uuid.uuid4() for _ in range(3)]
    try:
        with engine.begin() as conn:
            for frame_id, version in zip(frames, ["1", "1", "2"], strict=True):
                conn.execute(text(
                    "INSERT INTO frames (frame_id, line, station, camera, part_serial, product, captured_at,"
                    " mime_type) VALUES (:id, 'L1', 'S1', 'top', 'P-1', 'pcb', now(), 'image/png')"),
                    {"id": frame_id})
                conn.execute(text(
                    "INSERT INTO inspections (frame_id, verdict, defect_type, confidence, model_name,"
                    " model_version, operations, latency_ms) VALUES (:id, 'ok', 'none', 0.9, 'foveal_vl',"
                    " :v, 1, 90.0)"), {"id": frame_id, "v": version})
        assert migrate.upgrade(fresh_database_url) == _head()
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT i.model_version, m.stage, m.served_model, m.served_version, m.checkpoint_uri"
                " FROM inspections i JOIN model_versions m ON m.id = i.model_version_id"
                " ORDER BY i.model_version")).all()
            assert conn.scalar(text("SELECT count(*) FROM model_versions")) == 2
        assert [tuple(r) for r in rows] == [
            ("1", "served", "foveal_vl", "1", "triton://foveal_vl/1"),
            ("1", "served", "foveal_vl", "1", "triton://foveal_vl/1"),
            ("2", "served", "foveal_vl", "2", "triton://foveal_vl/2")]

        assert migrate.downgrade(fresh_database_url, "0003") == "0003"
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM model_versions")) == 0
            assert conn.scalar(text("SELECT count(*) FROM inspections WHERE model_version_id IS NULL")) == 3
    finally:
        engine.dispose()


def test_concurrent_upgrades_apply_each_revision_once(fresh_database_url: str) -> None:
    # Several services may start at once against one empty database; the advisory lock in
    # env.py makes the later ones wait and then find nothing to do. The workers import first
    # and wait for "go", so their migrations really overlap.
    code = (
        "import sys; from foveal.storage import migrate; import foveal.storage.models; "
        "print('ready', flush=True); sys.stdin.readline(); print(migrate.upgrade(sys.argv[1]))"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, fresh_database_url], cwd=REPO_ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(4)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, [err for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == [_head()] * 4


def test_upgrades_from_several_threads_do_not_collide(fresh_database_url: str) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        revisions = list(pool.map(migrate.upgrade, [fresh_database_url] * 3))
    assert revisions == [_head()] * 3


def test_alembic_cli_reads_the_database_url_from_the_environment(fresh_database_url: str) -> None:
    # Plain postgresql:// as an operator would write it; env.py picks the psycopg driver.
    plain = make_url(fresh_database_url).set(drivername="postgresql")
    env = {**os.environ, "FOVEAL_DATABASE_URL": plain.render_as_string(hide_password=False)}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert migrate.current(fresh_database_url) == _head()

"""Alembic, driven from code: upgrade, downgrade and inspect the schema revision of a database.

`upgrade(url)` brings the database at a SQLAlchemy URL (psycopg driver, e.g.
`postgresql+psycopg://postgres@127.0.0.1:15432/foveal`) to the head revision; `foveal stack up`
and `foveal db upgrade` call it. The migration scripts ship inside the package
(`foveal/storage/migrations`), so this works from any working directory; the root `alembic.ini`
is only for developers using the `alembic` command line.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from foveal.errors import StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Alembic runs env.py through a module-global context, so two threads migrating at once in one
# process corrupt each other's state. Between processes, env.py's advisory lock serialises them.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(url: str) -> Config:
    """An Alembic config for the package's migrations, pointed at the database at `url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Config values go through configparser interpolation: a percent-encoded password
    # (`p%40ss`) would otherwise raise or be mangled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> str:
    """Upgrade the database at `url` to `revision`; return the revision it is now at."""
    with _ALEMBIC_LOCK:
        command.upgrade(alembic_config(url), revision)
    now = current(url)
    if now is None:
        raise StorageError(f"alembic upgrade to {revision!r} left the database unversioned")
    return now


def downgrade(url: str, revision: str) -> str | None:
    """Downgrade the database at `url` to `revision` (e.g. "-1", "base"); return where it is now."""
    with _ALEMBIC_LOCK:
        command.downgrade(alembic_config(url), revision)
    return current(url)


def current(url: str) -> str | None:
    """The revision the database at `url` is at; None when it was never migrated (or is at base).

    One connection and two queries: cheap enough for a health check.
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            # to_regclass is NULL for a missing table (search_path applies), where a plain
            # SELECT would raise and abort the transaction.
            if conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
                return None
            versions = conn.scalars(text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    # The history is linear, so there is at most one row; a branched history would show all heads.
    return " ".join(sorted(versions)) or None

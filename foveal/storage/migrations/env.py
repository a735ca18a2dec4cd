"""Alembic environment of foveal: runs the revisions in `versions/` against one database.

The database URL is the config's `sqlalchemy.url` (set by `foveal.storage.migrate`), else the
`FOVEAL_DATABASE_URL` environment variable (for the `alembic` command line with the root
`alembic.ini`). Online mode runs every pending revision in one transaction under an advisory
lock, so concurrent upgrades (several services starting at once) apply each revision once;
offline mode (`alembic upgrade head --sql`) prints the SQL instead.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from foveal.storage.models import Base

# Any fixed bigint works; this one spells "foveal" in ASCII, to be recognisable in pg_locks.
MIGRATION_LOCK_ID = 0x666F7665616C

config = context.config
target_metadata = Base.metadata

# Only the alembic CLI reads an ini file; from code, logging stays the application's business.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("FOVEAL_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set FOVEAL_DATABASE_URL or sqlalchemy.url")
    # Same normalisation as foveal.settings: plain postgres URLs mean the psycopg 3 driver.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection, target_metadata=target_metadata, compare_type=True
            )
            with context.begin_transaction():
                # Taken before alembic reads alembic_version, and released at commit: a second
                # upgrader waits here, then sees the first one's revision and does nothing.
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

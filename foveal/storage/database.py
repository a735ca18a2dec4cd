"""Engines and sessions for the foveal database.

`make_engine(url)` builds a pooled engine for a SQLAlchemy URL with the psycopg driver
(`postgresql+psycopg://user@host:port/db`); `session_factory(engine)` returns the sessionmaker
services share; `ensure_reachable(factory)` turns a database that is not there into one clear
`StorageError` for commands that would otherwise fail deep inside their work. The caller owns
every transaction: `with factory() as s, s.begin(): ...`. Nothing in this module (or in the
repositories built on it) commits.
"""

from __future__ import annotations

from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from foveal.errors import StorageError


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """A pooled engine for `url`; `pool_size` should cover the caller's concurrent sessions."""
    # pre_ping: after a database restart, pooled connections are dead; test each before use
    # so a DB outage costs one reconnect instead of one failed frame per stale connection.
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; begin and commit them with `with session.begin():`."""
    # expire_on_commit=False: results are read after the transaction block that wrote them
    # (e.g. ids for the verdict message), and must not trigger a reload from the database.
    return sessionmaker(bind=engine, expire_on_commit=False)


def ensure_reachable(sessions: sessionmaker[Session]) -> None:
    """Raise `StorageError`, saying how to fix it, when the database does not answer."""
    try:
        with sessions() as session:
            session.execute(select(1))
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
        raise StorageError(f"the database cannot be reached ({reason}): start it with `foveal stack up` "
                           "or set FOVEAL_DATABASE_URL") from exc

"""Engines and sessions for the foveal database.

`make_engine(url)` builds a pooled engine for a SQLAlchemy URL with the psycopg driver
(`postgresql+psycopg://user@host:port/db`); `session_factory(engine)` returns the sessionmaker
services share. The caller owns every transaction: `with factory() as s, s.begin(): ...`.
Nothing in this module (or in the repositories built on it) commits.
"""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


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

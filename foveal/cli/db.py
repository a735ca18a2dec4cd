"""`foveal db upgrade | downgrade | current`: the schema, through Alembic.

`foveal stack up` already upgrades to head; these commands are for operators of an external
database (`FOVEAL_DATABASE_URL`) and for migration work.
"""

from __future__ import annotations

import typer
from rich.console import Console

from foveal.cli.context import settings_of

app = typer.Typer(help="Migrate the database schema (Alembic).", no_args_is_help=True)
console = Console()


@app.command()
def upgrade(ctx: typer.Context, revision: str = typer.Argument("head")) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from foveal.storage import migrate

    console.print(f"schema at {migrate.upgrade(settings_of(ctx).postgres_url, revision)}")


@app.command()
def downgrade(ctx: typer.Context, revision: str = typer.Argument(..., help="e.g. -1 or base")) -> None:
    """Downgrade the schema to REVISION."""
    from foveal.storage import migrate

    now = migrate.downgrade(settings_of(ctx).postgres_url, revision)
    console.print(f"schema at {now or 'base (empty)'}")


@app.command()
def current(ctx: typer.Context) -> None:
    """Print the revision the database is at."""
    from foveal.storage import migrate

    console.print(migrate.current(settings_of(ctx).postgres_url) or "not migrated")

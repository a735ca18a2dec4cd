"""`foveal stack up | down | status`: the embedded Kafka, PostgreSQL and Triton.

`up` starts what is not running (twice is harmless) and waits until every part is healthy;
`status` prints each part, its address, pid and health (exit 3 when any is not healthy);
`down` stops everything it started and leaves no process behind.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from foveal.cli.context import settings_of
from foveal.stack import PartStatus, Stack

app = typer.Typer(help="Start, check and stop the embedded stack.", no_args_is_help=True)
console = Console()

STATE_STYLE = {"healthy": "green", "unhealthy": "yellow", "crashed": "bold red",
               "stopped": "dim", "unreachable": "bold red"}


@app.command()
def up(ctx: typer.Context) -> None:
    """Start the embedded parts (skipping any whose endpoint variable is set) and wait healthy."""
    stack = Stack(settings_of(ctx))
    with console.status("starting kafka, postgres, triton…"):
        statuses = stack.up()
    print_status(statuses)
    if not all(s.ok for s in statuses):
        raise typer.Exit(3)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show each part: mode, address, pid, health; a crashed part shows its log's tail."""
    statuses = Stack(settings_of(ctx)).status()
    print_status(statuses)
    if not all(s.ok for s in statuses):
        raise typer.Exit(3)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop every embedded part; external parts are left alone."""
    stopped = Stack(settings_of(ctx)).down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def print_status(statuses: list[PartStatus]) -> None:
    table = Table(title="foveal stack", title_justify="left")
    for column in ("part", "mode", "address", "pid", "state", "detail"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        style = STATE_STYLE.get(s.state, "")
        table.add_row(s.part, s.mode, s.address, str(s.pid or "-"),
                      f"[{style}]{s.state}[/]", s.detail)
    console.print(table)
    for s in statuses:
        if s.log_tail and not s.ok:
            console.print(f"[bold]{s.part}[/] log tail:")
            console.print(s.log_tail, markup=False, highlight=False)

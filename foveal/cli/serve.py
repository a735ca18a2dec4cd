"""`foveal serve reasoner`: run the Reasoner gRPC service against the configured Triton;
`foveal serve ingest`: run the ingest worker (services/ingest/README.md) until SIGINT or SIGTERM;
`foveal serve dashboard`: run the review dashboard (services/dashboard/README.md).

It listens on `FOVEAL_BIND_HOST:FOVEAL_REASONER_PORT` (metrics on `FOVEAL_REASONER_METRICS_PORT`),
logs JSON lines to stderr, and runs until SIGINT or SIGTERM, then shuts down gracefully (health
NOT_SERVING, calls in flight finish). See services/reasoner/README.md.
"""

from __future__ import annotations

import asyncio
import logging

import typer

from foveal.cli.context import settings_of
from foveal.settings import Settings

app = typer.Typer(help="Run foveal's services.", no_args_is_help=True)


@app.command("reasoner")
def reasoner(
    ctx: typer.Context,
    port: int | None = typer.Option(None, "--port", help="gRPC port (default: FOVEAL_REASONER_PORT)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port",
                                            help="Prometheus port (default: FOVEAL_REASONER_METRICS_PORT)."),
    json_logs: bool = typer.Option(True, "--json-logs/--text-logs", help="Log JSON lines (default) or text."),
) -> None:
    """Serve Reasoner.Inspect, grpc.health.v1 and reflection; the model runs on Triton."""
    from foveal.serving.service import ServiceConfig, serve
    from foveal.serving.triton_engine import connect

    settings, overrides = _prepare(ctx, json_logs, port=port, metrics_port=metrics_port)
    config = ServiceConfig.from_settings(settings, **overrides)
    engine = connect(settings)
    try:
        asyncio.run(serve(engine, config))
    finally:
        engine.close()


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    metrics_port: int | None = typer.Option(None, "--metrics-port",
                                            help="Prometheus port (default: FOVEAL_INGEST_METRICS_PORT)."),
    json_logs: bool = typer.Option(True, "--json-logs/--text-logs", help="Log JSON lines (default) or text."),
) -> None:
    """Consume foveal.frames, inspect each frame, write PostgreSQL and produce foveal.verdicts."""
    import signal

    from foveal.ingest import IngestConfig, IngestWorker

    settings, overrides = _prepare(ctx, json_logs, metrics_port=metrics_port)
    worker = IngestWorker(settings, IngestConfig.from_settings(settings, **overrides))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run()


@app.command("dashboard")
def dashboard(
    ctx: typer.Context,
    host: str | None = typer.Option(None, "--host", help="Address (default: FOVEAL_DASHBOARD_HOST)."),
    port: int | None = typer.Option(None, "--port", help="HTTP port (default: FOVEAL_DASHBOARD_PORT)."),
    json_logs: bool = typer.Option(False, "--json-logs/--text-logs", help="JSON or text (default) logs."),
) -> None:
    """Serve the review dashboard for QA staff (sign in with a user from `foveal users add`)."""
    from foveal.dashboard.app import serve

    settings, _ = _prepare(ctx, json_logs)
    serve(settings, host, port)


def _prepare(ctx: typer.Context, json_logs: bool, **options: object) -> tuple[Settings, dict[str, object]]:
    """The settings, JSON logging when asked, and the options given on the command line."""
    from foveal.serving.logs import use_json_logs

    if json_logs:
        use_json_logs(logging.getLogger().level or logging.INFO)
    return settings_of(ctx), {name: value for name, value in options.items() if value is not None}

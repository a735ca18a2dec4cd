"""Reliability drills of the ingest pipeline, everything real and the services as OS processes:
a Kafka + PostgreSQL stack of the module's own (started by the code behind `foveal stack up`, so
its PostgreSQL can be stopped without touching the session's shared stack), ingest workers run
as `foveal serve ingest` children (`IngestProcess`), and the Reasoner a process of its own
(`tests/pipeline/reasoner_process.py`: the real gRPC service on a random micro model). The
camera simulator streams small rendered frames while a fault is injected.

Each drill ends with the same check: every frame produced has exactly one inspection row or
exactly one DLQ record (none lost, none twice), every inspected frame has a verdict, and the
group's committed offsets equal the topic's end offsets. While the fault lasts, committed offsets
are sampled and every record below them must already be durable (a row or a DLQ record).

Drills: the worker SIGKILLed three times during 500 frames; PostgreSQL stopped for 10 s; the
reasoner stopped and restarted; two workers in one group sharing the partitions.
Run: `.venv/bin/python -m pytest -q tests/pipeline/test_ingest_drills.py` (≈ 4–6 min).
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from sqlalchemy.engine import make_url

from foveal import messaging
from foveal.camera import Camera, CameraConfig, SentFrame
from foveal.ingest.process import IngestProcess
from foveal.settings import Settings
from foveal.stack import Stack
from foveal.storage import migrate
from tests.conftest import embedded_settings, free_ports
from tests.pipeline.test_ingest import (
    Names,
    all_committed,
    committed,
    end_offsets,
    make_names,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SIZE_PX = 256  # the renderer's smallest frames: 20–90 kB PNGs, inline in the record
STATIONS = tuple(f"st-{i}" for i in range(8))  # keys spread over the partitions


# -- the module's stack, frames and reasoner --------------------------------------------
@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(embedded_settings(tmp_path_factory.mktemp("drill-stack")), parts=["kafka", "postgres"])
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve small rendered frames, replayed by the camera (`CameraConfig.source`)."""
    from foveal.plant.generate import generate

    out = tmp_path_factory.mktemp("drill-bank") / "bank"
    generate(out, n=12, seed=7, sequences=0, size=SIZE_PX, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drill-blobs")


class Reasoner:
    """The micro-model Reasoner as a child process on a fixed port, so it can come back there."""

    def __init__(self, port: int, blob_dir: Path, log_dir: Path) -> None:
        self.port, self.blob_dir, self.log_dir = port, blob_dir, log_dir
        self.address = f"127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 180.0) -> None:
        self.starts += 1
        with (self.log_dir / f"reasoner-{self.starts}.log").open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.pipeline.reasoner_process", "--port", str(self.port),
                 "--blob-root", str(self.blob_dir)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the reasoner exited; see {out.name}"
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        raise AssertionError(f"the reasoner is not SERVING after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def reasoner(blob_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reasoner]:
    server = Reasoner(free_ports(1)[0], blob_dir, tmp_path_factory.mktemp("drill-reasoner"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- one drill's topics, database, workers and camera -----------------------------------
@dataclass
class Drill:
    settings: Settings
    names: Names
    url: str  # the drill's own database (psycopg URL)
    bank: Path
    logs: Path
    sent: list[SentFrame] = field(default_factory=list)
    workers: list[IngestProcess] = field(default_factory=list)

    def worker(self) -> IngestProcess:
        """Start one more `foveal serve ingest` and wait until its metrics answer."""
        proc = IngestProcess(self.settings, self.logs / f"ingest-{len(self.workers)}.log", free_ports(1)[0])
        self.workers.append(proc)
        proc.wait_started()
        return proc

    def stream(self, count: int, rate_fps: float) -> threading.Thread:
        """The camera sends `count` frames at `rate_fps` from a thread; join it to wait."""
        config = CameraConfig(stations=STATIONS, source=self.bank, seed=3,
                              topic=self.names.frames)

        def run() -> None:
            with Camera(self.settings, config) as camera:
                camera.run(count=count, rate_fps=rate_fps, on_sent=self.sent.append)

        thread = threading.Thread(target=run, name="camera", daemon=True)
        thread.start()
        return thread

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.alive():
                proc.stop()

    # -- what the database and the topics hold ------------------------------------------
    def rows(self) -> list[str]:
        """frame_id of every inspection row."""
        with psycopg.connect(self.url, connect_timeout=5) as conn:
            return [str(r[0]) for r in conn.execute("SELECT frame_id FROM inspections")]

    def inspected(self) -> int:
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM inspections").fetchone()
                return int(row[0]) if row else 0
        except psycopg.OperationalError:
            return -1

    def dead_letters(self) -> list[str]:
        return [messaging.decode_frame(r.value).frame_id for r in read_all(self.settings, self.names.dlq)]

    def assert_committed_is_durable(self, offsets: dict[int, int | None] | None = None) -> None:
        """Every record below the group's committed offsets (now, or the `offsets` sampled
        earlier) is durably handled: an inspection row or a DLQ record."""
        offsets = offsets if offsets is not None else committed(self.settings, self.names.group,
                                                                self.names.frames)
        handled = set(self.rows()) | set(self.dead_letters())
        below = [s for s in list(self.sent) if (offsets.get(s.partition) or 0) > s.offset]
        missing = [f"{s.frame_id}@{s.partition}:{s.offset}" for s in below if s.frame_id not in handled]
        assert not missing, f"committed past {len(missing)} unwritten records: {missing[:5]}"

    def assert_exactly_once(self, count: int, timeout_s: float = 180.0) -> None:
        wait_for(lambda: len(self.sent) == count, 60, f"the camera's {count} acknowledgements")
        wait_for(lambda: all_committed(self.settings, self.names.group, self.names.frames), timeout_s,
                 "offsets committed to the end of the topic")
        produced = [s.frame_id for s in self.sent]
        assert len(set(produced)) == count
        rows, dead = self.rows(), self.dead_letters()
        outcomes = collections.Counter(rows + dead)
        assert set(outcomes) == set(produced), "lost frames, or rows no camera frame explains"
        twice = [frame_id for frame_id, n in outcomes.items() if n > 1]
        assert not twice, f"{len(twice)} frames with more than one outcome: {twice[:5]}"
        assert sum(end_offsets(self.settings, self.names.frames).values()) == len(rows) + len(dead) == count
        with psycopg.connect(self.url) as conn:
            framed = {str(r[0]) for r in conn.execute("SELECT frame_id FROM frames")}
        assert framed == set(rows), "a frame row without its inspection, or the reverse"
        # Sessions 15 and 16 saw a verdict missing here, 1 run in ~12: the reader then stopped at
        # Tansu's under-counted end offset inside the last batch (foveal/ingest/reading.py).
        missing = set(rows) - self.verdict_ids()
        assert not missing, (f"inspected frames without a verdict: {sorted(missing)[:5]}; "
                             f"{self.verdict_layout()}; the workers said: {self.said_of(missing)}")

    def verdict_ids(self) -> set[str]:
        records = read_all(self.settings, self.names.verdicts)
        return {messaging.decode_verdict(r.value).frame_id for r in records}

    def verdict_layout(self) -> str:
        """Per partition of the verdicts topic: its end offset, the records read back, and the
        offsets below the end that none of them holds (a broker that acknowledged and lost)."""
        records = read_all(self.settings, self.names.verdicts)
        ends = end_offsets(self.settings, self.names.verdicts)
        parts = []
        for partition, end in sorted(ends.items()):
            seen = collections.Counter(r.offset for r in records if r.partition == partition)
            holes = [o for o in range(end) if o not in seen]
            twice = [o for o, n in seen.items() if n > 1]
            parts.append(f"[{partition}] end {end}, read {sum(seen.values())}, holes {holes[:10]}, "
                         f"offsets read twice {twice[:10]}")
        return "verdicts " + "; ".join(parts)

    def said_of(self, frame_ids: set[str]) -> list[str]:
        """What the workers' logs say about these frames (where each verdict was acknowledged)."""
        lines = []
        for path in sorted(self.logs.glob("ingest-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if any(f in line for f in frame_ids):
                    lines.append(f"{path.name}: {json.loads(line).get('message', line)[:200]}"
                                 if line.startswith("{") else f"{path.name}: {line[:200]}")
        return lines[:10]


@pytest.fixture
def drill(request: pytest.FixtureRequest, drill_stack: Stack, reasoner: Reasoner, bank: Path, blob_dir: Path,
          tmp_path: Path) -> Iterator[Drill]:
    base = drill_stack.settings
    url = _fresh_database(base)
    migrate.upgrade(url)
    names = make_names(base, frames_partitions=getattr(request, "param", 2))
    settings = base.model_copy(update=dict(
        database_url=url, reasoner_url=reasoner.address, blob_dir=blob_dir, ingest_group=names.group,
        ingest_frames_topic=names.frames, ingest_verdicts_topic=names.verdicts, ingest_dlq_topic=names.dlq,
        ingest_max_in_flight=4, ingest_inspect_timeout_s=20.0, ingest_retry_initial_s=0.1,
        ingest_retry_max_s=1.0, ingest_shutdown_grace_s=5.0))
    made = Drill(settings, names, make_url(url).set(drivername="postgresql").render_as_string(False), bank,
                 tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def _fresh_database(settings: Settings) -> str:
    server = make_url(settings.postgres_url)
    name = f"d_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server.set(database=name).render_as_string(hide_password=False)


def metric(proc: IngestProcess, name: str) -> float:
    for family in text_string_to_metric_families(proc.metrics_text()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


# -- the drills -------------------------------------------------------------------------
def test_sigkill_three_times_during_500_frames_loses_and_duplicates_nothing(drill: Drill) -> None:
    count = 500
    worker = drill.worker()
    camera = drill.stream(count, rate_fps=25)
    for kill, at in enumerate((90, 200, 310), start=1):
        wait_for(lambda: drill.inspected() >= at, 240, f"{at} inspections")  # noqa: B023
        worker.kill()
        drill.assert_committed_is_durable()
        log.info("kill %d at %d rows; committed %s", kill, drill.inspected(),
                 committed(drill.settings, drill.names.group, drill.names.frames))
        worker = drill.worker()
    camera.join(timeout=120)
    drill.assert_exactly_once(count, timeout_s=240)
    assert worker.stop() == 0
    assert not drill.dead_letters()


def test_postgres_down_for_10_s_mid_stream(drill: Drill, drill_stack: Stack) -> None:
    count = 120
    postgres = Stack(drill_stack.settings, parts=["postgres"])
    worker = drill.worker()
    camera = drill.stream(count, rate_fps=10)
    wait_for(lambda: drill.inspected() >= 30, 120, "30 inspections")
    postgres.down()
    time.sleep(10)
    during = committed(drill.settings, drill.names.group, drill.names.frames)
    assert worker.alive()
    postgres.up()
    drill.assert_committed_is_durable(during)
    camera.join(timeout=60)
    drill.assert_exactly_once(count)
    assert metric(worker, "foveal_ingest_retries_total") > 0  # it waited for the database
    assert worker.stop() == 0
    assert not drill.dead_letters()


def test_reasoner_stopped_and_restarted_mid_stream(drill: Drill, reasoner: Reasoner) -> None:
    before, during = 60, 60
    worker = drill.worker()
    first = drill.stream(before, rate_fps=10)
    wait_for(lambda: drill.inspected() >= 30, 120, "30 inspections")
    reasoner.stop()
    # Frames sent while the reasoner is down, whatever the host's speed: the worker must meet
    # UNAVAILABLE on them (a fast worker could otherwise finish the first stream before the stop).
    second = drill.stream(during, rate_fps=20)
    time.sleep(3)
    drill.assert_committed_is_durable()
    reasoner.start()  # the same port; the worker's channel reconnects
    drill.assert_committed_is_durable()
    first.join(timeout=60)
    second.join(timeout=60)
    drill.assert_exactly_once(before + during)
    assert metric(worker, "foveal_ingest_retries_total") > 0
    assert worker.stop() == 0
    assert not drill.dead_letters()


@pytest.mark.parametrize("drill", [4], indirect=True, ids=["4-partitions"])
def test_two_workers_in_one_group_share_the_partitions(drill: Drill) -> None:
    count = 150
    first, second = drill.worker(), drill.worker()
    wait_for(lambda: "partitions assigned: t" in second.log_path.read_text(), 60, "the second worker's share")
    camera = drill.stream(count, rate_fps=15)
    camera.join(timeout=60)
    drill.assert_exactly_once(count)
    consumed = [metric(w, "foveal_ingest_consumed_total") for w in (first, second)]
    inspected = [metric(w, "foveal_ingest_inspected_total") for w in (first, second)]
    assert all(n > 0 for n in inspected), f"a worker inspected nothing: {inspected}"
    assert sum(inspected) >= count and sum(consumed) >= count
    with psycopg.connect(drill.url) as conn:
        partitions = {int(r[0]) for r in conn.execute("SELECT DISTINCT kafka_partition FROM frames")}
    assert partitions == {0, 1, 2, 3}
    assert [w.stop() for w in (first, second)] == [0, 0]

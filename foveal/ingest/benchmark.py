"""`foveal bench pipeline`: frames through the whole line path, camera → Kafka → ingest worker(s)
→ Reasoner → Triton → PostgreSQL, against the in-process loop on the same frames.

Everything is real and runs as it does in production: the stack (started when it is not running,
or the external parts named by the endpoint variables), `foveal serve reasoner` against Triton and
`--workers` × `foveal serve ingest` as child processes, frames from the camera simulator (its
rendered bank or a dataset replay) on topics, a consumer group and a database of the run's own.

1. warm-up: two Inspect calls straight to the reasoner (Triton loads lazily), workers joined;
2. probe: `probe` frames produced as fast as the camera sends; the rate at which the pipeline
   drains that backlog (frames / (last row written − first frame captured)) is its capacity;
3. run: `frames` frames paced at that rate × `rate_margin` (or at `rate_fps` when given);
4. reference: the same items, in the same order, through the reasoning loop in this process at
   the batch size Triton ran at during the run (its `nv_inference_count / exec_count`, rounded),
   after the services are stopped, frames decoded outside the timing.

Figures of the run: `frames_per_s` = frames / (last inspection row written − first frame
captured); end-to-end latency per frame = `inspections.created_at` (the writing transaction's
start, ms before its commit) − `frames.captured_at` (set by the camera just before the send);
consumer lag sampled from the broker (end offsets − the group's committed offsets) every
`lag_interval_s`, plotted; `pipeline_ratio` = `frames_per_s` / in-process frames/s (bar ≥ 0.85).
Over probe and run together: `lost` = frames with neither a row nor a DLQ record, `duplicates` =
extra rows or DLQ records of a frame, and the group's committed offsets must reach the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from psycopg import sql
from sqlalchemy.engine import make_url

from foveal import messaging
from foveal.camera import Bank, BankItem, Camera, CameraConfig, SentFrame
from foveal.errors import FovealError
from foveal.ingest.cpu import CpuMeter
from foveal.ingest.lag import LagSample, LagSampler, lag_slope_per_s, plot_lag
from foveal.ingest.process import IngestProcess
from foveal.ingest.reading import TopicReader, read_topic
from foveal.settings import Settings
from foveal.stack.process import free_ports

log = logging.getLogger(__name__)
BAR_RATIO = 0.85


class BenchError(FovealError):
    """The pipeline benchmark could not finish: a stall, a part that did not start."""


@dataclass(frozen=True)
class PipelineOptions:
    frames: int = 2000
    rate_fps: float | None = None  # None: the probe's drain rate × rate_margin
    probe_frames: int | None = None  # None: frames // 10, within [10, 200]
    rate_margin: float = 1.0
    workers: int = 1
    in_flight: int | None = None  # per worker; None: settings.ingest_max_in_flight
    reference_batch: int | None = None  # None: Triton's average batch during the run
    source: Path | None = None  # a dataset folder to replay; None: the camera's rendered bank
    bank_frames: int = 32
    size: int | None = None  # long side of rendered frames (None: 1024–2048 px as FovealBench)
    sequence_share: float = 1 / 6  # FovealBench's mix: one sequence per five frames
    stations: int = 8
    seed: int = 0
    lag_interval_s: float = 0.5
    stall_s: float = 180.0  # no frame handled for this long: give up
    keep_database: bool = False

    def probe(self, concurrency: int) -> int:
        """Frames of the probe: a tenth of the run, at least three waves of `concurrency`."""
        if self.probe_frames is not None:
            return self.probe_frames
        return 0 if self.rate_fps else min(200, max(3 * concurrency, self.frames // 10))


@dataclass
class Phase:
    name: str
    sent: list[SentFrame] = field(default_factory=list)
    start_s: float = 0.0  # on the lag sampler's clock
    end_s: float = 0.0
    camera_fps: float = float("nan")

    @property
    def ids(self) -> list[str]:
        return [s.frame_id for s in self.sent]


@dataclass(frozen=True)
class Rows:
    """What PostgreSQL holds: per inspected frame (captured, written) in epoch seconds."""

    times: dict[str, tuple[float, float]]
    inspection_ids: list[str]  # frame_id of every inspection row (a duplicate would repeat)
    frame_rows: int


# -- the run ------------------------------------------------------------------------------
def run_pipeline(settings: Settings, options: PipelineOptions, plot_path: Path,
                 say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run the benchmark; the summary (figures, counts, options) as a JSON-ready dict."""
    from foveal.serving import benchmark as serve_bench
    from foveal.serving.process import ReasonerProcess

    load_before = os.getloadavg()
    tag = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_stack_down, settings, _stack_up(settings))
        url = _database(settings, tag, options.keep_database, cleanup)
        topics = _topics(settings, tag)
        group = f"foveal-bench-{tag}"
        run_settings = settings.model_copy(update=dict(
            database_url=url, ingest_group=group, ingest_frames_topic=topics[0],
            ingest_verdicts_topic=topics[1], ingest_dlq_topic=topics[2],
            ingest_max_in_flight=options.in_flight or settings.ingest_max_in_flight))
        logs = settings.home_dir / "logs"
        port, metrics_port = free_ports(2)
        say(f"reasoner on :{port} against Triton {settings.triton_address}")
        reasoner = ReasonerProcess(settings, port, metrics_port, logs / f"bench-pipeline-reasoner-{tag}.log")
        cleanup.callback(reasoner.stop)
        run_settings = run_settings.model_copy(update=dict(reasoner_url=reasoner.address))
        workers = _start_workers(run_settings, options.workers, logs, tag, cleanup)  # start while it loads
        reasoner.wait_serving()
        camera = Camera(run_settings, _camera_config(options, topics[0]))
        cleanup.callback(camera.close)
        _warm_up(reasoner.address, camera.bank)
        vision = serve_bench.served_vision(settings)
        precision = serve_bench.served_tower_precision(settings)
        for worker in workers:
            worker.wait_started()
        _await_assignment(workers, settings.frames_partitions)
        sampler = LagSampler(settings.kafka_address, group, topics[0], options.lag_interval_s).start()
        cleanup.callback(sampler.stop)
        probe, main = Phase("probe"), Phase("run")
        rate = options.rate_fps
        probe_frames = options.probe(options.workers * run_settings.ingest_max_in_flight)
        if probe_frames:
            say(f"probe: {probe_frames} frames as fast as the camera sends")
            _produce(camera, probe, probe_frames, None, sampler)
            _await_handled(url, run_settings, len(probe.sent), options.stall_s)
            capacity = drain_rate(_rows(url).times, probe.ids)
            rate = rate or capacity * options.rate_margin
            say(f"probe drained at {capacity:.2f} frames/s")
        if not rate or rate <= 0:
            raise BenchError("no rate: give --rate, or a probe of at least 10 frames")
        say(f"run: {options.frames} frames at {rate:.2f} frames/s")
        before = _triton_counts(serve_bench, settings)
        meter = CpuMeter().start()
        _produce(camera, main, options.frames, rate, sampler)
        _await_handled(url, run_settings, len(probe.sent) + len(main.sent), options.stall_s)
        cpu = meter.stop()
        after = _triton_counts(serve_bench, settings)
        committed_to_end = _await_committed(sampler, 60.0)
        samples = sampler.stop()
        rows, dead = _rows(url), _dlq_ids(run_settings, topics[2])
        say("services stopping; the in-process reference follows")
    batch = options.reference_batch or max(1, round(_avg_batch(before, after) or 1))
    reference_fps = in_process_fps(settings, camera.bank, [s.item for s in main.sent], batch, vision,
                                   precision)
    summary = _summary(options, probe, main, rows, dead, samples, rate, reference_fps, batch,
                       _avg_batch(before, after), committed_to_end)
    written_s = [w - sampler.started_epoch for _, w in rows.times.values()]
    spans = {p.name: (p.start_s, p.end_s) for p in (probe, main) if p.sent}
    summary["plot"] = str(plot_lag(samples, spans, plot_path, _plot_title(summary), written_s))
    summary.update(cpu_ms_per_frame=cpu.per_frame_ms(len(main.sent)), cpu_busy_share=round(cpu.busy_share, 3))
    summary.update(source=str(camera.bank.folder), vision=vision, load_average_start=load_before,
                   in_flight=run_settings.ingest_max_in_flight,
                   load_average_end=os.getloadavg(), partitions=settings.frames_partitions)
    return summary


def _produce(camera: Camera, phase: Phase, count: int, rate: float | None, sampler: LagSampler) -> None:
    phase.start_s = sampler.now_s()
    report = camera.run(count, rate, on_sent=phase.sent.append)
    phase.end_s = sampler.now_s()
    phase.camera_fps = report.achieved_fps


def drain_rate(times: dict[str, tuple[float, float]], ids: Sequence[str]) -> float:
    """Frames/s of draining a backlog: frames / (last row written − first frame captured).

    Conservative by one inspection's latency (the fill); commits come in bursts (a batch ends
    together), so a rate between commits would overestimate.
    >>> drain_rate({str(i): (100.0 + i / 100, 101.0 + i / 2) for i in range(9)}, [str(i) for i in range(9)])
    1.8
    """
    done = [times[i] for i in ids if i in times]
    if len(done) < 2:
        raise BenchError(f"the probe's {len(done)} rows do not give a rate; give --rate or a larger --probe")
    return len(done) / (max(w for _, w in done) - min(c for c, _ in done))


def _summary(options: PipelineOptions, probe: Phase, main: Phase, rows: Rows, dead: list[str],
             samples: Sequence[LagSample], rate: float, reference_fps: float, batch: int,
             avg_batch: float | None, committed_to_end: bool) -> dict[str, Any]:
    produced = probe.ids + main.ids
    outcomes = Counter(rows.inspection_ids + dead)
    duplicates = sum(n - 1 for n in outcomes.values() if n > 1)
    lost = len(set(produced) - set(outcomes))
    foreign = len(set(outcomes) - set(produced))
    timed = [rows.times[i] for i in main.ids if i in rows.times]
    latencies_ms = np.asarray([(written - captured) * 1000 for captured, written in timed])
    span_s = max(w for _, w in timed) - min(c for c, _ in timed) if timed else float("nan")
    fps = len(timed) / span_s if timed else float("nan")
    slope = lag_slope_per_s(samples, main.start_s, main.end_s)
    lag_max = max((s.lag for s in samples if main.start_s <= s.t_s), default=0)

    def pct(q: float) -> float:
        return round(float(np.percentile(latencies_ms, q)), 1) if len(latencies_ms) else float("nan")

    return {
        "frames": len(main.sent), "probe_frames": len(probe.sent), "inspected": len(timed),
        "dlq": len(dead), "lost": lost, "duplicates": duplicates, "foreign_rows": foreign,
        "frame_rows": rows.frame_rows, "committed_to_end": committed_to_end,
        "rate_fps": round(rate, 3), "camera_fps": round(main.camera_fps, 3),
        "frames_per_s": round(fps, 3), "pipeline_fps": round(fps, 3),
        "inprocess_fps": round(reference_fps, 3), "pipeline_ratio": round(fps / reference_fps, 3),
        "bar_ratio": BAR_RATIO, "e2e_p50_ms": pct(50), "e2e_p95_ms": pct(95), "e2e_p99_ms": pct(99),
        "e2e_mean_ms": round(float(latencies_ms.mean()), 1) if len(latencies_ms) else float("nan"),
        "e2e_max_ms": round(float(latencies_ms.max()), 1) if len(latencies_ms) else float("nan"),
        "span_s": round(span_s, 2), "lag_max": lag_max, "lag_slope_per_s": slope,
        "lag_samples": len(samples), "sustained": slope is not None and slope <= 0.05 * rate,
        "triton_avg_batch": None if avg_batch is None else round(avg_batch, 2), "reference_batch": batch,
        "workers": options.workers,
    }


def _plot_title(summary: dict[str, Any]) -> str:
    return (f"foveal bench pipeline: {summary['frames']} frames at {summary['rate_fps']:g}/s, "
            f"{summary['frames_per_s']:g} frames/s sustained, e2e p50 {summary['e2e_p50_ms']:g} ms, "
            f"p95 {summary['e2e_p95_ms']:g} ms")


# -- the in-process reference -----------------------------------------------------------
def in_process_fps(settings: Settings, bank: Bank, items: Sequence[str], batch: int, vision: str,
                   tower_precision: str = "auto") -> float:
    """Frames/s of the reasoning loop in this process on `items` (bank label ids, in order) in
    batches of `batch`; decoding happens outside the timing, as in `foveal bench serve`."""
    from foveal.serving.benchmark import reference_loop

    by_id = {item.label.id: item for item in bank.frames + bank.sequences}
    loop = reference_loop(settings, vision, tower_precision)
    decode = _decoder(bank.folder)
    loop.run([decode(by_id[i]) for i in items[:min(2, len(items))]])  # warm-up
    seconds = 0.0
    for start in range(0, len(items), batch):
        chunk = [decode(by_id[i]) for i in items[start:start + batch]]
        began = time.perf_counter()
        loop.run(chunk)
        seconds += time.perf_counter() - began
    return len(items) / seconds


def _decoder(folder: Path, keep: int = 64) -> Callable[[BankItem], Any]:
    """Decode bank items into inspections, keeping the last `keep` (the camera cycles its bank)."""
    from foveal.evaluation.bench import inspection_of

    cache: dict[str, Any] = {}

    def decode(item: BankItem) -> Any:
        if item.label.id not in cache:
            if len(cache) >= keep:
                cache.pop(next(iter(cache)))
            label = item.label
            if label.frames and len(label.frames) > messaging.MAX_SEQUENCE_FRAMES:  # as the camera sends
                label = label.model_copy(update={"frames": label.frames[:messaging.MAX_SEQUENCE_FRAMES]})
            cache[item.label.id] = inspection_of(label, folder, named_prompt=True)
        return cache[item.label.id]

    return decode


# -- parts of the run -------------------------------------------------------------------
def _stack_up(settings: Settings) -> list[str]:
    """Start the embedded parts that are not running; the names of those this run started."""
    from foveal.stack import Stack

    stack = Stack(settings)
    stopped = [s.part for s in stack.status() if s.mode == "embedded" and s.state == "stopped"]
    stack.up()
    return stopped


def _stack_down(settings: Settings, parts: list[str]) -> None:
    from foveal.stack import Stack

    if parts:
        Stack(settings, parts=parts).down()


def _database(settings: Settings, tag: str, keep: bool, cleanup: contextlib.ExitStack) -> str:
    """A fresh, migrated database on the configured server for this run (dropped afterwards)."""
    from foveal.storage import migrate

    server = make_url(settings.postgres_url)
    name = f"foveal_bench_{tag}"
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if not keep:
        cleanup.callback(_drop_database, admin, name)
    url = server.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    return url


def _drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _topics(settings: Settings, tag: str) -> tuple[str, str, str]:
    """Frames, verdicts and DLQ topics of this run, created empty."""
    names = (f"foveal.bench.{tag}.frames", f"foveal.bench.{tag}.verdicts", f"foveal.bench.{tag}.dlq")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_address.split(","))
    try:
        admin.create_topics([NewTopic(names[0], settings.frames_partitions, settings.topic_replication),
                             NewTopic(names[1], settings.verdicts_partitions, settings.topic_replication),
                             NewTopic(names[2], settings.dlq_partitions, settings.topic_replication)])
    finally:
        admin.close()
    return names


def _camera_config(options: PipelineOptions, topic: str) -> CameraConfig:
    return CameraConfig(stations=tuple(f"bench-st-{i}" for i in range(options.stations)),
                        sequence_share=options.sequence_share, seed=options.seed, source=options.source,
                        bank_frames=options.bank_frames, size=options.size, topic=topic)


def _warm_up(address: str, bank: Bank, calls: int = 2) -> None:
    """Inspect a few bank items straight through the reasoner: Triton's first turns are slow."""
    import grpc

    from foveal.serving.benchmark import request_of
    from foveal.v1 import reasoner_pb2_grpc

    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = reasoner_pb2_grpc.ReasonerStub(channel)  # type: ignore[no-untyped-call]
        for item in (bank.frames + bank.sequences)[:calls]:
            stub.Inspect(request_of(item.label, bank.folder), timeout=300)


def _start_workers(settings: Settings, count: int, logs: Path, tag: str,
                   cleanup: contextlib.ExitStack) -> list[IngestProcess]:
    """`count` × `foveal serve ingest` spawned (not waited for), each stopped on cleanup."""
    workers = []
    for index, port in enumerate(free_ports(count)):
        worker = IngestProcess(settings, logs / f"bench-pipeline-ingest-{tag}-{index}.log", port)
        cleanup.callback(worker.stop)
        workers.append(worker)
    return workers


def _await_assignment(workers: Sequence[IngestProcess], partitions: int, timeout_s: float = 90.0) -> None:
    """Until the workers' latest assignments cover every partition (the group has settled)."""
    def held(worker: IngestProcess) -> int:
        lines = [ln for ln in worker.log_path.read_text().splitlines() if "partitions assigned: " in ln]
        return lines[-1].count("[") if lines else 0

    _wait(lambda: sum(held(w) for w in workers) == partitions, timeout_s,
          f"{len(workers)} ingest worker(s) to share {partitions} partitions")


def _await_handled(url: str, settings: Settings, expected: int, stall_s: float) -> None:
    """Until the run's database and DLQ topic (both the run's own) hold `expected` outcomes;
    no new outcome for `stall_s` raises."""
    target = make_url(url).set(drivername="postgresql").render_as_string(False)
    last, progress_at = -1, time.monotonic()
    # the DLQ's records are counted by reading them: Tansu's end offsets under-count (reading.py)
    dead = 0
    with psycopg.connect(target, autocommit=True) as conn, \
            TopicReader(settings.kafka_address, settings.ingest_dlq_topic) as dlq:
        while True:
            row = conn.execute("SELECT count(*) FROM inspections").fetchone()
            dead += len(dlq.poll(timeout_ms=50))
            handled = (int(row[0]) if row else 0) + dead
            if handled >= expected:
                return
            if handled != last:
                last, progress_at = handled, time.monotonic()
            if time.monotonic() - progress_at > stall_s:
                raise BenchError(f"{handled} of {expected} frames handled and none for {stall_s:.0f} s; "
                                 f"see the logs under {settings.home_dir / 'logs'}")
            time.sleep(0.25)


def _await_committed(sampler: LagSampler, timeout_s: float) -> bool:
    """Whether the sampler sees the group's committed offsets reach the end within `timeout_s`
    (its own thread alone touches its clients)."""
    deadline = time.monotonic() + timeout_s
    seen = len(sampler.samples)
    while time.monotonic() < deadline:
        fresh = sampler.samples[seen:]
        if fresh and fresh[-1].lag == 0:
            return True
        time.sleep(sampler.interval_s)
    return False


def _rows(url: str) -> Rows:
    target = make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(target) as conn:
        times = conn.execute(
            "SELECT f.frame_id, extract(epoch FROM f.captured_at), extract(epoch FROM i.created_at) "
            "FROM frames f JOIN inspections i ON i.frame_id = f.frame_id").fetchall()
        inspected = conn.execute("SELECT frame_id FROM inspections").fetchall()
        frame_rows = conn.execute("SELECT count(*) FROM frames").fetchone()
    return Rows({str(f): (float(c), float(w)) for f, c, w in times}, [str(r[0]) for r in inspected],
                int(frame_rows[0]) if frame_rows else 0)


def _dlq_ids(settings: Settings, topic: str) -> list[str]:
    """frame_id of every record on the run's DLQ topic (the original envelope is kept there)."""
    return [_frame_id_of(r.value) for r in read_topic(settings.kafka_address, topic)]


def _frame_id_of(value: bytes | None) -> str:
    try:
        return messaging.decode_frame(value).frame_id
    except FovealError:
        return f"undecodable-{uuid.uuid4()}"  # not a camera frame: counts as a foreign record


def _triton_counts(serve_bench: Any, settings: Settings) -> tuple[float, float] | None:
    try:
        counts: tuple[float, float] = serve_bench.triton_counts(settings, settings.triton_model)
        return counts
    except OSError as exc:  # an external Triton whose metrics port is not reachable from here
        log.warning("Triton metrics unavailable (%s); the reference runs at batch 1", exc)
        return None


def _avg_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.5)

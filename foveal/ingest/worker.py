"""The ingest worker's consumer loop: poll `foveal.frames`, hand records to a small thread pool,
and commit, per partition, only the offsets below which every record is durably handled.

The main thread alone touches the consumer (kafka-python's consumer is not thread-safe): it
polls, dispatches, drains the completions the pool posts, commits watermarks, pauses every
assigned partition while `max_in_flight` records are in hand (so `poll()` keeps being called,
well within `max.poll.interval.ms`, however slow the reasoner is) and resumes them when a slot
frees. Rebalances: on revoke, records in flight on the lost partitions get `revoke_grace_s` to
finish, their durable watermark is committed, and the rest are abandoned (the new owner
re-reads them; every write is idempotent on frame_id).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from foveal import messaging
from foveal.errors import FovealError
from foveal.ingest.handler import Abandoned, FrameHandler, Limits, Record, Topics
from foveal.ingest.metrics import IngestMetrics
from foveal.ingest.tracker import PartitionTracker
from foveal.serving.metrics import MetricsHttp
from foveal.settings import Settings
from foveal.storage.database import make_engine, session_factory
from foveal.v1 import reasoner_pb2_grpc

log = logging.getLogger(__name__)

RECORD_HEADROOM_BYTES = 1 << 20
MiB = 1 << 20
# After the grace, abandoned jobs get this long to notice before the clients close under them.
ABANDON_WAIT_S = 5.0


@dataclass(frozen=True)
class IngestConfig:
    """Where the worker reads and writes, and its bounds; `from_settings` fills it from Settings."""

    bootstrap: str
    database_url: str
    reasoner_address: str
    group: str = messaging.INGEST_GROUP
    frames_topic: str = messaging.FRAMES_TOPIC
    topics: Topics = field(default_factory=Topics)
    limits: Limits = field(default_factory=Limits)
    max_in_flight: int = 8
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 18053  # None: no endpoint; 0: any free port
    shutdown_grace_s: float = 10.0
    revoke_grace_s: float = 5.0
    poll_timeout_s: float = 0.2
    lag_interval_s: float = 5.0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    client_id: str = "foveal-ingest"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> IngestConfig:
        values: dict[str, Any] = dict(
            bootstrap=settings.kafka_address, database_url=settings.postgres_url,
            reasoner_address=settings.reasoner_address, group=settings.ingest_group,
            frames_topic=settings.ingest_frames_topic,
            topics=Topics(verdicts=settings.ingest_verdicts_topic, dlq=settings.ingest_dlq_topic),
            limits=Limits(inspect_timeout_s=settings.ingest_inspect_timeout_s,
                          max_frame_bytes=settings.ingest_max_frame_bytes,
                          retry_initial_s=settings.ingest_retry_initial_s,
                          retry_max_s=settings.ingest_retry_max_s,
                          max_attempts=settings.ingest_max_attempts),
            max_in_flight=settings.ingest_max_in_flight, metrics_host=settings.bind_host,
            metrics_port=settings.ingest_metrics_port, shutdown_grace_s=settings.ingest_shutdown_grace_s,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class _Partition:
    """What the worker holds for one assigned partition; `cancelled` abandons its jobs' retries."""

    tracker: PartitionTracker = field(default_factory=PartitionTracker)
    cancelled: threading.Event = field(default_factory=threading.Event)
    committed: int | None = None


@dataclass(frozen=True)
class _Done:
    tp: TopicPartition
    offset: int
    owner: _Partition
    handled: bool


class IngestWorker:
    """One ingest process's worker: `run()` blocks until `stop()` (from any thread or a signal)."""

    def __init__(self, settings: Settings, config: IngestConfig) -> None:
        self.settings, self.config = settings, config
        self.metrics = IngestMetrics()
        self._stopping = threading.Event()
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._done: queue.Queue[_Done] = queue.Queue()
        self._in_flight = 0
        self._metrics_http: MetricsHttp | None = None
        max_record = settings.frame_inline_max_bytes + RECORD_HEADROOM_BYTES
        self._engine = make_engine(config.database_url, pool_size=config.max_in_flight, max_overflow=2)
        self._channel = grpc.insecure_channel(config.reasoner_address, options=[
            ("grpc.max_send_message_length", config.limits.max_frame_bytes + MiB),
            ("grpc.max_receive_message_length", 64 * MiB)])
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=config.bootstrap.split(","), client_id=f"{config.client_id}-producer",
                acks="all", enable_idempotence=True, linger_ms=5,
                max_request_size=max(max_record, config.limits.max_frame_bytes + RECORD_HEADROOM_BYTES))
            self._consumer = KafkaConsumer(
                bootstrap_servers=config.bootstrap.split(","), client_id=config.client_id,
                group_id=config.group, enable_auto_commit=False, auto_offset_reset="earliest",
                # Every batch's CRC-32C is checked (the default): the pinned `crc32c` C extension
                # does it in ~0.07 ms per MiB (kafka-python's pure-Python fallback: ~115 ms).
                check_crcs=True,
                max_poll_records=config.max_in_flight,
                max_partition_fetch_bytes=max_record, fetch_max_bytes=max(52_428_800, max_record),
                session_timeout_ms=config.session_timeout_ms,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
            )
        except KafkaError as exc:
            self._channel.close()
            self._engine.dispose()
            raise FovealError(f"ingest: Kafka at {config.bootstrap}: {exc}") from exc
        stub = reasoner_pb2_grpc.ReasonerStub(self._channel)  # type: ignore[no-untyped-call]
        self.handler = FrameHandler(settings, session_factory(self._engine), stub, self._producer,
                                    self.metrics, config.topics, config.limits)
        self._pool = ThreadPoolExecutor(max_workers=config.max_in_flight, thread_name_prefix="ingest")

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_http.port if self._metrics_http is not None else None

    def stop(self) -> None:
        """Ask `run()` to stop: no more polling, in-flight frames get the shutdown grace."""
        self._stopping.set()

    def run(self) -> None:
        """Consume until `stop()`; then finish or abandon in-flight work, commit, close."""
        if self.config.metrics_port is not None:
            self._metrics_http = self.metrics.serve_http(self.config.metrics_host, self.config.metrics_port)
        self._consumer.subscribe([self.config.frames_topic], listener=_Listener(self))
        log.info("ingest: consuming %s as group %s, reasoner at %s", self.config.frames_topic,
                 self.config.group, self.config.reasoner_address)
        next_lag = 0.0
        try:
            while not self._stopping.is_set():
                self._settle()
                self._flow_control()
                free = self.config.max_in_flight - self._in_flight
                batches = self._consumer.poll(timeout_ms=int(self.config.poll_timeout_s * 1000),
                                              max_records=max(1, free))
                for records in batches.values():
                    for record in records:
                        self._dispatch(record)
                if time.monotonic() >= next_lag:
                    self._measure_lag()
                    next_lag = time.monotonic() + self.config.lag_interval_s
        finally:
            self._shutdown()

    # -- dispatch and completion ----------------------------------------------------------
    def _dispatch(self, record: Any) -> None:
        tp = TopicPartition(record.topic, record.partition)
        owner = self._partitions.get(tp)
        if owner is None:  # fetched before a revoke; the partition's new owner reads it
            return
        owner.tracker.dispatched(record.offset)
        self._in_flight += 1
        self.metrics.consumed.inc()
        self.metrics.in_flight.set(self._in_flight)
        item = Record(record.topic, record.partition, record.offset, record.key, record.value,
                      list(record.headers or []))
        self._pool.submit(self._job, item, tp, owner)

    def _job(self, record: Record, tp: TopicPartition, owner: _Partition) -> None:
        handled = False
        try:
            self.handler.handle(record, owner.cancelled)
            handled = True
        except Abandoned:
            log.info("frame at %s: abandoned (stopping or partition revoked)", record.where)
        except Exception:  # the job's outermost frame: never lose a completion to a bug
            log.exception("frame at %s: unexpected failure; not committed", record.where)
        finally:
            self._done.put(_Done(tp, record.offset, owner, handled))

    def _settle(self, wait_s: float = 0.0) -> None:
        """Take the completions posted so far (waiting up to `wait_s` for one), then commit."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                done = self._done.get(timeout=max(0.0, deadline - time.monotonic())) if wait_s \
                    else self._done.get_nowait()
            except queue.Empty:
                break
            self._in_flight -= 1
            if done.handled and self._partitions.get(done.tp) is done.owner:
                done.owner.tracker.finished(done.offset)
            wait_s = 0.0  # one wait at most; then take what is there
        self.metrics.in_flight.set(self._in_flight)
        self._commit(self._partitions)

    def _commit(self, partitions: dict[TopicPartition, _Partition]) -> None:
        offsets = {}
        for tp, state in partitions.items():
            offset = state.tracker.commit_offset()
            if offset is not None and offset != state.committed:
                offsets[tp] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:  # the next settle retries; nothing is lost by committing late
            log.warning("ingest: commit of %s failed: %s", _describe(offsets), exc)
            return
        for tp, meta in offsets.items():
            partitions[tp].committed = meta.offset
        self.metrics.committed.inc()
        log.debug("ingest: committed %s", _describe(offsets))

    def _flow_control(self) -> None:
        assigned = set(self._consumer.assignment())
        paused = set(self._consumer.paused())
        if self._in_flight >= self.config.max_in_flight:
            if assigned - paused:
                self._consumer.pause(*(assigned - paused))
        elif paused:
            self._consumer.resume(*paused)

    def _measure_lag(self) -> None:
        tps = list(self._partitions)
        if not tps:
            return
        try:
            ends = self._consumer.end_offsets(tps)
        except KafkaError as exc:
            log.debug("ingest: end offsets unavailable: %s", exc)
            return
        for tp, end in ends.items():
            state = self._partitions.get(tp)
            if state is None:
                continue
            durable = state.committed if state.committed is not None else self._committed(tp)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - (durable or 0)))

    def _committed(self, tp: TopicPartition) -> int | None:
        try:
            offset: int | None = self._consumer.committed(tp)
            return offset
        except KafkaError:
            return None

    # -- rebalance and shutdown ----------------------------------------------------------
    def revoked(self, tps: Iterable[TopicPartition]) -> None:
        lost = {tp: self._partitions[tp] for tp in tps if tp in self._partitions}
        deadline = time.monotonic() + self.config.revoke_grace_s
        while any(s.tracker.pending for s in lost.values()) and time.monotonic() < deadline:
            self._settle(wait_s=0.1)
        self._settle()
        for tp, state in lost.items():
            state.cancelled.set()
            del self._partitions[tp]
            with contextlib.suppress(KeyError):  # no lag was measured for it yet
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        if lost:
            log.info("ingest: partitions revoked: %s", ", ".join(f"{t.topic}[{t.partition}]" for t in lost))

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._partitions.setdefault(tp, _Partition())
        log.info("ingest: partitions assigned: %s",
                 ", ".join(f"{t.topic}[{t.partition}]" for t in sorted(self._partitions)) or "none")

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while self._in_flight and time.monotonic() < deadline:
            self._settle(wait_s=0.1)
        for state in self._partitions.values():
            state.cancelled.set()  # retries stop; a call to the reasoner or the DB runs to its end
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + ABANDON_WAIT_S
        while self._in_flight and time.monotonic() < deadline and threading.active_count() > 1:
            self._settle(wait_s=0.1)
        self._settle()
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._producer.close(timeout=10)
            self._channel.close()
            self._engine.dispose()
            if self._metrics_http is not None:
                self._metrics_http.close()
        log.info("ingest: stopped")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python calls these inside `poll()`, on the worker's main thread."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.worker.revoked(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.worker.assigned(assigned)


def _describe(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{meta.offset}" for tp, meta in sorted(offsets.items()))

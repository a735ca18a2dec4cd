"""What the ingest worker does with one record of `foveal.frames`, until it is durably handled.

Stages, in order: `size` and `decode` (the envelope), `lookup` (an inspection already stored
for this frame_id: a replay, answered from the database), `fetch` (claim checks read and
verified), `inspect` (Reasoner.Inspect with a deadline), `blob` (every full frame, each frame of
a sequence too, into the content-addressed blob store), `store` (frame, its blob keys in order,
inspection, steps, crops and a NOTIFY in one transaction, idempotent on frame_id), `verdict` (a
`Verdict` on the verdicts topic, acknowledged by all replicas). A record ends either handled
(verdict produced) or on the DLQ with the stage that refused it. Poison input (`Poison`) goes to
the DLQ at once; transient faults (`Transient`: reasoner UNAVAILABLE / DEADLINE_EXCEEDED /
RESOURCE_EXHAUSTED, database connection errors, broker errors) are retried with capped
exponential backoff for as long as it takes; any other failure is retried `max_attempts` times,
then goes to the DLQ.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from kafka import KafkaProducer
from kafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from foveal import blobs, messaging
from foveal.errors import CodecError, FovealError
from foveal.ingest.metrics import IngestMetrics
from foveal.ingest.tracker import backoff_s
from foveal.settings import Settings
from foveal.storage import repository as repo
from foveal.v1 import frame_pb2, inspection_pb2, reasoner_pb2_grpc, verdict_pb2

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED})
POISON_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
DECISION_NAMES = {verdict_pb2.DECISION_OK: "ok", verdict_pb2.DECISION_DEFECT: "defect",
                  verdict_pb2.DECISION_UNCERTAIN: "uncertain"}
DECISION_VALUES = {name: value for value, name in DECISION_NAMES.items()}


class IngestError(FovealError):
    """A record could not be handled at `stage`; subclasses say whether to retry."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


class Poison(IngestError):
    """The record can never be handled: it goes to the DLQ."""


class Transient(IngestError):
    """A fault outside the record (a service down, a deadline): retry it, never skip it."""


class Abandoned(FovealError):
    """The worker stopped, or lost the partition, before the record was handled."""


@dataclass(frozen=True)
class Record:
    """What the handler needs of a Kafka record (kafka-python's ConsumerRecord has these fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Topics:
    verdicts: str = messaging.VERDICTS_TOPIC
    dlq: str = messaging.DLQ_TOPIC


@dataclass(frozen=True)
class Limits:
    inspect_timeout_s: float = 60.0
    max_frame_bytes: int = 32_000_000
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    max_attempts: int = 5


@dataclass(frozen=True)
class Decided:
    """A result, from the reasoner or read back from the database, as a verdict needs it."""

    verdict: str
    defect_type: str
    confidence: float
    box: repo.Box4 | None
    model_name: str
    model_version: str
    inspected_at: datetime


class FrameHandler:
    """Handles records one at a time per call; safe to call from several threads at once."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 stub: reasoner_pb2_grpc.ReasonerStub, producer: KafkaProducer, metrics: IngestMetrics,
                 topics: Topics | None = None, limits: Limits | None = None) -> None:
        self.settings, self.sessions, self.stub, self.producer = settings, sessions, stub, producer
        self.metrics, self.topics, self.limits = metrics, topics or Topics(), limits or Limits()
        self.store = blobs.store_for(settings)

    def handle(self, record: Record, cancelled: threading.Event) -> str:
        """Handle `record` until it is durable: "inspected", "replayed" or "dlq". Raises Abandoned
        when `cancelled` is set while waiting to retry."""
        consumed_at = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            error: IngestError
            try:
                return self._attempt(record, consumed_at)
            except Poison as exc:
                return self._dead_letter(record, exc, attempt, cancelled)
            except Transient as exc:
                error = exc
            except IngestError as exc:
                if attempt >= self.limits.max_attempts:
                    return self._dead_letter(record, exc, attempt, cancelled)
                error = exc
            self._wait_to_retry(record, error.stage, error, attempt, cancelled)

    def _wait_to_retry(self, record: Record, stage: str, error: Exception, attempt: int,
                       cancelled: threading.Event) -> None:
        delay_s = backoff_s(attempt, self.limits.retry_initial_s, self.limits.retry_max_s)
        self.metrics.retries.labels(stage).inc()
        log.warning("frame at %s: %s failed (attempt %d), retrying in %.1f s: %s", record.where, stage,
                    attempt, delay_s, error, extra={"where": record.where, "stage": stage})
        if cancelled.wait(delay_s):
            raise Abandoned(f"{record.where}: abandoned during {stage} retries")

    # -- one attempt ----------------------------------------------------------------------
    def _attempt(self, record: Record, consumed_at: float) -> str:
        envelope = self._decode(record)
        frame_id = uuid.UUID(envelope.frame_id)
        stored = self._stored(frame_id)
        if stored is not None:
            at = self._publish(record, envelope, stored, consumed_at)
            self.metrics.replayed.inc()
            log.info("frame %s at %s: already inspected, verdict produced again to %s", frame_id,
                     record.where, at,
                     extra={"frame_id": str(frame_id), "where": record.where, "verdict_at": at})
            return "replayed"
        images = self._fetch(envelope)
        result = self._inspect(envelope)
        decided = decided_from_result(result)
        blob_uris = self._keep(images)
        self._write(record, envelope, result, blob_uris)
        at = self._publish(record, envelope, decided, consumed_at)
        self.metrics.inspected.inc()
        log.info("frame %s at %s: %s %s (%.2f), verdict at %s", frame_id, record.where, decided.verdict,
                 decided.defect_type, decided.confidence, at,
                 extra={"frame_id": str(frame_id), "where": record.where, "verdict_at": at})
        return "inspected"

    def _decode(self, record: Record) -> frame_pb2.FrameEnvelope:
        limit = self.limits.max_frame_bytes
        if record.value is not None and len(record.value) > limit:
            raise Poison("size", f"record value is {len(record.value)} bytes, over the {limit} byte limit")
        try:
            envelope = messaging.decode_frame(record.value)
            messaging.frame_meta(envelope)
        except CodecError as exc:
            raise Poison("decode", str(exc)) from exc
        total = sum(len(image.inline) if image.WhichOneof("source") == "inline" else image.blob.size_bytes
                    for image in _images(envelope))
        if total > limit:
            raise Poison("size", f"frame {envelope.frame_id}: images total {total} bytes, over the "
                                 f"{limit} byte limit")
        return envelope

    def _stored(self, frame_id: uuid.UUID) -> Decided | None:
        with _database("lookup"), self.sessions() as session, session.begin():
            row = repo.find_inspection(session, frame_id)
            if row is None:
                return None
            box = None if row.box_x1 is None else (row.box_x1, row.box_y1 or 0.0, row.box_x2 or 0.0,
                                                   row.box_y2 or 0.0)
            return Decided(row.verdict, row.defect_type, row.confidence, box, row.model_name,
                           row.model_version, row.created_at)

    def _fetch(self, envelope: frame_pb2.FrameEnvelope) -> list[tuple[bytes, str, str | None]]:
        """Every image's bytes, mime type and, for a claim check (read and verified here), the
        digest it was verified against."""
        images: list[tuple[bytes, str, str | None]] = []
        for image in _images(envelope):
            if image.WhichOneof("source") == "inline":
                images.append((image.inline, image.mime_type, None))
                continue
            ref = image.blob
            try:
                data = blobs.fetch(self.settings, ref.uri, ref.sha256 or None, ref.size_bytes or None)
            except blobs.BlobUnavailable as exc:  # the store is down, not the record bad: retry
                raise Transient("fetch", f"frame {envelope.frame_id}: claim check: {exc}") from exc
            except blobs.BlobError as exc:
                raise Poison("fetch", f"frame {envelope.frame_id}: claim check: {exc}") from exc
            images.append((data, image.mime_type, ref.sha256 or None))
        return images

    def _inspect(self, envelope: frame_pb2.FrameEnvelope) -> inspection_pb2.InspectResult:
        request = inspection_pb2.InspectRequest(frame_id=envelope.frame_id, product=envelope.product,
                                                sequence=list(envelope.sequence))
        if envelope.HasField("image"):
            request.image.CopyFrom(envelope.image)
        try:
            result: inspection_pb2.InspectResult = self.stub.Inspect(
                request, timeout=self.limits.inspect_timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            message = f"frame {envelope.frame_id}: Reasoner.Inspect: {code.name}: {details}"
            if code in POISON_CODES:
                raise Poison("inspect", message) from exc
            if code in TRANSIENT_CODES:
                raise Transient("inspect", message) from exc
            raise IngestError("inspect", message) from exc
        if result.verdict not in DECISION_NAMES:
            raise IngestError("inspect", f"frame {envelope.frame_id}: the result has no verdict")
        return result

    def _keep(self, images: list[tuple[bytes, str, str | None]]) -> list[str]:
        """Put every image in the blob store (idempotent; a claim check already in it is found by
        its verified digest, not hashed again); their URIs in order."""
        uris = []
        for data, mime_type, digest in images:
            try:
                uris.append(self.store.put(data, mime_type, digest).uri)
            except blobs.BlobError as exc:
                raise Transient("blob", str(exc)) from exc
        return uris

    def _write(self, record: Record, envelope: frame_pb2.FrameEnvelope,
               result: inspection_pb2.InspectResult, blob_uris: list[str]) -> None:
        source = repo.KafkaSource(record.topic, record.partition, record.offset)
        frame = new_frame(envelope, blob_uris, source)
        inspection = new_inspection(result)
        with _database("store"), self.sessions() as session, session.begin():
            repo.insert_frame(session, frame)
            if repo.insert_inspection(session, frame.frame_id, inspection) is not None:
                repo.notify_inspection(session, frame.frame_id)

    def _publish(self, record: Record, envelope: frame_pb2.FrameEnvelope, decided: Decided,
                 consumed_at: float) -> str:
        """Produce the verdict; returns where the broker acknowledged it ("topic[partition]@offset")."""
        verdict = verdict_message(envelope, decided, (time.monotonic() - consumed_at) * 1000.0)
        try:
            value = messaging.encode_verdict(verdict)
        except CodecError as exc:
            raise Poison("verdict", str(exc)) from exc
        at = self._send(self.topics.verdicts, messaging.frame_key(envelope.station), value, [], "verdict")
        captured_at = envelope.captured_at.ToDatetime(tzinfo=UTC)
        self.metrics.latency.observe(max(0.0, (datetime.now(UTC) - captured_at).total_seconds()))
        return at

    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
              stage: str) -> str:
        try:
            sent = self.producer.send(topic, key=key, value=value, headers=headers)
            meta = sent.get(timeout=SEND_TIMEOUT_S)
        except KafkaError as exc:
            raise Transient(stage, f"producing to {topic}: {exc}") from exc
        return f"{meta.topic}[{meta.partition}]@{meta.offset}"

    def _dead_letter(self, record: Record, error: IngestError, attempts: int,
                     cancelled: threading.Event) -> str:
        headers = [*record.headers, *messaging.dlq_headers(str(error), error.stage, attempts)]
        retry = 0
        while True:
            retry += 1
            try:
                self._send(self.topics.dlq, record.key, record.value, headers, "dlq")
                break
            except Transient as exc:
                self._wait_to_retry(record, "dlq", exc, retry, cancelled)
        self.metrics.dlq.labels(error.stage).inc()
        log.warning("frame at %s: to the DLQ (stage %s, %d attempts): %s", record.where, error.stage,
                    attempts, error, extra={"where": record.where, "stage": error.stage})
        return "dlq"


class _database:
    """Translate database failures at `stage`: lost connections are transient, refused data poison."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is None or not isinstance(exc, SQLAlchemyError):
            return
        if isinstance(exc, IntegrityError) or (isinstance(exc, DBAPIError) and _data_error(exc)):
            raise Poison(self.stage, f"the database refused the result: {exc.orig}") from exc
        raise Transient(self.stage, f"database: {exc.__class__.__name__}: {exc}") from exc


def _data_error(exc: DBAPIError) -> bool:
    """A constraint or data error (SQLSTATE classes 22, 23): retrying the same data cannot help."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return not exc.connection_invalidated and sqlstate[:2] in ("22", "23")


def _images(envelope: frame_pb2.FrameEnvelope) -> list[frame_pb2.Image]:
    """The images inspected: the sequence when there is one, else the single image."""
    return list(envelope.sequence) if envelope.sequence else [envelope.image]


# -- conversions at the edge: protobuf → repository dataclasses → protobuf ---------------
def new_frame(envelope: frame_pb2.FrameEnvelope, blob_uris: list[str],
              source: repo.KafkaSource | None) -> repo.NewFrame:
    """The frame row and one blob row per image: `blob_uris[k]` is where image k was kept."""
    meta = messaging.frame_meta(envelope)
    images = _images(envelope)
    if blob_uris and len(blob_uris) != len(images):
        raise ValueError(f"frame {envelope.frame_id}: {len(blob_uris)} blob URIs for {len(images)} images")
    first = images[0]
    kept = tuple(repo.NewBlob(uri, image.mime_type, image.width or None, image.height or None)
                 for uri, image in zip(blob_uris, images, strict=False))
    return repo.NewFrame(
        meta=meta, mime_type=first.mime_type, width=first.width or None, height=first.height or None,
        blob_key=blob_uris[0] if blob_uris else None, sequence_length=max(1, len(envelope.sequence)),
        source=source, blobs=kept,
    )


def new_inspection(result: inspection_pb2.InspectResult) -> repo.NewInspection:
    timings = result.timings
    steps = tuple(
        repo.NewStep(index=step.index, operation=step.operation, arguments=_arguments(step.arguments_json),
                     text=step.text, error=step.error or None, duration_ms=max(0.0, step.duration_ms),
                     crops=tuple(repo.NewCrop(image=i.data, mime_type=i.mime_type, width=i.width,
                                              height=i.height, box=_box(i.box), frame_index=i.frame_index)
                                 for i in step.images))
        for step in result.steps)
    return repo.NewInspection(
        verdict=DECISION_NAMES[result.verdict], defect_type=result.defect_type,
        confidence=float(result.confidence),
        box=_box(result.evidence_box) if result.HasField("evidence_box") else None,
        model_name=result.model.name, model_version=result.model.version, operations=result.operations,
        latency_ms=max(0.0, timings.total_ms),
        timings={"total_ms": timings.total_ms, "model_ms": timings.model_ms,
                 "operations_ms": timings.operations_ms, "queue_ms": timings.queue_ms},
        steps=steps,
    )


def decided_from_result(result: inspection_pb2.InspectResult) -> Decided:
    return Decided(DECISION_NAMES[result.verdict], result.defect_type, float(result.confidence),
                   _box(result.evidence_box) if result.HasField("evidence_box") else None,
                   result.model.name, result.model.version, datetime.now(UTC))


def verdict_message(envelope: frame_pb2.FrameEnvelope, decided: Decided,
                    latency_ms: float) -> verdict_pb2.Verdict:
    verdict = verdict_pb2.Verdict(
        frame_id=envelope.frame_id, line=envelope.line, station=envelope.station, camera=envelope.camera,
        part_serial=envelope.part_serial, product=envelope.product, verdict=DECISION_VALUES[decided.verdict],
        defect_type=decided.defect_type, confidence=decided.confidence, latency_ms=max(0.0, latency_ms),
        model=verdict_pb2.ModelRef(name=decided.model_name, version=decided.model_version),
    )
    verdict.captured_at.CopyFrom(envelope.captured_at)
    verdict.inspected_at.FromDatetime(decided.inspected_at)
    if decided.box is not None:
        x1, y1, x2, y2 = decided.box
        verdict.evidence_box.CopyFrom(verdict_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    return verdict


def _box(box: verdict_pb2.Box) -> repo.Box4:
    return (float(box.x1), float(box.y1), float(box.x2), float(box.y2))


def _arguments(arguments_json: str) -> dict[str, Any]:
    """A step's arguments as a JSON object; text that is not one is kept under "raw"."""
    if not arguments_json:
        return {}
    try:
        parsed = json.loads(arguments_json)
    except ValueError:
        return {"raw": arguments_json}
    return parsed if isinstance(parsed, dict) else {"raw": parsed}


Handle = Callable[[Record, threading.Event], str]

"""Kafka topics and the message codec: the one place that knows topic names and wire formats.

`foveal.frames` carries protobuf `FrameEnvelope`s keyed by station id, `foveal.verdicts` carries
protobuf `Verdict`s keyed the same way, and `foveal.frames.dlq` carries the original bytes of a
frame that could not be handled, with `error`, `stage` and `attempts` headers. Decoding checks
the contract after parsing, because protobuf happily parses many arbitrary byte strings; every
failure is a `CodecError` with a message fit for a DLQ header. Producers encode through the same
checks, so nothing invalid is ever published.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from foveal import domain
from foveal.errors import CodecError
from foveal.v1 import frame_pb2, verdict_pb2

FRAMES_TOPIC = "foveal.frames"
VERDICTS_TOPIC = "foveal.verdicts"
DLQ_TOPIC = "foveal.frames.dlq"
INGEST_GROUP = "foveal-ingest"

DLQ_ERROR_HEADER = "error"
DLQ_STAGE_HEADER = "stage"
DLQ_ATTEMPTS_HEADER = "attempts"

# The model protocol accepts at most 16 images per inspection (DESIGN.md, "Model protocol").
MAX_SEQUENCE_FRAMES = 16
# Brokers cap record size; an error message with a huge repr must not make the DLQ write fail.
MAX_DLQ_ERROR_BYTES = 4096

# Hyphenated text only (any case, as RFC 9562 reads it), so braces or URNs never reach the DB.
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DECISIONS: dict[int, domain.Verdict] = {
    verdict_pb2.DECISION_OK: domain.Verdict.OK,
    verdict_pb2.DECISION_DEFECT: domain.Verdict.DEFECT,
    verdict_pb2.DECISION_UNCERTAIN: domain.Verdict.UNCERTAIN,
}


@dataclass(frozen=True)
class DlqInfo:
    """Why a record is on the DLQ: the error, the stage that failed, and how often it was tried."""

    error: str
    stage: str
    attempts: int


def frame_key(station: str) -> bytes:
    """Kafka record key for frames and verdicts: the station id, keeping a station in order."""
    if not station:
        raise CodecError("station is empty; frames and verdicts are keyed by station id")
    return station.encode("utf-8")


def dlq_headers(error: str, stage: str, attempts: int) -> list[tuple[str, bytes]]:
    """Headers for a DLQ record, as kafka-python's `send(headers=...)` takes them."""
    if attempts < 0:
        raise CodecError(f"DLQ attempts must be >= 0, got {attempts}")
    # Cut on a byte budget, then drop a split UTF-8 sequence at the end.
    error_bytes = error.encode("utf-8")[:MAX_DLQ_ERROR_BYTES].decode("utf-8", "ignore").encode()
    return [
        (DLQ_ERROR_HEADER, error_bytes),
        (DLQ_STAGE_HEADER, stage.encode("utf-8")),
        (DLQ_ATTEMPTS_HEADER, str(attempts).encode("ascii")),
    ]


def parse_dlq_headers(headers: Iterable[tuple[str, bytes | None]]) -> DlqInfo:
    """Read back what `dlq_headers` wrote; other headers are ignored, the last duplicate wins."""
    values = dict(headers)
    names = (DLQ_ERROR_HEADER, DLQ_STAGE_HEADER, DLQ_ATTEMPTS_HEADER)
    missing = [name for name in names if values.get(name) is None]
    if missing:
        raise CodecError(f"DLQ record lacks header(s) {missing}")
    try:
        error = _header_text(values, DLQ_ERROR_HEADER)
        stage = _header_text(values, DLQ_STAGE_HEADER)
        attempts = int(_header_text(values, DLQ_ATTEMPTS_HEADER))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise CodecError(f"DLQ record has a malformed header: {exc}") from exc
    if attempts < 0:
        raise CodecError(f"DLQ attempts header must be >= 0, got {attempts}")
    return DlqInfo(error=error, stage=stage, attempts=attempts)


def _header_text(values: dict[str, bytes | None], name: str) -> str:
    return (values[name] or b"").decode("utf-8")


def encode_frame(envelope: frame_pb2.FrameEnvelope) -> bytes:
    """Bytes for `foveal.frames`; raises CodecError if the envelope breaks the contract."""
    _check_frame(envelope)
    return envelope.SerializeToString(deterministic=True)


def decode_frame(value: bytes | None) -> frame_pb2.FrameEnvelope:
    """Parse and check a `foveal.frames` record value; raises CodecError on anything invalid."""
    envelope = frame_pb2.FrameEnvelope()
    _parse(envelope, value)
    _check_frame(envelope)
    return envelope


def encode_verdict(verdict: verdict_pb2.Verdict) -> bytes:
    """Bytes for `foveal.verdicts`; raises CodecError if the verdict breaks the contract."""
    _check_verdict(verdict)
    return verdict.SerializeToString(deterministic=True)


def decode_verdict(value: bytes | None) -> verdict_pb2.Verdict:
    """Parse and check a `foveal.verdicts` record value; raises CodecError on anything invalid."""
    verdict = verdict_pb2.Verdict()
    _parse(verdict, value)
    _check_verdict(verdict)
    return verdict


def frame_meta(envelope: frame_pb2.FrameEnvelope) -> domain.FrameMeta:
    """The domain view of a frame's metadata (everything but the pixels)."""
    try:
        return domain.FrameMeta(
            frame_id=_frame_id(envelope.frame_id),
            line=envelope.line,
            station=envelope.station,
            camera=envelope.camera,
            part_serial=envelope.part_serial,
            product=envelope.product,
            captured_at=_timestamp(envelope, "captured_at"),
            attributes=dict(envelope.attributes),
        )
    except ValueError as exc:
        raise CodecError(f"frame {envelope.frame_id!r}: {exc}") from exc


def _parse(message: frame_pb2.FrameEnvelope | verdict_pb2.Verdict, value: bytes | None) -> None:
    name = message.DESCRIPTOR.name
    if value is None:
        raise CodecError(f"record has no value (a tombstone?); expected a {name}")
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise CodecError(f"not a protobuf {name} ({len(value)} bytes): {exc}") from exc


def _frame_id(text: str) -> uuid.UUID:
    if not text:
        raise CodecError("frame_id is missing")
    if not _UUID_TEXT.fullmatch(text):
        raise CodecError(f"frame_id {text[:64]!r} is not a UUID (canonical 8-4-4-4-12 hex form)")
    return uuid.UUID(text)


def _timestamp(message: frame_pb2.FrameEnvelope | verdict_pb2.Verdict, field: str) -> datetime:
    if not message.HasField(field):
        raise CodecError(f"{field} is missing")
    stamp: Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise CodecError(f"{field} is out of range: {exc}") from exc


def _check_frame(envelope: frame_pb2.FrameEnvelope) -> None:
    _frame_id(envelope.frame_id)
    try:
        _timestamp(envelope, "captured_at")
        if not envelope.HasField("image") and not envelope.sequence:
            raise CodecError("has no image and no sequence")
        if len(envelope.sequence) > MAX_SEQUENCE_FRAMES:
            raise CodecError(
                f"sequence has {len(envelope.sequence)} frames, more than {MAX_SEQUENCE_FRAMES}"
            )
        if envelope.HasField("image"):
            _check_image(envelope.image, "image")
        for index, image in enumerate(envelope.sequence):
            _check_image(image, f"sequence[{index}]")
    except CodecError as exc:
        raise CodecError(f"frame {envelope.frame_id}: {exc}") from exc


def _check_image(image: frame_pb2.Image, where: str) -> None:
    if not image.mime_type:
        raise CodecError(f"{where} has an empty mime type")
    source = image.WhichOneof("source")
    if source is None:
        raise CodecError(f"{where} has neither inline bytes nor a blob reference")
    if source == "inline" and not image.inline:
        raise CodecError(f"{where} has empty inline bytes")
    if source == "blob":
        if not image.blob.uri:
            raise CodecError(f"{where} has a blob reference without a uri")
        if image.blob.sha256 and not _SHA256_HEX.fullmatch(image.blob.sha256):
            raise CodecError(f"{where} blob sha256 is not 64 lowercase hex digits")


def _check_verdict(verdict: verdict_pb2.Verdict) -> None:
    _frame_id(verdict.frame_id)
    try:
        _timestamp(verdict, "captured_at")
        _timestamp(verdict, "inspected_at")
        _check_decision(verdict)
        if not 0.0 <= verdict.confidence <= 1.0:  # False for NaN as well
            raise CodecError(f"confidence {verdict.confidence} is not in [0, 1]")
        if not (math.isfinite(verdict.latency_ms) and verdict.latency_ms >= 0.0):
            raise CodecError(f"latency_ms {verdict.latency_ms} is not a finite non-negative number")
        if verdict.HasField("evidence_box"):
            b = verdict.evidence_box
            domain.Box(b.x1, b.y1, b.x2, b.y2)
    except (CodecError, ValueError) as exc:  # domain invariants raise ValueError
        raise CodecError(f"verdict for frame {verdict.frame_id}: {exc}") from exc


def _check_decision(verdict: verdict_pb2.Verdict) -> None:
    decision = _DECISIONS.get(verdict.verdict)
    if decision is None:
        raise CodecError(f"verdict value {verdict.verdict} is not ok, defect or uncertain")
    defect_type = verdict.defect_type
    if defect_type:
        domain.check_defect_name(defect_type)
    if decision is domain.Verdict.OK and defect_type != domain.NO_DEFECT:
        raise CodecError(f"ok verdicts need defect_type {domain.NO_DEFECT!r}, not {defect_type!r}")
    if decision is domain.Verdict.DEFECT and defect_type in ("", domain.NO_DEFECT):
        raise CodecError(f"defect verdicts need a defect_type other than {defect_type!r}")

"""Tests of foveal.messaging: topic names, the frame and verdict codecs, DLQ headers.

The codec must turn every bad record into a CodecError (which the ingest worker sends to the
DLQ) and never into any other exception; the fuzz tests below hold it to that on arbitrary and
on mutated valid bytes. Run: `.venv/bin/python -m pytest tests/messaging -q`.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from foveal import domain, messaging
from foveal.errors import CodecError
from foveal.v1 import frame_pb2, verdict_pb2

FRAME_ID = "0b9f6a3e-5c1d-4e2f-9a7b-3c4d5e6f7a8b"
CAPTURED_AT = Timestamp(seconds=1_760_000_000, nanos=500_000_000)


def _image(data: bytes = b"\x89PNG\r\n") -> frame_pb2.Image:
    return frame_pb2.Image(mime_type="image/png", inline=data, width=64, height=48)


def _envelope() -> frame_pb2.FrameEnvelope:
    return frame_pb2.FrameEnvelope(
        frame_id=FRAME_ID,
        line="line-1",
        station="station-3",
        camera="cam-a",
        part_serial="SN-0001",
        product="bracket-7",
        captured_at=CAPTURED_AT,
        image=_image(),
        attributes={"lot": "L42"},
    )


def _verdict() -> verdict_pb2.Verdict:
    return verdict_pb2.Verdict(
        frame_id=FRAME_ID,
        station="station-3",
        captured_at=CAPTURED_AT,
        inspected_at=Timestamp(seconds=1_760_000_001),
        verdict=verdict_pb2.DECISION_DEFECT,
        defect_type="scratch",
        confidence=0.9,
        evidence_box=verdict_pb2.Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4),
        model=verdict_pb2.ModelRef(name="foveal-reasoner", version="1"),
        latency_ms=850.0,
    )


def _decode_invalid_frame(envelope: frame_pb2.FrameEnvelope, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        messaging.decode_frame(envelope.SerializeToString())


def _decode_invalid_verdict(verdict: verdict_pb2.Verdict, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        messaging.decode_verdict(verdict.SerializeToString())


def test_topic_and_group_names_are_the_contract() -> None:
    assert messaging.FRAMES_TOPIC == "foveal.frames"
    assert messaging.VERDICTS_TOPIC == "foveal.verdicts"
    assert messaging.DLQ_TOPIC == "foveal.frames.dlq"
    assert messaging.INGEST_GROUP == "foveal-ingest"


def test_frame_roundtrips_through_encode_and_decode() -> None:
    assert messaging.decode_frame(messaging.encode_frame(_envelope())) == _envelope()


def test_frame_with_blob_image_and_full_sequence_roundtrips() -> None:
    envelope = _envelope()
    envelope.image.blob.uri = "s3://frames/a.png"
    envelope.image.blob.sha256 = "0f" * 32
    envelope.sequence.extend(_image(bytes([i + 1])) for i in range(messaging.MAX_SEQUENCE_FRAMES))

    assert messaging.decode_frame(messaging.encode_frame(envelope)) == envelope


def test_frame_with_only_a_sequence_is_valid() -> None:
    envelope = _envelope()
    envelope.ClearField("image")
    envelope.sequence.append(_image())

    assert messaging.decode_frame(envelope.SerializeToString()).sequence[0] == _image()


def test_decode_rejects_undecodable_protobuf() -> None:
    with pytest.raises(CodecError, match="not a protobuf FrameEnvelope"):
        messaging.decode_frame(b"\xff\xff\xff\xff")


def test_decode_rejects_a_tombstone() -> None:
    with pytest.raises(CodecError, match="no value"):
        messaging.decode_frame(None)


def test_decode_rejects_frame_without_frame_id() -> None:
    envelope = _envelope()
    envelope.frame_id = ""
    _decode_invalid_frame(envelope, "frame_id is missing")


@pytest.mark.parametrize(
    "frame_id",
    [
        "frame-42",
        f"{{{FRAME_ID}}}",
        f"urn:uuid:{FRAME_ID}",
        FRAME_ID.replace("-", ""),
        FRAME_ID + "0",
    ],
)
def test_decode_rejects_frame_without_uuid(frame_id: str) -> None:
    envelope = _envelope()
    envelope.frame_id = frame_id
    _decode_invalid_frame(envelope, "is not a UUID")


def test_decode_accepts_an_uppercase_uuid() -> None:
    envelope = _envelope()
    envelope.frame_id = FRAME_ID.upper()

    assert messaging.frame_meta(messaging.decode_frame(envelope.SerializeToString())).frame_id == (
        uuid.UUID(FRAME_ID)
    )


def test_decode_rejects_frame_without_image_and_sequence() -> None:
    envelope = _envelope()
    envelope.ClearField("image")
    _decode_invalid_frame(envelope, "no image and no sequence")


def test_decode_rejects_image_with_neither_inline_bytes_nor_blob() -> None:
    envelope = _envelope()
    envelope.image.ClearField("inline")
    _decode_invalid_frame(envelope, "neither inline bytes nor a blob")


def test_decode_rejects_empty_inline_bytes() -> None:
    envelope = _envelope()
    envelope.image.inline = b""
    _decode_invalid_frame(envelope, "empty inline bytes")


def test_decode_rejects_blob_without_uri() -> None:
    envelope = _envelope()
    envelope.image.blob.size_bytes = 10
    _decode_invalid_frame(envelope, "without a uri")


def test_decode_rejects_blob_with_malformed_sha256() -> None:
    envelope = _envelope()
    envelope.image.blob.uri = "s3://frames/a.png"
    envelope.image.blob.sha256 = "ABC"
    _decode_invalid_frame(envelope, "sha256")


def test_decode_rejects_image_with_empty_mime_type() -> None:
    envelope = _envelope()
    envelope.image.mime_type = ""
    _decode_invalid_frame(envelope, "image has an empty mime type")


def test_decode_rejects_sequence_frame_with_empty_mime_type() -> None:
    envelope = _envelope()
    envelope.sequence.extend([_image(), frame_pb2.Image(inline=b"x")])
    _decode_invalid_frame(envelope, r"sequence\[1\] has an empty mime type")


def test_decode_rejects_sequence_longer_than_16() -> None:
    envelope = _envelope()
    envelope.sequence.extend(_image() for _ in range(messaging.MAX_SEQUENCE_FRAMES + 1))
    _decode_invalid_frame(envelope, "17 frames, more than 16")


def test_decode_rejects_frame_without_capture_time() -> None:
    envelope = _envelope()
    envelope.ClearField("captured_at")
    _decode_invalid_frame(envelope, "captured_at is missing")


def test_decode_rejects_capture_time_out_of_range() -> None:
    envelope = _envelope()
    envelope.captured_at.seconds = 10**15
    _decode_invalid_frame(envelope, "captured_at is out of range")


def test_decode_errors_name_the_frame() -> None:
    envelope = _envelope()
    envelope.ClearField("image")
    _decode_invalid_frame(envelope, f"frame {FRAME_ID}")


def test_encode_refuses_an_invalid_frame() -> None:
    envelope = _envelope()
    envelope.frame_id = "not-a-uuid"

    with pytest.raises(CodecError, match="not a UUID"):
        messaging.encode_frame(envelope)


def test_frame_meta_carries_the_envelope_metadata() -> None:
    meta = messaging.frame_meta(_envelope())

    assert meta == domain.FrameMeta(
        frame_id=uuid.UUID(FRAME_ID),
        line="line-1",
        station="station-3",
        camera="cam-a",
        part_serial="SN-0001",
        product="bracket-7",
        captured_at=datetime(2025, 10, 9, 8, 53, 20, 500_000, tzinfo=UTC),
        attributes={"lot": "L42"},
    )


def test_frame_meta_rejects_an_envelope_without_capture_time() -> None:
    envelope = _envelope()
    envelope.ClearField("captured_at")

    with pytest.raises(CodecError, match="captured_at"):
        messaging.frame_meta(envelope)


def test_frame_key_is_the_station_id_in_utf8() -> None:
    assert messaging.frame_key("station-3") == b"station-3"
    assert messaging.frame_key("poste-é") == "poste-é".encode()


def test_frame_key_rejects_an_empty_station() -> None:
    with pytest.raises(CodecError, match="station"):
        messaging.frame_key("")


@settings(max_examples=500)
@given(value=st.binary(max_size=512))
def test_decode_frame_on_arbitrary_bytes_returns_a_valid_envelope_or_raises_codec_error(
    value: bytes,
) -> None:
    _assert_frame_decodes_or_codec_error(value)


@settings(max_examples=500)
@given(data=st.data())
def test_decode_frame_on_mutated_valid_bytes_returns_a_valid_envelope_or_raises_codec_error(
    data: st.DataObject,
) -> None:
    # Mutations of a valid record get past the parser far more often than random bytes do.
    value = bytearray(messaging.encode_frame(_envelope()))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(value) - 1))
        value[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.just(len(value)) | st.integers(0, len(value)))
    _assert_frame_decodes_or_codec_error(bytes(value[:cut]))


def _assert_frame_decodes_or_codec_error(value: bytes) -> None:
    try:
        envelope = messaging.decode_frame(value)
    except CodecError:
        return
    # What decodes must be usable downstream without further checks.
    assert isinstance(messaging.frame_meta(envelope), domain.FrameMeta)
    assert messaging.decode_frame(messaging.encode_frame(envelope)) == envelope


def test_verdict_roundtrips_through_encode_and_decode() -> None:
    assert messaging.decode_verdict(messaging.encode_verdict(_verdict())) == _verdict()


def test_verdict_without_evidence_box_is_valid() -> None:
    verdict = _verdict()
    verdict.ClearField("evidence_box")

    assert not messaging.decode_verdict(verdict.SerializeToString()).HasField("evidence_box")


def test_decode_verdict_rejects_undecodable_protobuf() -> None:
    with pytest.raises(CodecError, match="not a protobuf Verdict"):
        messaging.decode_verdict(b"\x0a\x05\xff\xfe\xfd\xfc\xfb")


@pytest.mark.parametrize("decision", [verdict_pb2.DECISION_UNSPECIFIED, 7])
def test_decode_verdict_rejects_unset_or_unknown_decision(decision: int) -> None:
    verdict = _verdict()
    verdict.verdict = decision  # type: ignore[assignment]
    _decode_invalid_verdict(verdict, "not ok, defect or uncertain")


@pytest.mark.parametrize(
    ("decision", "defect_type", "match"),
    [
        (verdict_pb2.DECISION_OK, "scratch", "ok verdicts need defect_type 'none'"),
        (verdict_pb2.DECISION_DEFECT, "none", "defect verdicts need a defect_type"),
        (verdict_pb2.DECISION_DEFECT, "", "defect verdicts need a defect_type"),
        (verdict_pb2.DECISION_UNCERTAIN, "Bad Name", "a-z0-9_"),
    ],
)
def test_decode_verdict_rejects_defect_type_inconsistent_with_decision(
    decision: int, defect_type: str, match: str
) -> None:
    verdict = _verdict()
    verdict.verdict = decision  # type: ignore[assignment]
    verdict.defect_type = defect_type
    _decode_invalid_verdict(verdict, match)


@pytest.mark.parametrize("confidence", [-0.1, 1.5, math.nan])
def test_decode_verdict_rejects_confidence_outside_unit_interval(confidence: float) -> None:
    verdict = _verdict()
    verdict.confidence = confidence
    _decode_invalid_verdict(verdict, "confidence")


def test_decode_verdict_rejects_invalid_evidence_box() -> None:
    verdict = _verdict()
    verdict.evidence_box.x2 = 0.05
    _decode_invalid_verdict(verdict, "0 <= x1 < x2 <= 1")


@pytest.mark.parametrize("latency_ms", [-1.0, math.inf, math.nan])
def test_decode_verdict_rejects_negative_or_non_finite_latency(latency_ms: float) -> None:
    verdict = _verdict()
    verdict.latency_ms = latency_ms
    _decode_invalid_verdict(verdict, "latency_ms")


def test_decode_verdict_rejects_missing_inspection_time() -> None:
    verdict = _verdict()
    verdict.ClearField("inspected_at")
    _decode_invalid_verdict(verdict, "inspected_at is missing")


def test_encode_refuses_a_verdict_without_uuid() -> None:
    verdict = _verdict()
    verdict.frame_id = "42"

    with pytest.raises(CodecError, match="not a UUID"):
        messaging.encode_verdict(verdict)


@settings(max_examples=300)
@given(value=st.binary(max_size=512))
def test_decode_verdict_on_arbitrary_bytes_returns_a_verdict_or_raises_codec_error(
    value: bytes,
) -> None:
    try:
        verdict = messaging.decode_verdict(value)
    except CodecError:
        return
    assert messaging.decode_verdict(messaging.encode_verdict(verdict)) == verdict


def test_dlq_headers_roundtrip() -> None:
    headers = messaging.dlq_headers("frame_id is missing", "decode", 3)

    assert [name for name, _ in headers] == ["error", "stage", "attempts"]
    assert all(isinstance(value, bytes) for _, value in headers)
    info = messaging.parse_dlq_headers(headers)
    assert info == messaging.DlqInfo(error="frame_id is missing", stage="decode", attempts=3)


def test_dlq_headers_cut_a_long_error_on_a_character_boundary() -> None:
    # One ASCII byte first, so the byte budget ends in the middle of a two-byte "é".
    headers = messaging.dlq_headers("x" + "é" * messaging.MAX_DLQ_ERROR_BYTES, "inspect", 1)

    error = messaging.parse_dlq_headers(headers).error
    assert error == "x" + "é" * (messaging.MAX_DLQ_ERROR_BYTES // 2 - 1)


def test_parse_dlq_headers_ignores_other_headers() -> None:
    headers = [("traceparent", b"00-abc"), *messaging.dlq_headers("boom", "store", 2)]

    assert messaging.parse_dlq_headers(headers).stage == "store"


def test_parse_dlq_headers_rejects_missing_headers() -> None:
    with pytest.raises(CodecError, match="attempts"):
        messaging.parse_dlq_headers([("error", b"boom"), ("stage", b"decode"), ("attempts", None)])


@pytest.mark.parametrize("attempts", [b"three", b"-1", b"\xff"])
def test_parse_dlq_headers_rejects_malformed_attempts(attempts: bytes) -> None:
    headers = [("error", b"boom"), ("stage", b"decode"), ("attempts", attempts)]

    with pytest.raises(CodecError, match=r"attempts|malformed"):
        messaging.parse_dlq_headers(headers)


def test_dlq_headers_reject_negative_attempts() -> None:
    with pytest.raises(CodecError, match=">= 0"):
        messaging.dlq_headers("boom", "decode", -1)

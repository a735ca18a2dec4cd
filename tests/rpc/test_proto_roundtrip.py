"""Round trips of every message in proto/foveal/v1: serialize, parse, compare.

Each message type has samples that, together, set every field (both oneof variants, maps,
repeated fields, timestamps), and a guard test fails when a new message or field appears in the
protos without a sample here. Stubs come from `make proto`. Run:
`.venv/bin/python -m pytest tests/rpc -q`.
"""

from __future__ import annotations

from concurrent import futures
from types import ModuleType

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from foveal.v1 import frame_pb2, inspection_pb2, reasoner_pb2, reasoner_pb2_grpc, verdict_pb2

PROTO_MODULES: tuple[ModuleType, ...] = (frame_pb2, verdict_pb2, inspection_pb2, reasoner_pb2)
FRAME_ID = "0b9f6a3e-5c1d-4e2f-9a7b-3c4d5e6f7a8b"


def _timestamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=123_456_789)


def _box() -> verdict_pb2.Box:
    return verdict_pb2.Box(x1=0.125, y1=0.25, x2=0.5, y2=0.75)


def _model() -> verdict_pb2.ModelRef:
    return verdict_pb2.ModelRef(name="foveal-reasoner", version="2026.05.1")


def _blob() -> frame_pb2.BlobRef:
    return frame_pb2.BlobRef(uri="s3://frames/a.png", sha256="ab" * 32, size_bytes=12_345_678)


def _inline_image() -> frame_pb2.Image:
    return frame_pb2.Image(mime_type="image/png", inline=b"\x89PNG\r\n", width=640, height=480)


def _blob_image() -> frame_pb2.Image:
    return frame_pb2.Image(mime_type="image/jpeg", blob=_blob(), width=8192, height=6144)


def _envelope() -> frame_pb2.FrameEnvelope:
    return frame_pb2.FrameEnvelope(
        frame_id=FRAME_ID,
        line="line-1",
        station="station-3",
        camera="cam-a",
        part_serial="SN-0001",
        product="bracket-7",
        captured_at=_timestamp(1_760_000_000),
        image=_blob_image(),
        sequence=[_inline_image(), _blob_image()],
        attributes={"exposure_us": "800", "lot": "L42"},
    )


def _options() -> inspection_pb2.InspectOptions:
    return inspection_pb2.InspectOptions(disable_operations=True, max_operations=3)


def _request() -> inspection_pb2.InspectRequest:
    return inspection_pb2.InspectRequest(
        frame_id=FRAME_ID,
        image=_inline_image(),
        sequence=[_blob_image()],
        product="bracket-7",
        defect_types=["none", "scratch", "crack"],
        options=_options(),
    )


def _evidence() -> inspection_pb2.EvidenceImage:
    return inspection_pb2.EvidenceImage(
        data=b"\xff\xd8crop",
        mime_type="image/jpeg",
        width=256,
        height=192,
        box=_box(),
        frame_index=-1,
    )


def _step() -> inspection_pb2.Step:
    return inspection_pb2.Step(
        index=1,
        operation="crop_image_normalized",
        arguments_json='{"bbox_2d": [0.1, 0.2, 0.4, 0.6], "target_image": 1}',
        text="The upper left edge looks scratched; zooming in.",
        images=[_evidence()],
        error="Execution error: crop side is 20 px, at most 28 px is rejected",
        duration_ms=412.5,
    )


def _timings() -> inspection_pb2.Timings:
    return inspection_pb2.Timings(total_ms=950.0, model_ms=800.25, operations_ms=12.5, queue_ms=3.0)


def _result() -> inspection_pb2.InspectResult:
    return inspection_pb2.InspectResult(
        frame_id=FRAME_ID,
        verdict=verdict_pb2.DECISION_DEFECT,
        defect_type="scratch",
        confidence=0.875,
        evidence_box=_box(),
        steps=[_step(), inspection_pb2.Step(index=2, operation="answer", text="\\boxed{scratch}")],
        model=_model(),
        timings=_timings(),
        operations=1,
    )


def _verdict() -> verdict_pb2.Verdict:
    return verdict_pb2.Verdict(
        frame_id=FRAME_ID,
        line="line-1",
        station="station-3",
        camera="cam-a",
        part_serial="SN-0001",
        product="bracket-7",
        captured_at=_timestamp(1_760_000_000),
        inspected_at=_timestamp(1_760_000_001),
        verdict=verdict_pb2.DECISION_UNCERTAIN,
        defect_type="pit",
        confidence=0.5,
        evidence_box=_box(),
        model=_model(),
        latency_ms=1234.5,
    )


SAMPLES: tuple[Message, ...] = (
    _blob(),
    _inline_image(),
    _blob_image(),
    _envelope(),
    _box(),
    _model(),
    _verdict(),
    _options(),
    _request(),
    _evidence(),
    _step(),
    _timings(),
    _result(),
)


def _declared_message_types() -> set[str]:
    return {
        message.full_name
        for module in PROTO_MODULES
        for message in module.DESCRIPTOR.message_types_by_name.values()
    }


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.DESCRIPTOR.name)
def test_message_survives_serialize_and_parse(message: Message) -> None:
    parsed = type(message).FromString(message.SerializeToString())

    assert parsed == message
    deterministic = message.SerializeToString(deterministic=True)
    assert parsed.SerializeToString(deterministic=True) == deterministic


def test_every_declared_message_type_has_a_sample() -> None:
    sampled = {message.DESCRIPTOR.full_name for message in SAMPLES}

    assert sampled == _declared_message_types()


def test_samples_set_every_field_of_their_type() -> None:
    set_fields: dict[str, set[str]] = {}
    for message in SAMPLES:
        names = {field.name for field, _ in message.ListFields()}
        set_fields.setdefault(message.DESCRIPTOR.full_name, set()).update(names)

    for message in SAMPLES:
        declared = {field.name for field in message.DESCRIPTOR.fields}
        assert set_fields[message.DESCRIPTOR.full_name] == declared, message.DESCRIPTOR.full_name


def test_image_oneof_holds_one_source_at_a_time() -> None:
    image = _inline_image()
    image.blob.CopyFrom(_blob())

    assert image.WhichOneof("source") == "blob"
    assert image.inline == b""


def test_decision_enum_has_the_contract_values() -> None:
    names = verdict_pb2.Decision.keys()

    assert names == ["DECISION_UNSPECIFIED", "DECISION_OK", "DECISION_DEFECT", "DECISION_UNCERTAIN"]
    assert verdict_pb2.DECISION_UNSPECIFIED == 0


def test_reasoner_service_declares_inspect() -> None:
    method = reasoner_pb2.DESCRIPTOR.services_by_name["Reasoner"].methods_by_name["Inspect"]

    assert method.input_type.full_name == "foveal.v1.InspectRequest"
    assert method.output_type.full_name == "foveal.v1.InspectResult"


class _EchoReasoner(reasoner_pb2_grpc.ReasonerServicer):
    """Answers every request with the sample result carrying the request's frame id."""

    def Inspect(
        self, request: inspection_pb2.InspectRequest, context: grpc.ServicerContext
    ) -> inspection_pb2.InspectResult:
        result = _result()
        result.frame_id = request.frame_id
        return result


def test_inspect_result_roundtrips_through_a_grpc_call() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    reasoner_pb2_grpc.add_ReasonerServicer_to_server(_EchoReasoner(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            result = reasoner_pb2_grpc.ReasonerStub(channel).Inspect(_request(), timeout=10)
    finally:
        server.stop(grace=None)

    assert result == _result()

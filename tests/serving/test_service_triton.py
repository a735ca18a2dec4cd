"""The reasoning service end to end on the real parts: gRPC in, the loop, `TritonEngine`, the
`foveal_vl` model on a real tritonserver (the protocol-taught micro model). Inspect returns a
verdict with steps and crops and the model Triton names; health follows the model's readiness
when it is unloaded and loaded again; a short deadline is DEADLINE_EXCEEDED and the service stays
healthy."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foveal.serving.service import ServerThread, ServiceConfig
from foveal.serving.triton_engine import TritonEngine
from foveal.stack import Stack
from foveal.v1 import inspection_pb2, reasoner_pb2_grpc, verdict_pb2
from tests.reasoning.protocol_model import frames_for
from tests.serving.helpers import inline, png, request

pytestmark = pytest.mark.slow


@pytest.fixture
def service(triton_engine: TritonEngine) -> Iterator[ServerThread]:
    config = ServiceConfig(port=0, metrics_port=None, health_poll_s=0.2)
    with ServerThread(triton_engine, config) as running:
        yield running


def _zoom_request() -> inspection_pb2.InspectRequest:
    return request(inline(png(frames_for("zoom", 1)[0])))


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service="foveal.v1.Reasoner"), timeout=5).status)


def _await_health(channel: grpc.Channel, status: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _health(channel) != status and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(channel) == status


def test_inspect_through_triton_zooms_and_returns_crops(service: ServerThread) -> None:
    with grpc.insecure_channel(service.address) as channel:
        result = reasoner_pb2_grpc.ReasonerStub(channel).Inspect(_zoom_request(), timeout=120)
    assert result.verdict in (verdict_pb2.DECISION_DEFECT, verdict_pb2.DECISION_UNCERTAIN)
    assert result.defect_type == "scratch" and result.operations == 1
    crop = result.steps[0]
    assert crop.operation == "crop_image_normalized" and crop.images
    assert crop.images[0].data.startswith(b"\x89PNG") and crop.images[0].width > 0
    assert result.evidence_box.x2 > result.evidence_box.x1
    assert (result.model.name, result.model.version) == ("foveal_vl", "1")
    assert result.timings.model_ms > 0


def test_health_follows_the_model_on_triton(service: ServerThread, triton: Stack) -> None:
    client = triton_grpc.InferenceServerClient(triton.settings.triton_address)
    with grpc.insecure_channel(service.address) as channel:
        _await_health(channel, health_pb2.HealthCheckResponse.SERVING)
        try:
            client.unload_model("foveal_vl")
            _await_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as caught:
                reasoner_pb2_grpc.ReasonerStub(channel).Inspect(_zoom_request(), timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            client.load_model("foveal_vl")
            client.close()
        _await_health(channel, health_pb2.HealthCheckResponse.SERVING)


def test_a_short_deadline_is_deadline_exceeded_and_the_service_stays_healthy(service: ServerThread) -> None:
    with grpc.insecure_channel(service.address) as channel:
        stub = reasoner_pb2_grpc.ReasonerStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Inspect(_zoom_request(), timeout=0.05)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert stub.Inspect(_zoom_request(), timeout=120).operations == 1

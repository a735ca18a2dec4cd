"""The Reasoner service end to end in-process: the real `grpc.aio` server on a free port, a
`LocalEngine` on a random micro model (answers are noise: these tests check plumbing, not
accuracy), the generated stub as the client. Every status code the contract names is produced
by the input or model-server state that should produce it.
Run: `.venv/bin/python -m pytest -q tests/serving`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from foveal.reasoning.engine import EngineError, EngineUnavailable, LocalEngine
from foveal.reasoning.loop import LoopOptions
from foveal.serving.logs import JsonFormatter
from foveal.serving.service import SERVICE_NAME, ReasonerServer, ServerThread, ServiceConfig
from foveal.v1 import frame_pb2, inspection_pb2, reasoner_pb2_grpc, verdict_pb2
from tests.conftest import embedded_settings
from tests.serving.helpers import FRAME_ID, ControlledEngine, frame, inline, png, png_header, request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Inspect = Callable[..., inspection_pb2.InspectResult]
BLOBS = Path(tempfile.mkdtemp(prefix="foveal-test-blobs-"))  # the service's blob store root
CONFIG = ServiceConfig(port=0, metrics_port=0, max_concurrency=4, health_poll_s=0.05, grace_s=1.0,
                       loop=LoopOptions(max_turn_tokens=8), blob_root=BLOBS)


@pytest.fixture(scope="module")
def engine(micro_tokenizer: object) -> ControlledEngine:
    from foveal.model.loader import create

    return ControlledEngine(LocalEngine(create(micro_tokenizer, "micro", seed=0)))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _reset(engine: ControlledEngine) -> Iterator[None]:
    engine.reset()
    yield
    if engine.gate is not None:
        engine.gate.set()
    engine.reset()


@pytest.fixture(scope="module")
def running(engine: ControlledEngine) -> Iterator[ServerThread]:
    with ServerThread(engine, CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def channel(running: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(running.address) as ch:
        yield ch


@pytest.fixture
def inspect(channel: grpc.Channel) -> Inspect:
    stub = reasoner_pb2_grpc.ReasonerStub(channel)
    return lambda req, timeout=30.0: stub.Inspect(req, timeout=timeout)


def status_of(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def health(channel: grpc.Channel, service: str = SERVICE_NAME) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def metrics(running: ServerThread) -> dict[str, float]:
    """The metrics endpoint's samples, by name with labels."""
    with urllib.request.urlopen(running.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def wait_health(channel: grpc.Channel, status: int, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while health(channel) != status and time.monotonic() < end:
        time.sleep(0.02)
    assert health(channel) == status


# -- a good inspection --------------------------------------------------------------------------

def test_inspect_returns_a_verdict_with_steps_and_the_model(inspect: Inspect,
                                                            engine: ControlledEngine) -> None:
    result = inspect(request(product="pcb", defect_types=["scratch", "pit"]))
    assert result.frame_id == FRAME_ID
    assert result.verdict != verdict_pb2.DECISION_UNSPECIFIED
    assert result.defect_type in ("none", "scratch", "pit")
    assert 0.0 <= result.confidence <= 1.0
    assert result.steps and result.steps[-1].operation == "answer"
    assert (result.model.name, result.model.version) == (engine.model.name, engine.model.version)
    t = result.timings
    assert t.total_ms >= t.model_ms > 0 and t.queue_ms >= 0


def test_a_zoom_step_carries_the_crop_from_the_original_frame(
        inspect: Inspect, engine: ControlledEngine) -> None:
    engine.zoom = True
    result = inspect(request())
    crop = result.steps[0]
    assert crop.operation == "crop_image_normalized" and not crop.error
    assert json.loads(crop.arguments_json)["bbox_2d"] == [0.2, 0.2, 0.6, 0.6]
    [image] = crop.images
    pixels = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    assert image.mime_type == "image/png" and pixels.shape[:2] == (image.height, image.width)
    assert image.frame_index == -1  # a single image
    box = (image.box.x1, image.box.y1, image.box.x2, image.box.y2)
    assert box == pytest.approx((0.1, 0.1, 0.7, 0.7), abs=0.01)  # 0.1 padding on each side
    assert result.HasField("evidence_box") and result.evidence_box.x1 == pytest.approx(0.1, abs=0.01)
    assert result.operations == 1 and result.timings.operations_ms > 0


def test_disable_operations_answers_without_zooming(inspect: Inspect,
                                                    engine: ControlledEngine) -> None:
    engine.zoom = True
    result = inspect(request(options=inspection_pb2.InspectOptions(disable_operations=True)))
    assert result.operations == 0 and not result.HasField("evidence_box")
    assert all(not step.images for step in result.steps)


def test_a_sequence_and_a_file_claim_check_are_inspected(inspect: Inspect) -> None:
    data = png(frame(1))
    path = BLOBS / "frame 1.png"
    path.write_bytes(data)
    blob = frame_pb2.Image(mime_type="image/png", blob=frame_pb2.BlobRef(
        uri=path.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)))
    result = inspect(request(sequence=[inline(png(frame(0))), blob, inline(png(frame(2)))]))
    assert result.frame_id == FRAME_ID and result.steps


# -- INVALID_ARGUMENT ---------------------------------------------------------------------------

def _bad_requests(tmp: Path) -> dict[str, tuple[inspection_pb2.InspectRequest, str]]:
    good = inline(png(frame()))
    missing = frame_pb2.Image(blob=frame_pb2.BlobRef(uri=(tmp / "nope.png").as_uri()))
    (tmp / "f.png").write_bytes(png(frame()))
    tampered = frame_pb2.Image(blob=frame_pb2.BlobRef(uri=(tmp / "f.png").as_uri(), sha256="0" * 64))
    outside = frame_pb2.Image(blob=frame_pb2.BlobRef(uri=Path(__file__).as_uri()))
    return {
        "empty": (request(inline(b"")), "empty"),
        "garbage": (request(inline(b"not an image at all" * 20)), "not an image"),
        "bomb": (request(inline(png_header(10000, 10000))), "100.0 megapixels"),
        "zero size": (request(inline(png_header(0, 480))), "zero size"),
        "tiny": (request(inline(png(frame(0, 20, 20)))), "must exceed 28 px"),
        "truncated": (request(inline(png_header(640, 480))), "cannot be decoded"),
        "no image": (inspection_pb2.InspectRequest(frame_id=FRAME_ID), "no image"),
        "17 frames": (request(sequence=[good] * 17), "more than 16"),
        "sizes differ": (request(sequence=[good, inline(png(frame(1, 200, 320)))]), "one size"),
        "unknown type": (request(product="pcb", defect_types=["scratch", "wobble"]), "wobble"),
        "s3 blob": (request(frame_pb2.Image(blob=frame_pb2.BlobRef(uri="s3://b/k.png"))), "not supported"),
        "missing file": (request(missing), "not found"),
        "sha256 mismatch": (request(tampered), "sha256"),
        "outside the store": (request(outside), "outside the blob store"),
    }


CASES = ["empty", "garbage", "bomb", "zero size", "tiny", "truncated", "no image", "17 frames",
         "sizes differ", "unknown type", "s3 blob", "missing file", "sha256 mismatch",
         "outside the store"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_invalid_argument(case: str, inspect: Inspect) -> None:
    req, words = _bad_requests(BLOBS)[case]
    error = status_of(lambda: inspect(req))
    assert error.code() == INVALID, error.details()
    assert words in error.details()


def test_a_product_the_catalog_lacks_is_inspected_or_refused_as_the_service_is_set(
        inspect: Inspect, engine: ControlledEngine) -> None:
    result = inspect(request(product="bracket-a12"))
    assert result.frame_id == FRAME_ID and result.verdict != verdict_pb2.DECISION_UNSPECIFIED
    strict = dataclasses.replace(CONFIG, refuse_unknown_products=True)
    with ServerThread(engine, strict) as server, grpc.insecure_channel(server.address) as channel:
        stub = reasoner_pb2_grpc.ReasonerStub(channel)
        error = status_of(lambda: stub.Inspect(request(product="bracket-a12"), timeout=30))
        assert error.code() == INVALID and "unknown product 'bracket-a12'" in error.details()
        assert stub.Inspect(request(product="pcb"), timeout=30).frame_id == FRAME_ID


# -- the model server's state -------------------------------------------------------------------

def test_health_follows_the_models_readiness_and_unready_is_unavailable(
        channel: grpc.Channel, inspect: Inspect,
        engine: ControlledEngine) -> None:
    assert health(channel) == health(channel, "") == health_pb2.HealthCheckResponse.SERVING
    engine.up = False
    wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert health(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    error = status_of(lambda: inspect(request()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in error.details()
    engine.up = True
    wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    assert inspect(request()).steps


def test_the_service_sends_frames_to_the_model_as_configured(tmp_path: Path) -> None:
    default = ServiceConfig.from_settings(embedded_settings(tmp_path / "a")).loop
    assert not default.ship_frame and default.ship_max_pixels == 5_000_000
    assert ServiceConfig().loop == default
    on = ServiceConfig.from_settings(embedded_settings(tmp_path / "b", reasoner_ship_frame=True,
                                                       reasoner_ship_frame_max_megapixels=1.5)).loop
    assert on.ship_frame and on.ship_max_pixels == 1_500_000


def test_probes_without_an_answer_turn_health_off_only_when_they_repeat(engine: ControlledEngine) -> None:
    """One readiness probe that times out while Triton copies a burst of large requests is load:
    the service keeps serving. `health_failures` in a row, it is an outage; an answer "not
    ready" counts at once."""

    # its own switches: the module's running server polls the shared engine every 50 ms
    engine = ControlledEngine(engine.inner)

    async def probes() -> list[bool]:
        # polled by hand: the background poller waits a minute between probes
        server = ReasonerServer(engine, ServiceConfig(port=0, metrics_port=None, health_poll_s=60.0,
                                                      health_failures=3, grace_s=0.0))
        await server.start()
        seen = [server.service.ready]
        try:
            engine.probe_error = EngineUnavailable("the readiness probe timed out (test)")
            for _ in range(3):
                await server._poll_readiness()
                seen.append(server.service.ready)
            engine.probe_error = None
            await server._poll_readiness()
            seen.append(server.service.ready)
            engine.probe_error = EngineUnavailable("the readiness probe timed out (test)")
            await server._poll_readiness()  # the count started again after the answer
            seen.append(server.service.ready)
            engine.probe_error, engine.up = None, False
            await server._poll_readiness()
            seen.append(server.service.ready)
        finally:
            await server.stop(0.0)
        return seen

    assert asyncio.run(probes()) == [True, True, True, False, True, True, False]


@pytest.mark.parametrize(("failure", "code", "words"), [
    (EngineUnavailable("triton unreachable"), grpc.StatusCode.UNAVAILABLE, "triton unreachable"),
    (EngineError("model crashed"), grpc.StatusCode.INTERNAL, "model crashed"),
    (RuntimeError("a bug"), grpc.StatusCode.INTERNAL, "RuntimeError"),
])
def test_engine_failures_map_to_their_codes(failure: Exception, code: grpc.StatusCode, words: str,
                                            inspect: Inspect,
                                            engine: ControlledEngine) -> None:
    engine.fail = failure
    error = status_of(lambda: inspect(request()))
    assert error.code() == code and words in error.details()


def test_a_short_deadline_is_deadline_exceeded_and_the_service_stays_healthy(
        channel: grpc.Channel, running: ServerThread, inspect: Inspect,
        engine: ControlledEngine) -> None:
    engine.delay_s = 0.4
    error = status_of(lambda: inspect(request(), timeout=0.15))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    engine.delay_s = 0.0
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert inspect(request()).steps
    assert metrics(running)['foveal_reasoner_errors_total{code="DEADLINE_EXCEEDED"}'] >= 1


def test_without_a_client_deadline_the_server_timeout_bounds_it(engine: ControlledEngine) -> None:
    engine.zoom, engine.delay_s = True, 0.3  # the scripted zoom makes sure a second turn is due
    config = ServiceConfig(port=0, metrics_port=None, timeout_s=0.2, loop=LoopOptions(max_turn_tokens=4))
    with ServerThread(engine, config) as server, grpc.insecure_channel(server.address) as ch:
        error = status_of(lambda: reasoner_pb2_grpc.ReasonerStub(ch).Inspect(request()))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" in error.details()


def test_shutdown_turns_health_to_not_serving(engine: ControlledEngine) -> None:
    server = ServerThread(engine, ServiceConfig(port=0, metrics_port=None, health_poll_s=0.05))
    with grpc.insecure_channel(server.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                     timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 2.0})
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopper.join(10)


def test_a_grpc_stop_that_never_finishes_is_left_after_the_margin(
        engine: ControlledEngine, caplog: pytest.LogCaptureFixture) -> None:
    server = ServerThread(engine, ServiceConfig(port=0, metrics_port=None, stop_margin_s=0.5))
    grpc_server = server.server._server
    assert grpc_server is not None
    real_stop = grpc_server.stop

    async def stuck(grace: float | None) -> None:
        """Stops, then hangs as a lost confirmation would, deaf to cancellation as well (a
        bound built on asyncio.wait_for waits for the cancellation and hangs with it)."""
        await real_stop(grace)
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    grpc_server.stop = stuck
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="foveal.serving.service"):
        server.stop(grace_s=0.2)
    assert time.monotonic() - started < 5.0
    assert any("had not stopped" in r.getMessage() for r in caplog.records)


def test_stop_ends_the_readiness_poller_even_when_a_probe_finishes_as_it_is_cancelled(
        engine: ControlledEngine) -> None:
    """A CI teardown hung 60 s: on Python 3.11 `asyncio.wait_for` swallowed the poller's cancel
    when the probe finished at that moment, and stop() waited on the poller for ever. Polling
    every half millisecond makes that moment likely; before the fix one of ~100 stops hung."""

    async def cycles() -> float:
        config = ServiceConfig(port=0, metrics_port=None, health_poll_s=0.0005, grace_s=0.0,
                               stop_margin_s=1.0)
        worst = 0.0
        for i in range(300):
            server = ReasonerServer(engine, config)
            await server.start()
            await asyncio.sleep(0.001 * (i % 5))
            started = time.monotonic()
            stopping = asyncio.ensure_future(server.stop(0.0))
            done, _ = await asyncio.wait({stopping}, timeout=5.0)
            assert done, f"stop() hung at cycle {i}"
            assert server._poller is not None and server._poller.done()
            worst = max(worst, time.monotonic() - started)
        return worst

    assert asyncio.run(cycles()) < 5.0


def test_more_concurrent_calls_than_allowed_is_resource_exhausted(engine: ControlledEngine) -> None:
    config = ServiceConfig(port=0, metrics_port=None, max_concurrency=1, max_message_mb=1,
                           health_poll_s=0.05, loop=LoopOptions(max_turn_tokens=4))
    engine.gate = threading.Event()
    with ServerThread(engine, config) as server, grpc.insecure_channel(server.address) as ch:
        stub = reasoner_pb2_grpc.ReasonerStub(ch)
        first = stub.Inspect.future(request(), timeout=30)
        assert engine.entered.wait(10)
        started = time.monotonic()
        error = status_of(lambda: stub.Inspect(request(), timeout=10))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in error.details()
        assert time.monotonic() - started < 2.0  # refused at once, not queued
        engine.gate.set()
        assert first.result().steps
        big = request(inline(b"\0" * (2 * 1024 * 1024)))  # over the 1 MiB message limit
        assert status_of(lambda: stub.Inspect(big, timeout=10)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- reflection, metrics, logs ------------------------------------------------------------------

def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [reply] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_metrics_count_requests_by_code(running: ServerThread,
                                        inspect: Inspect) -> None:
    inspect(request())
    status_of(lambda: inspect(request(inline(b""))))
    samples = metrics(running)
    assert samples['foveal_reasoner_requests_total{code="OK"}'] >= 1
    assert samples['foveal_reasoner_errors_total{code="INVALID_ARGUMENT"}'] >= 1
    assert samples["foveal_reasoner_request_latency_seconds_count"] >= 2
    assert samples["foveal_reasoner_operations_per_inspection_count"] >= 1
    zoomed = samples["foveal_reasoner_inspections_with_operation_total"]
    assert samples["foveal_reasoner_inspections_total"] >= zoomed
    assert 0.0 <= samples["foveal_reasoner_rapr"] <= 1.0
    assert samples["foveal_reasoner_in_flight"] == 0 and samples["foveal_reasoner_model_ready"] == 1


def test_each_call_logs_one_json_line_with_the_frame_id(
        inspect: Inspect, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="foveal.serving"):
        result = inspect(request())
    [record] = [r for r in caplog.records if getattr(r, "frame_id", None) == FRAME_ID]
    line = json.loads(JsonFormatter().format(record))
    assert line["frame_id"] == FRAME_ID and line["code"] == "OK" and line["latency_ms"] > 0
    assert line["verdict"] == verdict_pb2.Decision.Name(result.verdict).removeprefix("DECISION_").lower()

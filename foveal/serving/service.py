"""The Reasoner gRPC service: `Reasoner.Inspect` on a `grpc.aio` server, with the standard
`grpc.health.v1` (SERVING only while the engine reports its model ready) and server reflection,
and Prometheus metrics on an HTTP port. `foveal serve reasoner` runs it against Triton; tests
and benchmarks run it in-process on a `LocalEngine` (`ServerThread`).

Each call runs the synchronous reasoning loop in a worker thread (one per allowed concurrent
call), bounded by the client's deadline. Every failure leaves with a definite status code:
INVALID_ARGUMENT (bad images or fields), RESOURCE_EXHAUSTED (more concurrent calls than
configured; answered at once), UNAVAILABLE (model not ready or unreachable), DEADLINE_EXCEEDED,
INTERNAL (the model server failed, or a bug: logged with its traceback). Never UNKNOWN.
Tests: `pytest tests/serving`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from foveal.blobs import Reader
from foveal.errors import FovealError
from foveal.reasoning.engine import Engine, EngineError, EngineUnavailable
from foveal.reasoning.loop import DeadlineExceeded, Loop, LoopOptions
from foveal.rpc.convert import FrameGeometry, Timing, inspect_result
from foveal.serving.images import ImageLimits, InvalidInput, StoreUnavailable, read_frames
from foveal.serving.metrics import MetricsHttp, ServiceMetrics
from foveal.serving.request import Product, catalog_from, default_catalog, inspection_for, loop_options
from foveal.settings import Settings
from foveal.v1 import inspection_pb2, reasoner_pb2, reasoner_pb2_grpc, verdict_pb2

log = logging.getLogger(__name__)

SERVICE_NAME: str = reasoner_pb2.DESCRIPTOR.services_by_name["Reasoner"].full_name  # foveal.v1.Reasoner
HEALTH_NAMES = (health.OVERALL_HEALTH, SERVICE_NAME)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MiB = 1024 * 1024

# Errors the service expects, and the status each becomes; anything else is INTERNAL and logged.
ERROR_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (EngineUnavailable, grpc.StatusCode.UNAVAILABLE),
    (EngineError, grpc.StatusCode.INTERNAL),
)


class ServiceError(FovealError):
    """The reasoning service could not start (for example, its port is taken)."""


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 18051  # 0: any free port
    metrics_port: int | None = 18052  # None: no metrics endpoint; 0: any free port
    max_concurrency: int = 32
    max_message_mb: int = 32
    max_megapixels: float = 50.0
    health_poll_s: float = 1.0
    # probes in a row without an answer before health says NOT_SERVING (an answer "not ready"
    # flips it at once): one probe that times out while Triton copies 16 large requests is load,
    # not an outage, and refusing every call for a poll interval because of it lost 15 of 48
    # inspections in a concurrency-32 benchmark (session 19)
    health_failures: int = 3
    timeout_s: float | None = 60.0  # bounds an inspection whose client set no deadline
    blob_root: Path | None = None  # the directory claim checks (file://) are read from
    blob_url: str | None = None  # s3://bucket/prefix claim checks are read from (with s3_endpoint_url)
    s3_endpoint_url: str | None = None  # neither store: inline images only
    grace_s: float = 5.0  # how long calls in flight may finish at shutdown
    stop_margin_s: float = 10.0  # how much longer than the grace gRPC may take to stop before it is left
    loop: LoopOptions = LoopOptions(ship_frame=False, ship_max_pixels=5_000_000)  # as the settings' defaults
    catalog: Mapping[str, Product] = field(default_factory=default_catalog)
    refuse_unknown_products: bool = False  # else a code the catalog lacks gets the generic prompt

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ServiceConfig:
        values: dict[str, Any] = dict(
            host=settings.bind_host, port=settings.reasoner_port,
            metrics_port=settings.reasoner_metrics_port,
            max_concurrency=settings.reasoner_max_concurrency,
            max_message_mb=settings.reasoner_max_message_mb,
            max_megapixels=settings.reasoner_max_megapixels,
            health_poll_s=settings.reasoner_health_poll_s, health_failures=settings.reasoner_health_failures,
            timeout_s=settings.reasoner_timeout_s, blob_root=settings.blob_root,
            blob_url=settings.blob_url, s3_endpoint_url=settings.s3_endpoint_url,
            loop=service_loop_options(settings), catalog=catalog_from(settings),
            refuse_unknown_products=settings.unknown_products == "refuse",
        )
        values.update(overrides)
        return cls(**values)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MiB

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=int(self.max_megapixels * 1e6), max_bytes=self.max_message_bytes)


def service_loop_options(settings: Settings) -> LoopOptions:
    """The loop options the service runs with, as configured (requests narrow them further)."""
    return LoopOptions(ship_frame=settings.reasoner_ship_frame,
                       ship_max_pixels=int(settings.reasoner_ship_frame_max_megapixels * 1e6))


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str


class ReasonerService(reasoner_pb2_grpc.ReasonerServicer):
    """`Reasoner.Inspect`: admission (readiness, concurrency), then the loop in a worker thread."""

    def __init__(self, engine: Engine, config: ServiceConfig, metrics: ServiceMetrics) -> None:
        self.engine, self.config, self.metrics = engine, config, metrics
        self.blobs = Reader.of(config.blob_root, config.blob_url, config.s3_endpoint_url)
        self.ready = False  # the engine's last reported readiness (set by the server's poller)
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="inspect")
        self._busy = 0
        self._lock = threading.Lock()

    async def Inspect(self, request: inspection_pb2.InspectRequest,
                      context: grpc.aio.ServicerContext) -> inspection_pb2.InspectResult:
        received = time.perf_counter()
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self.config.timeout_s
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            outcome = await self._outcome(request, deadline, received)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            expired = deadline is not None and time.monotonic() >= deadline - 0.01
            self._report(request.frame_id, "DEADLINE_EXCEEDED" if expired else "CANCELLED", received)
            raise
        if isinstance(outcome, Failure):
            self._report(request.frame_id, outcome.code.name, received, error=outcome.message)
            await context.abort(outcome.code, outcome.message)
            raise AssertionError("context.abort returns only by raising")
        self._report(request.frame_id, "OK", received, result=outcome)
        return outcome

    async def _outcome(self, request: inspection_pb2.InspectRequest, deadline: float | None,
                       received: float) -> inspection_pb2.InspectResult | Failure:
        if not self.ready:
            return Failure(grpc.StatusCode.UNAVAILABLE, "the model is not ready; retry later")
        if not self._acquire():
            return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{self.config.max_concurrency} inspections are already running, the most this "
                           "server runs at once; retry later")
        try:
            work = self.executor.submit(self._inspect, request, deadline, received)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._release()
            return Failure(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        # The slot is held until the worker is done, even when the caller gave up earlier.
        work.add_done_callback(lambda _: self._release())
        try:
            result: inspection_pb2.InspectResult = await asyncio.wrap_future(work)
            return result
        except Exception as exc:  # noqa: BLE001 (the outermost handler: every error gets a status)
            return failure_of(exc, request.frame_id)

    def _inspect(self, request: inspection_pb2.InspectRequest, deadline: float | None,
                 received: float) -> inspection_pb2.InspectResult:
        """In a worker thread: decode and check, run the loop, convert the trace."""
        frames = read_frames(request.image if request.HasField("image") else None, request.sequence,
                             self.config.limits, self.blobs)
        inspection = inspection_for(request, frames, self.config.catalog, self.config.refuse_unknown_products)
        options = loop_options(request.options, self.config.loop)
        started = time.perf_counter()
        [trace] = Loop(self.engine, options).run([inspection], deadline=deadline)
        self.metrics.inspected(trace.operations, started - received)
        timing = Timing(total_ms=0.0, queue_ms=(started - received) * 1000)
        fallback = None if trace.model is not None else self.engine.model
        result = inspect_result(request.frame_id, trace, FrameGeometry.of(frames), timing, fallback)
        result.timings.total_ms = (time.perf_counter() - received) * 1000
        return result

    def _acquire(self) -> bool:
        with self._lock:
            if self._busy >= self.config.max_concurrency:
                return False
            self._busy += 1
        self.metrics.in_flight.inc()
        return True

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1
        self.metrics.in_flight.dec()

    def _report(self, frame_id: str, code: str, received: float, *, error: str = "",
                result: inspection_pb2.InspectResult | None = None) -> None:
        latency_s = time.perf_counter() - received
        self.metrics.finished(code, latency_s)
        extra: dict[str, object] = {"frame_id": frame_id[:128], "code": code,
                                    "latency_ms": round(latency_s * 1000, 1)}
        if result is not None:
            extra.update(verdict=verdict_pb2.Decision.Name(result.verdict).removeprefix("DECISION_").lower(),
                         defect_type=result.defect_type,
                         confidence=round(result.confidence, 4), operations=result.operations,
                         queue_ms=round(result.timings.queue_ms, 1))
        if error:
            extra["error"] = error
        level = logging.WARNING if code in ("INTERNAL", "UNAVAILABLE") else logging.INFO
        log.log(level, "inspect %s %s", frame_id[:128], code, extra=extra)


def failure_of(exc: Exception, frame_id: str) -> Failure:
    """The status an exception from the worker becomes; unexpected ones are logged in full."""
    for kind, code in ERROR_CODES:
        if isinstance(exc, kind):
            return Failure(code, str(exc) or kind.__name__)
    log.error("inspect %s failed unexpectedly", frame_id[:128], exc_info=exc,
              extra={"frame_id": frame_id[:128], "code": "INTERNAL"})
    return Failure(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")


class ReasonerServer:
    """The whole service on the running event loop: `await start()`, then `await stop()`."""

    def __init__(self, engine: Engine, config: ServiceConfig = ServiceConfig()) -> None:
        self.engine, self.config = engine, config
        self.metrics = ServiceMetrics()
        self.service = ReasonerService(engine, config, self.metrics)
        self.port = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics_http: MetricsHttp | None = None
        self._poller: asyncio.Task[None] | None = None
        self._probe_failures = 0  # readiness probes in a row that got no answer
        self._stopping = False

    async def start(self) -> None:
        cfg = self.config
        size = cfg.max_message_bytes
        server = grpc.aio.server(options=[("grpc.max_send_message_length", size),
                                          ("grpc.max_receive_message_length", size),
                                          ("grpc.so_reuseport", 0)])
        self._health = health.aio.HealthServicer()
        reasoner_pb2_grpc.add_ReasonerServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServiceError(f"cannot listen on {address}: {exc}") from exc
        if not self.port:
            raise ServiceError(f"cannot listen on {address} (is the port taken? set FOVEAL_REASONER_PORT)")
        await self._poll_readiness(initial=True)
        await server.start()
        self._server = server
        if cfg.metrics_port is not None:
            try:
                self._metrics_http = self.metrics.serve_http(cfg.host, cfg.metrics_port)
            except OSError as exc:
                await server.stop(None)
                raise ServiceError(f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: {exc} "
                                   "(set FOVEAL_REASONER_METRICS_PORT)") from exc
            self.metrics_port = self._metrics_http.port
        self._poller = asyncio.create_task(self._poll_forever())
        log.info("reasoner listening on %s:%d (metrics on %s)", cfg.host, self.port, self.metrics_port,
                 extra={"port": self.port, "metrics_port": self.metrics_port})

    async def stop(self, grace_s: float | None = None) -> None:
        """Health goes NOT_SERVING, new calls get UNAVAILABLE, calls in flight get `grace_s`."""
        self._stopping = True
        if self._poller is not None:
            # The flag ends the poller's loop even if a cancel is lost; the wait is bounded too.
            self._poller.cancel()
            await asyncio.wait({self._poller}, timeout=max(1.0, self.config.health_poll_s) + 2.0)
        self.service.ready = False
        self.metrics.model_ready.set(0)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._stop_grpc(self.config.grace_s if grace_s is None else grace_s)
        self.service.executor.shutdown(wait=False, cancel_futures=True)
        if self._metrics_http is not None:
            self._metrics_http.close()
        log.info("reasoner stopped")

    async def _stop_grpc(self, grace_s: float | None) -> None:
        """`grpc.aio.Server.stop`, bounded: it cancels the calls left after the grace, but its wait
        for the core to confirm has no end of its own, and a shutdown (SIGTERM, a test's teardown)
        must finish. Past the margin the server is left to the process's exit, with an error logged."""
        assert self._server is not None
        limit_s = (grace_s or 0.0) + self.config.stop_margin_s
        # Not asyncio.wait_for: on its timeout it cancels the stop and then waits for the
        # cancellation to finish, which is the wait with no end.
        stopping = asyncio.ensure_future(self._server.stop(grace_s))
        done, _ = await asyncio.wait({stopping}, timeout=limit_s)
        if not done:
            stopping.cancel()  # asked, never awaited
            log.error("the gRPC server had not stopped %.1f s after stop() (grace %s s); leaving it",
                      limit_s, grace_s)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _poll_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.health_poll_s)
            await self._poll_readiness()

    async def _poll_readiness(self, initial: bool = False) -> None:
        timeout_s = max(0.1, self.config.health_poll_s)
        try:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives as the probe
            # finishes, and the poller then outlived stop() (a CI teardown hung 60 s on it).
            async with asyncio.timeout(timeout_s + 1.0):
                ready = bool(await asyncio.to_thread(self.engine.ready, timeout_s))
        except Exception as exc:  # noqa: BLE001 (a probe that failed again and again means: not ready)
            self._probe_failures += 1
            log.warning("readiness probe failed (%d in a row): %s", self._probe_failures, exc)
            if self._probe_failures < self.config.health_failures and not initial:
                return
            ready = False
        else:
            self._probe_failures = 0
        if ready == self.service.ready and not initial:
            return
        self.service.ready = ready
        self.metrics.model_ready.set(1 if ready else 0)
        assert self._health is not None
        for name in HEALTH_NAMES:
            await self._health.set(name, SERVING if ready else NOT_SERVING)
        if not initial or not ready:
            log.warning("model %s", "ready: SERVING" if ready else "not ready: NOT_SERVING")


async def serve(engine: Engine, config: ServiceConfig) -> None:
    """Run the service until SIGINT or SIGTERM, then shut down gracefully."""
    server = ReasonerServer(engine, config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
        log.info("shutting down (grace %.1f s)", config.grace_s)
    finally:
        await server.stop()


class ServerThread:
    """A `ReasonerServer` on its own event loop in a daemon thread, for tests and benchmarks:
    `with ServerThread(engine, config) as running: grpc.insecure_channel(running.address)`."""

    def __init__(self, engine: Engine, config: ServiceConfig = ServiceConfig()) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reasoner-server", daemon=True)
        self._thread.start()
        self.server = ReasonerServer(engine, config)
        try:
            self._call(self.server.start())
        except BaseException:
            self._close_loop()
            raise

    @property
    def address(self) -> str:
        return f"{self.server.config.host}:{self.server.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.server.config.host}:{self.server.metrics_port}/metrics"

    def stop(self, grace_s: float | None = 1.0) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.server.stop(grace_s))
        finally:
            self._close_loop()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

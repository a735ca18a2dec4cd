"""Prometheus metrics of the reasoning service, in a registry of their own (so tests can run
several servers in one process), exposed over HTTP by `serve_http`.

The rate of pixel-space reasoning (RaPR, the share of inspections that used an operation) is
derivable as `foveal_reasoner_inspections_with_operation_total / foveal_reasoner_inspections_total`;
`foveal_reasoner_rapr` is the same ratio over the last `window` inspections.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
OPERATION_BUCKETS = (0, 1, 2, 3, 4, 8)


@dataclass
class MetricsHttp:
    """The running metrics endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class ServiceMetrics:
    def __init__(self, window: int = 100) -> None:
        self.registry = CollectorRegistry()
        r, p = self.registry, "foveal_reasoner"
        self.requests = Counter(f"{p}_requests", "Inspect calls by gRPC status code.", ["code"], registry=r)
        self.errors = Counter(f"{p}_errors", "Inspect calls that failed, by gRPC status code.", ["code"],
                              registry=r)
        self.latency = Histogram(f"{p}_request_latency_seconds", "Inspect latency as the server measured it.",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue = Histogram(f"{p}_queue_seconds", "Receipt to the start of the reasoning loop.",
                               buckets=LATENCY_BUCKETS_S, registry=r)
        self.operations = Histogram(f"{p}_operations_per_inspection", "Visual operations executed.",
                                    buckets=OPERATION_BUCKETS, registry=r)
        self.inspections = Counter(f"{p}_inspections", "Inspections that returned a result.", registry=r)
        self.with_operation = Counter(f"{p}_inspections_with_operation",
                                      "Inspections that executed at least one visual operation.", registry=r)
        self.rapr = Gauge(f"{p}_rapr", f"Share of the last {window} inspections that used an operation.",
                          registry=r)
        self.in_flight = Gauge(f"{p}_in_flight", "Inspections being worked on now.", registry=r)
        self.model_ready = Gauge(f"{p}_model_ready", "1 while the model server reports the model ready.",
                                 registry=r)
        self._recent: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def finished(self, code: str, latency_s: float) -> None:
        self.requests.labels(code).inc()
        self.latency.observe(latency_s)
        if code != "OK":
            self.errors.labels(code).inc()

    def inspected(self, operations: int, queue_s: float) -> None:
        self.inspections.inc()
        self.operations.observe(operations)
        self.queue.observe(queue_s)
        if operations:
            self.with_operation.inc()
        with self._lock:
            self._recent.append(operations > 0)
            self.rapr.set(sum(self._recent) / len(self._recent))

    def serve_http(self, host: str, port: int) -> MetricsHttp:
        """Expose `/metrics` on `host:port` (port 0: any free port) from a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsHttp(server, thread)

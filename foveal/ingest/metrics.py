"""Prometheus metrics of the ingest worker, in a registry of its own (tests run several workers in
one process), exposed over HTTP by `serve_http`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from foveal.serving.metrics import MetricsHttp

# Capture to verdict: a queue behind a slow model shows up here first, so the tail is long.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, p = self.registry, "foveal_ingest"
        self.consumed = Counter(f"{p}_consumed", "Records taken from the frames topic.", registry=r)
        self.inspected = Counter(f"{p}_inspected", "Frames inspected and written (new inspection rows).",
                                 registry=r)
        self.replayed = Counter(f"{p}_replayed", "Frames whose inspection was already stored "
                                "(a replay); their verdict is produced again.", registry=r)
        self.dlq = Counter(f"{p}_dlq", "Records sent to the DLQ, by the stage that refused them.", ["stage"],
                           registry=r)
        self.retries = Counter(f"{p}_retries", "Retries after a transient fault, by stage.", ["stage"],
                               registry=r)
        self.committed = Counter(f"{p}_committed_offsets", "Offset commits sent to the group coordinator.",
                                 registry=r)
        self.in_flight = Gauge(f"{p}_in_flight", "Frames being handled now.", registry=r)
        self.lag = Gauge(f"{p}_consumer_lag", "End offset minus the committed (durable) offset, per "
                         "assigned partition.", ["topic", "partition"], registry=r)
        self.latency = Histogram(f"{p}_end_to_end_latency_seconds", "Capture time to verdict produced.",
                                 buckets=LATENCY_BUCKETS_S, registry=r)

    def serve_http(self, host: str, port: int) -> MetricsHttp:
        """Expose `/metrics` on `host:port` (port 0: any free port) from a daemon thread."""
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsHttp(server, thread)

"""The ingest worker as a child process (`foveal serve ingest`): what `foveal demo` starts and the
reliability drills kill, restart and run side by side.

The child gets its configuration through `FOVEAL_*` variables built from the parent's Settings
(broker, database, reasoner, blob store, every `ingest_*` field), so it consumes exactly what the
parent configured, topics included. `stop()` asks for a graceful shutdown (SIGTERM: in-flight
frames finish, the durable watermark is committed); `kill()` is SIGKILL, a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from foveal.errors import StackError
from foveal.settings import Settings

STOP_MARGIN_S = 15.0  # beyond the shutdown grace: commit, close the clients


def worker_environment(settings: Settings) -> dict[str, str]:
    """`FOVEAL_*` variables that make a child `foveal serve ingest` use `settings`' endpoints."""
    values: dict[str, object] = {name: getattr(settings, name) for name in Settings.model_fields
                                 if name.startswith("ingest_")}
    values.update(home=settings.home_dir, bind_host=settings.bind_host,
                  kafka_bootstrap=settings.kafka_address, database_url=settings.postgres_url,
                  reasoner_url=settings.reasoner_address,
                  blob_dir=settings.blob_root, frame_inline_max_bytes=settings.frame_inline_max_bytes)
    return {f"FOVEAL_{name.upper()}": str(value) for name, value in values.items()}


class IngestProcess:
    """`foveal serve ingest` as a child process, logging to `log`, metrics on `metrics_port`."""

    def __init__(self, settings: Settings, log: Path, metrics_port: int | None = None, *,
                 json_logs: bool = True, env: Mapping[str, str] | None = None) -> None:
        self.metrics_port = settings.ingest_metrics_port if metrics_port is None else metrics_port
        self.metrics_url = f"http://{settings.bind_host}:{self.metrics_port}/metrics"
        self.grace_s = settings.ingest_shutdown_grace_s
        environment = dict(os.environ, **worker_environment(settings), **(env or {}))
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self.log = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foveal", "serve", "ingest", "--metrics-port", str(self.metrics_port),
             "--json-logs" if json_logs else "--text-logs"],
            env=environment, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Until its metrics endpoint answers (the consumer loop is about to subscribe)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError("ingest", f"exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=2):  # noqa: S310 (http://)
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise StackError("ingest", f"no metrics at {self.metrics_url} after {timeout_s:.0f} s; "
                                   f"see {self.log_path}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    def stop(self) -> int | None:
        """Graceful: SIGTERM, then SIGKILL if it outlives its shutdown grace. Its exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.grace_s + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def kill(self) -> None:
        """A crash: SIGKILL, nothing finishes, nothing is committed."""
        self.process.kill()
        self.process.wait()
        self.log.close()

"""The review dashboard as a child process (`foveal serve dashboard`), what `foveal demo` starts
beside the reasoner and the ingest worker. The child reads the parent's database, blob store and
home through `FOVEAL_*` variables; `stop()` is SIGTERM (open live streams are closed), then
SIGKILL if it lingers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from foveal.errors import StackError
from foveal.settings import Settings

STOP_S = 15.0


class DashboardProcess:
    def __init__(self, settings: Settings, log: Path) -> None:
        self.url = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        env = dict(os.environ, FOVEAL_HOME=str(settings.home_dir), FOVEAL_DATABASE_URL=settings.postgres_url,
                   FOVEAL_BLOB_DIR=str(settings.blob_root), FOVEAL_DASHBOARD_HOST=settings.dashboard_host,
                   FOVEAL_DASHBOARD_PORT=str(settings.dashboard_port))
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self.log = log.open("a")
        self.process = subprocess.Popen([sys.executable, "-m", "foveal", "serve", "dashboard"], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def wait_started(self, timeout_s: float = 60.0) -> None:
        """Until `/healthz` answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError("dashboard", f"exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):  # noqa: S310 (http://)
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise StackError("dashboard", f"no answer at {self.url} after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

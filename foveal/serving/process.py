"""The reasoning service as a child process (`foveal serve reasoner`): what `foveal demo` and
`foveal bench serve` start, waited for until its health says SERVING."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foveal.errors import StackError
from foveal.settings import Settings


class ReasonerProcess:
    """`foveal serve reasoner` as a child process on the given ports, logging to `log`."""

    def __init__(self, settings: Settings, port: int, metrics_port: int, log: Path,
                 max_concurrency: int = 64) -> None:
        env = dict(os.environ, FOVEAL_TRITON_URL=settings.triton_address,
                   FOVEAL_MODEL_DIR=str(settings.model_dir),
                   FOVEAL_REASONER_MAX_CONCURRENCY=str(max_concurrency))
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "foveal"), "serve", "reasoner", "--port", str(port),
             "--metrics-port", str(metrics_port)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.address = f"{settings.bind_host}:{port}"

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise StackError("reasoner", f"exited with {code}; see {self.log.name}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise StackError("reasoner", f"not SERVING after {timeout_s:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

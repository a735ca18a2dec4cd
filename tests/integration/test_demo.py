"""`foveal demo --detach` as `make demo` runs it: the whole embedded stack with the repository's
real model repository (the default checkpoint on tritonserver), the reasoning service started
against it, and sample frames inspected through gRPC; the reasoner is stopped again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_inspects_sample_frames_through_the_reasoning_service(tmp_path: Path) -> None:
    kafka, pg, http, grpc_port, metrics, reasoner, reasoner_metrics = free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOVEAL_")}
    env.update(FOVEAL_HOME=str(tmp_path / "home"), FOVEAL_KAFKA_PORT=str(kafka), FOVEAL_POSTGRES_PORT=str(pg),
               FOVEAL_TRITON_HTTP_PORT=str(http), FOVEAL_TRITON_GRPC_PORT=str(grpc_port),
               FOVEAL_TRITON_METRICS_PORT=str(metrics), FOVEAL_REASONER_PORT=str(reasoner),
               FOVEAL_REASONER_METRICS_PORT=str(reasoner_metrics), COLUMNS="200")
    foveal = [sys.executable, "-m", "foveal"]
    try:
        demo = subprocess.run([*foveal, "demo", "--detach"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=400, check=False)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "sample inspections through the reasoning service" in demo.stdout
        assert demo.stdout.count("foveal_vl/1") >= 4  # every sample answered by Triton's model
        assert f"127.0.0.1:{reasoner}" in demo.stdout
    finally:
        subprocess.run([*foveal, "stack", "down"], env=env, cwd=ROOT, capture_output=True, timeout=120,
                       check=False)

"""`foveal demo --detach --frames 20` as `make demo` runs it: the whole embedded stack with the
repository's real model repository (the default checkpoint on tritonserver), the reasoning
service started against it, sample frames inspected through gRPC, then the ingest worker started
and 20 camera frames streamed through Kafka → ingest → reasoner → PostgreSQL: all 20 end as rows
in the demo's database (counted here with SQL), none on the DLQ; the services are stopped again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_streams_camera_frames_through_ingest_into_postgres(tmp_path: Path) -> None:
    kafka, pg, http, grpc_port, metrics, reasoner, reasoner_metrics, ingest_metrics, dashboard = free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOVEAL_")}
    env.update(FOVEAL_HOME=str(tmp_path / "home"), FOVEAL_KAFKA_PORT=str(kafka), FOVEAL_POSTGRES_PORT=str(pg),
               FOVEAL_TRITON_HTTP_PORT=str(http), FOVEAL_TRITON_GRPC_PORT=str(grpc_port),
               FOVEAL_TRITON_METRICS_PORT=str(metrics), FOVEAL_REASONER_PORT=str(reasoner),
               FOVEAL_REASONER_METRICS_PORT=str(reasoner_metrics),
               FOVEAL_INGEST_METRICS_PORT=str(ingest_metrics), FOVEAL_DASHBOARD_PORT=str(dashboard),
               COLUMNS="200")
    foveal = [sys.executable, "-m", "foveal"]
    try:
        demo = subprocess.run([*foveal, "demo", "--detach", "--frames", "20", "--rate", "5"], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=560, check=False)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "sample inspections through the reasoning service" in demo.stdout
        assert demo.stdout.count("foveal_vl/1") >= 4  # every sample answered by Triton's model
        assert f"127.0.0.1:{reasoner}" in demo.stdout
        assert f"http://127.0.0.1:{dashboard}" in demo.stdout  # the review dashboard was up
        assert "20 / 20" in demo.stdout and f"127.0.0.1:{ingest_metrics}/metrics" in demo.stdout
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg}/foveal") as conn:
            inspections = conn.execute("SELECT count(*) FROM inspections").fetchone()
            frames = conn.execute("SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) "
                                  "FROM frames").fetchone()
        assert inspections == (20,), demo.stdout
        assert frames == (20, 20)
    finally:
        subprocess.run([*foveal, "stack", "down"], env=env, cwd=ROOT, capture_output=True, timeout=120,
                       check=False)

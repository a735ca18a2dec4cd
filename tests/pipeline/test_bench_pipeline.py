"""`foveal bench pipeline` at micro scale, as a user runs it: a child `foveal` process brings up an
embedded stack of its own (Kafka, PostgreSQL, Triton serving the repository's `models/` with the
default checkpoint), starts the reasoner and an ingest worker as processes, probes the drain rate
with 6 camera frames, sends 12 more at that rate, runs the in-process reference, and stops what it
started. Checked: the last printed line is the JSON the results file holds, with the figures the
issue names; the counts add up (every frame one row, none lost or duplicated, offsets committed
to the end); the lag plot is a PNG; nothing of the stack is left running.
Run: `.venv/bin/python -m pytest -q tests/pipeline/test_bench_pipeline.py` (≈ 1–2.5 min, machine load
decides).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foveal.settings import load_settings
from foveal.stack import Stack
from tests.conftest import free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("frames", "lost", "duplicates", "pipeline_fps", "inprocess_fps", "frames_per_s", "e2e_p50_ms",
          "e2e_p95_ms", "pipeline_ratio", "commit", "machine")


def test_bench_pipeline_measures_frames_through_the_real_parts(tmp_path: Path) -> None:
    kafka, pg, http, grpc_port, metrics = free_ports(5)
    ports = dict(kafka_port=kafka, postgres_port=pg, triton_http_port=http, triton_grpc_port=grpc_port,
                 triton_metrics_port=metrics)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOVEAL_")}
    env.update({f"FOVEAL_{name.upper()}": str(value) for name, value in ports.items()},
               FOVEAL_HOME=str(tmp_path / "home"), COLUMNS="200")
    out = tmp_path / "results" / "pipeline.json"
    command = [sys.executable, "-m", "foveal", "bench", "pipeline", "--frames", "12", "--probe", "6",
               "--in-flight", "2", "--size", "256", "--bank-frames", "6", "--sequence-share", "0",
               "--out", str(out)]
    stack = Stack(load_settings(home=tmp_path / "home", kafka_bootstrap="", database_url="", triton_url="",
                                **ports))
    try:
        run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400,
                             check=False)
    finally:
        left = [s.part for s in stack.status() if s.state != "stopped"]
        stack.down()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not left, f"the benchmark left {left} running"
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert set(FIELDS) <= set(last)
    assert "foveal bench pipeline" in run.stdout  # the table came before
    # counts: 6 probe + 12 run frames, each exactly one row, all committed
    assert (last["frames"], last["probe_frames"], last["inspected"]) == (12, 6, 12)
    assert (last["lost"], last["duplicates"], last["dlq"], last["foreign_rows"]) == (0, 0, 0, 0)
    assert last["frame_rows"] == 18 and last["committed_to_end"] is True
    # figures: positive, ordered, and the ratio is what it says
    assert 0 < last["e2e_p50_ms"] <= last["e2e_p95_ms"] <= last["e2e_max_ms"]
    assert last["frames_per_s"] == last["pipeline_fps"] > 0 and last["inprocess_fps"] > 0
    assert math.isclose(last["pipeline_ratio"], last["frames_per_s"] / last["inprocess_fps"], rel_tol=0.01)
    assert last["rate_fps"] > 0 and last["reference_batch"] >= 1 and last["lag_samples"] > 0
    assert last["frames_per_s"] <= last["rate_fps"] * 1.1  # paced: it cannot outrun the camera
    assert last["machine"]["cpu_count"] == os.cpu_count() and len(last["commit"]) >= 40
    plot = Path(last["plot"])
    assert plot == out.with_name("pipeline_lag.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

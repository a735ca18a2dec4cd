"""`foveal stack up | status | down` as a user runs them: separate processes, a home of their
own, real parts. Covers: up/status/down twice with nothing left behind, a crashed part reported
with its log and restarted by `up`, unreachable external endpoints and taken ports as clear
errors naming the part."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from foveal.stack import process
from tests.conftest import TEST_MODEL_REPOSITORY, free_ports

pytestmark = pytest.mark.slow

FOVEAL = [sys.executable, "-m", "foveal"]


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    kafka, pg, http, grpc, metrics = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOVEAL_")}
    env.update(FOVEAL_HOME=str(tmp_path / "home"), FOVEAL_KAFKA_PORT=str(kafka),
               FOVEAL_POSTGRES_PORT=str(pg), FOVEAL_TRITON_HTTP_PORT=str(http),
               FOVEAL_TRITON_GRPC_PORT=str(grpc), FOVEAL_TRITON_METRICS_PORT=str(metrics),
               FOVEAL_MODEL_REPOSITORY=str(TEST_MODEL_REPOSITORY), COLUMNS="200")
    yield env
    run("stack", "down", env=env)  # never leave a stack behind, whatever the test did


def run(*args: str, env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FOVEAL, *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def live_under(home: str) -> list[psutil.Process]:
    return process.processes_under(Path(home).resolve())


def test_up_status_down_twice_leaves_no_process(cli_env: dict[str, str]) -> None:
    for _ in range(2):
        up = run("stack", "up", env=cli_env)
        assert up.returncode == 0, up.stdout + up.stderr
        again = run("stack", "up", env=cli_env)  # up twice is harmless
        assert again.returncode == 0, again.stdout + again.stderr
        status = run("stack", "status", env=cli_env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("healthy") == 3
        for part in ("kafka", "postgres", "triton"):
            assert part in status.stdout
        assert live_under(cli_env["FOVEAL_HOME"]), "the parts run under the stack's home"
        down = run("stack", "down", env=cli_env)
        assert down.returncode == 0, down.stderr
        assert live_under(cli_env["FOVEAL_HOME"]) == []
        stopped = run("stack", "status", env=cli_env)
        assert stopped.returncode == 3 and stopped.stdout.count("stopped") == 3


def test_crashed_part_is_reported_with_its_log_and_restarted_by_up(cli_env: dict[str, str]) -> None:
    assert run("stack", "up", env=cli_env).returncode == 0
    record = process.ProcessStore(Path(cli_env["FOVEAL_HOME"]).resolve()).read("kafka")
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(record.pid)], timeout=10)

    status = run("stack", "status", env=cli_env)
    assert status.returncode == 3
    assert "crashed" in status.stdout
    assert "kafka log tail" in status.stdout and "tansu broker" in status.stdout

    up = run("stack", "up", env=cli_env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert run("stack", "status", env=cli_env).stdout.count("healthy") == 3


def test_unreachable_external_endpoints_are_named_not_a_traceback(cli_env: dict[str, str]) -> None:
    dead = free_ports(1)[0]  # nothing listens there
    env = dict(cli_env, FOVEAL_KAFKA_BOOTSTRAP=f"127.0.0.1:{dead}",
               FOVEAL_DATABASE_URL=f"postgresql://u@127.0.0.1:{dead}/db",
               FOVEAL_TRITON_URL=f"127.0.0.1:{dead}", FOVEAL_CONNECT_TIMEOUT_S="1")
    up = run("stack", "up", env=env, timeout_s=60)
    assert up.returncode == 2
    assert "Traceback" not in up.stderr
    for part, variable in (("kafka", "FOVEAL_KAFKA_BOOTSTRAP"), ("postgres", "FOVEAL_DATABASE_URL"),
                           ("triton", "FOVEAL_TRITON_URL")):
        assert f"{part}: external {part}" in up.stderr and variable in up.stderr, up.stderr
    assert live_under(cli_env["FOVEAL_HOME"]) == [], "external parts are never started"


def test_taken_port_is_a_clear_error_naming_the_part(cli_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cli_env["FOVEAL_KAFKA_PORT"])))
        squatter.listen()
        up = run("stack", "up", env=cli_env)
    assert up.returncode == 2
    assert "Traceback" not in up.stderr
    assert f"kafka: port {cli_env['FOVEAL_KAFKA_PORT']}" in up.stderr, up.stderr


def test_invalid_setting_names_the_variable(cli_env: dict[str, str]) -> None:
    result = run("stack", "status", env=dict(cli_env, FOVEAL_KAFKA_PORT="not-a-port"))
    assert result.returncode == 2
    assert "FOVEAL_KAFKA_PORT" in result.stderr and "Traceback" not in result.stderr

"""Process records: a part outlives the command that started it, a reused pid is never taken
for the part, stop takes the whole process tree down, and a torn record is not trusted."""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path

import psutil

from foveal.stack import process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# A parent that ignores SIGTERM and has a child: stop() must still leave nothing behind.
STUBBORN = [sys.executable, "-c",
            "import signal, subprocess, sys, time;"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)"]


def test_spawned_process_is_recorded_and_found_again(tmp_path: Path) -> None:
    store = process.ProcessStore(tmp_path)
    record = process.spawn("sleeper", SLEEPER, store, cwd=tmp_path / "sleeper")
    try:
        assert store.read("sleeper") == record
        assert process.process_of(record) is not None
        assert process.processes_under(tmp_path), "its working directory is under the home"
    finally:
        process.stop(record, signal.SIGTERM, timeout_s=5)
    assert process.process_of(record) is None


def test_reused_pid_is_not_mistaken_for_the_part(tmp_path: Path) -> None:
    store = process.ProcessStore(tmp_path)
    record = process.spawn("sleeper", SLEEPER, store, cwd=tmp_path)
    try:
        impostor = dataclasses.replace(record, create_time=record.create_time - 3600)
        assert process.process_of(impostor) is None
    finally:
        process.stop(record, signal.SIGTERM, timeout_s=5)


def test_stop_kills_a_process_that_ignores_its_signal_and_its_children(tmp_path: Path) -> None:
    store = process.ProcessStore(tmp_path)
    record = process.spawn("stubborn", STUBBORN, store, cwd=tmp_path / "stubborn")
    parent = psutil.Process(record.pid)
    deadline = time.monotonic() + 10
    while not parent.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = parent.children()[0]
    process.stop(record, signal.SIGTERM, timeout_s=1)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert process.process_of(record) is None
    assert process.processes_under(tmp_path) == []


def test_torn_record_is_discarded(tmp_path: Path) -> None:
    store = process.ProcessStore(tmp_path)
    store.run_dir.mkdir(parents=True)
    (store.run_dir / "kafka.json").write_text('{"part": "kafka", "pid"')
    assert store.read("kafka") is None
    assert not (store.run_dir / "kafka.json").exists()


def test_log_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert process.log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert process.log_tail(tmp_path / "missing.log") == "(no log)"

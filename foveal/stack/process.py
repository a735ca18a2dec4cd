"""Processes of the embedded stack: start detached, remember, check, stop, leave nothing behind.

A part's process outlives the `foveal stack up` command that started it, so what is known about
it (pid, start time, command, log) is kept in `<home>/run/<part>.json`. A pid alone is not
trusted: the recorded start time must match, or the pid has been reused by something else.
Every process is started in its own session with its working directory under `<home>`, which
is how `down` finds stragglers whose record was lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ProcessRecord:
    """What `up` wrote down about a started part."""

    part: str
    pid: int
    create_time: float
    cmd: list[str]
    log_path: str
    started_at: float


class ProcessStore:
    """The records of running parts, one JSON file per part under `<home>/run/`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_dir = home / "run"
        self.log_dir = home / "logs"

    def log_path(self, part: str) -> Path:
        return self.log_dir / f"{part}.log"

    def read(self, part: str) -> ProcessRecord | None:
        path = self.run_dir / f"{part}.json"
        try:
            return ProcessRecord(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)  # a torn write from a killed `up`: nothing to trust
            return None

    def write(self, record: ProcessRecord) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{record.part}.json.tmp"
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(self.run_dir / f"{record.part}.json")

    def remove(self, part: str) -> None:
        (self.run_dir / f"{part}.json").unlink(missing_ok=True)


def spawn(
    part: str,
    cmd: Sequence[str],
    store: ProcessStore,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> ProcessRecord:
    """Start `cmd` detached (own session), output appended to the part's log, and record it."""
    store.log_dir.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = store.log_path(part)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
    record = ProcessRecord(
        part=part,
        pid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(),
        cmd=list(cmd),
        log_path=str(log_path),
        started_at=time.time(),
    )
    store.write(record)
    return record


def process_of(record: ProcessRecord) -> psutil.Process | None:
    """The live process behind a record, or None when it exited (or its pid was reused)."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(proc)
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def exit_code(record: ProcessRecord) -> int | None:
    """The exit status of a part started by this very process, when it can still be read."""
    try:
        pid, status = os.waitpid(record.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if pid else None


def stop(record: ProcessRecord, stop_signal: signal.Signals, timeout_s: float) -> None:
    """Ask the process (and its whole tree) to stop with `stop_signal`, then kill what remains."""
    proc = process_of(record)
    if proc is None:
        return
    tree = [proc, *_children(proc)]
    _signal_all([proc], stop_signal)
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    kill_all(alive)


def kill_all(procs: Sequence[psutil.Process]) -> None:
    """SIGKILL each process and its descendants, and wait until they are gone."""
    tree: list[psutil.Process] = []
    for proc in procs:
        tree.append(proc)
        tree.extend(_children(proc))
    _signal_all(tree, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=5)


def processes_under(home: Path) -> list[psutil.Process]:
    """Live processes whose working directory or command line lies under `home`."""
    home_str = str(home)
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cwd = proc.info["cwd"] or ""
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cwd == home_str or cwd.startswith(home_str + os.sep) or home_str + os.sep in cmdline:
            found.append(proc)
    return found


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _signal_all(procs: Sequence[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _reap(proc: psutil.Process) -> None:
    try:
        os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: init reaps it

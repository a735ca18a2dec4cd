"""CPU seconds by part of the pipeline over a span of time: where a frame's cost goes.

On the two cores of a laptop-class host every part (broker, PostgreSQL, tritonserver and its
python model, the reasoner, the ingest worker, the camera) competes for the same CPUs, so a
benchmark that only reports frames/s cannot say which part to make cheaper. `CpuMeter` takes a
snapshot of every process's user + system time (psutil) before and after, and sums the difference
per part, recognised by process name and command line. `foveal bench pipeline` reports it.
Tests: `pytest tests/pipeline/test_cpu.py`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

# (part, test on (name, command line)); the first that matches names the process
PARTS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("triton model", lambda name, cmd: "triton_python_backend_stub" in name + cmd),
    ("tritonserver", lambda name, cmd: name == "tritonserver" or "bin/tritonserver" in cmd),
    ("broker", lambda name, cmd: name == "tansu" or "tansu broker" in cmd),
    ("postgres", lambda name, cmd: name in ("postgres", "postmaster")),
    ("reasoner", lambda name, cmd: "serve reasoner" in cmd),
    ("ingest", lambda name, cmd: "serve ingest" in cmd),
)
BENCH = "bench (camera, samplers)"  # the process that measures: it also runs the camera


def part_of(name: str, cmdline: str, pid: int, own_pid: int) -> str | None:
    """The part a process belongs to, or None for processes outside the pipeline.

    >>> part_of("python3.11", "/x/.venv/bin/python -m foveal serve reasoner --port 1", 7, 1)
    'reasoner'
    >>> part_of("triton_python_backend_stub", "", 8, 1), part_of("bash", "bash", 9, 1)
    ('triton model', None)
    """
    if pid == own_pid:
        return BENCH
    for part, matches in PARTS:
        if matches(name, cmdline):
            return part
    return None


def _cpu_seconds(own_pid: int) -> dict[int, tuple[str, float]]:
    snapshot: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            info = proc.info
            part = part_of(info["name"] or "", " ".join(info["cmdline"] or ()), proc.pid, own_pid)
            times = info["cpu_times"]
        except (psutil.Error, TypeError):
            continue
        if part is not None and times is not None:
            snapshot[proc.pid] = (part, times.user + times.system)
    return snapshot


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds per part over `wall_s` seconds of wall time on `cores` cores."""

    seconds: dict[str, float]
    wall_s: float
    cores: int

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {part: round(s * 1000 / max(frames, 1), 1) for part, s in self.seconds.items()}

    @property
    def busy_share(self) -> float:
        """The pipeline's CPU seconds over all the cores' seconds (1.0: every core busy)."""
        return sum(self.seconds.values()) / max(self.wall_s * self.cores, 1e-9)


class CpuMeter:
    """`start()`, the work, then `stop()` → `CpuSplit`. Processes that start in between count
    from zero; processes that end in between are not counted (their time is lost to psutil)."""

    def __init__(self) -> None:
        self._own = os.getpid()
        self._before: dict[int, tuple[str, float]] = {}
        self._started = 0.0

    def start(self) -> CpuMeter:
        self._before, self._started = _cpu_seconds(self._own), time.monotonic()
        return self

    def stop(self) -> CpuSplit:
        after, wall_s = _cpu_seconds(self._own), time.monotonic() - self._started
        return CpuSplit(_by_part(after.items(), self._before), wall_s, psutil.cpu_count() or 1)


def _by_part(after: Iterable[tuple[int, tuple[str, float]]],
             before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """Seconds per part: each process's time now less its time at the start (0 when it is new).

    >>> _by_part([(1, ("ingest", 5.0)), (2, ("ingest", 1.5)), (3, ("broker", 2.0))], {1: ("ingest", 4.0)})
    {'ingest': 2.5, 'broker': 2.0}
    """
    seconds: dict[str, float] = {}
    for pid, (part, now) in after:
        start = before[pid][1] if pid in before and before[pid][0] == part else 0.0
        seconds[part] = round(seconds.get(part, 0.0) + max(0.0, now - start), 3)
    return seconds

"""The CPU meter of `foveal bench pipeline`: a process's work lands on its part, and only there."""

from __future__ import annotations

import doctest
import subprocess
import sys
import time

from foveal.ingest import cpu
from foveal.ingest.cpu import BENCH, CpuMeter

# a child whose command line reads like an ingest worker's, spinning for a fixed CPU time
SPIN = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 5.0: pass\n"


def test_doctests_pass() -> None:
    assert doctest.testmod(cpu).failed == 0


def test_a_workers_cpu_time_is_counted_on_ingest_and_the_meters_own_on_the_bench() -> None:
    meter = CpuMeter().start()
    child = subprocess.Popen([sys.executable, "-c", SPIN, "serve ingest"])
    spin_until = time.process_time() + 0.3
    while time.process_time() < spin_until:  # the meter's own process works too
        pass
    time.sleep(0.2)
    split = meter.stop()  # the child still spins: an ended process's time is not seen
    child.kill()
    child.wait(timeout=30)
    assert split.seconds.get("ingest", 0.0) >= 0.15, split.seconds
    assert split.seconds[BENCH] >= 0.25, split.seconds
    assert "reasoner" not in split.seconds
    assert split.per_frame_ms(10)[BENCH] == round(split.seconds[BENCH] * 100, 1)
    assert 0.0 < split.busy_share <= 1.5

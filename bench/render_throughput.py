"""Throughput of the plant-data renderer: frames per second at 1024 and 2048 px, 1 and 2 workers.

Each run is `foveal.plant.generate.generate` into a temporary folder (70 % defective frames,
calibrated, encoded as PNG and written, worker start-up included), so the figure is what
`foveal data generate` delivers. Prints a table and, as its last line, one JSON object with the
figures, the git commit and the machine.

Run: `.venv/bin/python bench/render_throughput.py [--frames-1024 20] [--frames-2048 10]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from foveal.plant.generate import generate


def git_commit() -> str:
    """HEAD's hash, with `-dirty` when the work tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_record(record: dict[str, object], out: Path) -> str:
    """`record` with the git commit and the machine, as one JSON line written to `out`; the line."""
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    line = json.dumps(dict(record, commit=git_commit(), machine=machine))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-1024", type=int, default=20, help="frames per run at 1024 px")
    parser.add_argument("--frames-2048", type=int, default=10, help="frames per run at 2048 px")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = []
    print(f"{'long side':>9}  {'workers':>7}  {'frames':>6}  {'seconds':>8}  {'frames/s':>8}")
    for size, frames in ((1024, args.frames_1024), (2048, args.frames_2048)):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                report = generate(
                    Path(tmp) / "data", frames, args.seed, workers=workers, size=size, progress=False
                )
            row = dict(
                size_px=size,
                workers=workers,
                frames=report.frames,
                seconds=round(report.seconds, 2),
                frames_per_s=round(report.frames_per_s, 3),
            )
            results.append(row)
            rate = report.frames_per_s
            print(f"{size:>9}  {workers:>7}  {report.frames:>6}  {report.seconds:>8.2f}  {rate:>8.2f}")
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    print(
        json.dumps(dict(benchmark="render_throughput", results=results, commit=git_commit(), machine=machine))
    )


if __name__ == "__main__":
    main()

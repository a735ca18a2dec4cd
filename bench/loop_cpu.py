"""CPU per inspection of the reasoning loop at each torch thread count and batch size: what a
second thread buys, and what it costs the other parts of a host that share its cores.

The loop runs in process on the first N items of a dataset folder (FovealBench split or the
camera's rendered bank), frames decoded in advance, greedy, at every (threads, batch) pair; each
pair reports frames/s and CPU milliseconds per frame (this process's user + system time). This
is the measurement behind `threads: 1` and two instances in `models/foveal_vl/config.pbtxt`
(docs/benchmarks.md, the pipeline section). Prints a table and, as its last line, one JSON object
with the figures, the commit and the machine, also written to `--out`.

Run: `.venv/bin/python bench/loop_cpu.py --bench DIR [--model DIR] [--n 60] [--threads 1,2] [--batch 1,2,8]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.evaluation.bench import inspection_of
from foveal.model import loader
from foveal.plant.dataset import read_labels
from foveal.reasoning.engine import LocalEngine
from foveal.reasoning.loop import Inspection, Loop, LoopOptions


def measure(loop: Loop, items: list[Inspection], batch: int) -> tuple[float, float]:
    """(frames/s, CPU ms per frame) of the loop over `items` in batches of `batch`."""
    loop.run(items[:batch])  # warm-up at this batch size
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(items), batch):
        loop.run(items[start:start + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(items) / wall, cpu * 1000 / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a dataset folder (labels.jsonl)")
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="1,2,8")
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop_cpu.json"))
    args = parser.parse_args()

    labels = list(read_labels(args.bench))[: args.n]
    items = [inspection_of(label, args.bench, named_prompt=True) for label in labels]
    loop = Loop(LocalEngine(loader.load(args.model)), LoopOptions())
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for batch in (int(b) for b in args.batch.split(",")):
            fps, cpu_ms = measure(loop, items, batch)
            rows.append({"threads": threads, "batch": batch, "frames_per_s": round(fps, 3),
                         "cpu_ms_per_frame": round(cpu_ms, 1), "cores_busy": round(fps * cpu_ms / 1000, 2)})
            print(f"threads {threads}  batch {batch}  {fps:6.2f} frames/s  {cpu_ms:6.1f} ms CPU per frame  "
                  f"{rows[-1]['cores_busy']:.2f} cores busy", flush=True)
    summary = {"bench": str(args.bench), "items": len(items), "rows": rows, "commit": git_commit(),
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

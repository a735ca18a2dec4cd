"""Speed of one inspection with the reasoning loop: latency at batch 1, batched throughput, and
the KV-cache-reusing loop against re-encoding the conversation every turn.

Frames come from a FovealBench folder (the first N items: single images and sequences as they
come); each inspection is the full loop (whole view, operations on the full-resolution frame,
answer) with greedy decoding, frames already decoded in memory. Prints a table and, as its last
line, one JSON object with the figures, the git commit and the machine, also written to
`--out` (default `bench/results/model_speed_<kind>.json`).

Run: `.venv/bin/python bench/model_speed.py --bench /path/to/fovealbench/test [--model DIR] [--n 60]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.evaluation.bench import inspection_of
from foveal.model import loader
from foveal.plant.dataset import read_labels
from foveal.reasoning.engine import DRAFT_TOKENS
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace


def timed(loop: Loop, items: list[Inspection], batch: int) -> tuple[float, list[Trace]]:
    started = time.perf_counter()
    traces: list[Trace] = []
    for i in range(0, len(items), batch):
        traces += loop.run(items[i:i + batch])
    return time.perf_counter() - started, traces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--kind", choices=("all", "image", "sequence"), default="all",
                        help="only single images or only sequences (multi-turn for today's model)")
    parser.add_argument("--rerank", type=int, default=None,
                        help="candidate looks seen at full resolution (default: the checkpoint's choice)")
    parser.add_argument("--look-first", action=argparse.BooleanOptionalAction, default=None,
                        help="every verdict comes after a look up close (default: the checkpoint's choice)")
    parser.add_argument("--draft-tokens", type=int, default=DRAFT_TOKENS,
                        help="tokens drafted per greedy step and checked in one decoder pass (0: none)")
    parser.add_argument("--tower-precision", choices=loader.TOWER_PRECISIONS, default="auto",
                        help="what the pointer's reranked probes run in (loader.set_tower_precision)")
    args = parser.parse_args()
    vlm = loader.load(args.model, tower_precision=args.tower_precision)
    probe_dtype = vlm.model.model.visual.probe_dtype
    labels = [label for label in read_labels(args.bench)
              if args.kind == "all" or (label.is_sequence == (args.kind == "sequence"))][: args.n]
    items = [inspection_of(label, args.bench, True) for label in labels]
    chosen = dict(rerank=args.rerank, look_first=args.look_first, draft_tokens=args.draft_tokens)
    Loop(vlm, LoopOptions(**chosen)).run(items[:2])  # warm-up
    rows = []
    latencies: list[float] = []
    results: dict[str, object] = {}
    kept = LoopOptions(**chosen)
    resent = LoopOptions(reuse_cache=False, **chosen)
    for name, options, batch in (("kv-reuse, batch 1", kept, 1), ("re-encode, batch 1", resent, 1),
                                 (f"kv-reuse, batch {args.batch}", kept, args.batch)):
        seconds, traces = timed(Loop(vlm, options), items, batch)
        lat = [t.latency_ms for t in traces]
        if name == "kv-reuse, batch 1":
            latencies = lat
        ops = statistics.mean(t.operations for t in traces)
        p50, p95 = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
        rows.append((name, len(items) / seconds, p50, p95, ops))
    print(f"{'mode':<22} {'insp/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'ops/insp':>8}")
    for name, rate, p50, p95, ops in rows:
        print(f"{name:<22} {rate:>8.2f} {p50:>8.1f} {p95:>8.1f} {ops:>8.2f}")
    results = {
        "n": len(items), "kind": args.kind, "threads": torch.get_num_threads(),
        "rerank": "checkpoint's choice" if args.rerank is None else args.rerank,
        "look_first": "checkpoint's choice" if args.look_first is None else args.look_first,
        "draft_tokens": args.draft_tokens,
        "tower_precision": args.tower_precision, "probe_dtype": str(probe_dtype or "float32"),
        "p50_ms_batch1": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms_batch1": round(float(np.percentile(latencies, 95)), 1),
        "throughput_batch1": round(rows[0][1], 3), "throughput_reencode_batch1": round(rows[1][1], 3),
        f"throughput_batch{args.batch}": round(rows[2][1], 3),
        "kv_reuse_speedup": round(rows[0][1] / rows[1][1], 3),
        "ops_per_inspection": round(rows[0][4], 3),
    }
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    line = json.dumps(dict(benchmark="model_speed", model=str(args.model), results=results,
                           commit=git_commit(), machine=machine))
    out = Path(args.out or Path(__file__).parent / "results" / f"model_speed_{args.kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

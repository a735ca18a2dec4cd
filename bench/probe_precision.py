"""The pointer's reranked probes in bfloat16 against float32, paired item by item in one process.

The host's speed drifts by 20 % and more within minutes, so this loads the model once and runs
every inspection twice in a row, once with the probes in float32 and once in the dtype
`--tower-precision` gives them (`loader.set_tower_precision`; "auto": bfloat16 where the CPU runs
it natively), alternating which goes first. Prints the medians, the paired difference and how
many answers (verdict, type, box) are the same both ways; the last line is one JSON object, also
written to `--out` (default `bench/results/probe_precision_<kind>.json`). What the answers'
differences do to quality is `foveal eval` + `bench/compare_evals.py` on the whole split.

Run: `.venv/bin/python bench/probe_precision.py --bench /path/to/fovealbench/test --kind sequence --n 40`
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from render_throughput import write_record  # type: ignore[import-not-found]

from foveal.evaluation.bench import inspection_of
from foveal.model import loader
from foveal.plant.dataset import read_labels
from foveal.reasoning.loop import Loop, LoopOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--kind", choices=("image", "sequence"), default="sequence")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--tower-precision", choices=("auto", "bfloat16"), default="auto")
    parser.add_argument("--blocks", type=int, default=0,
                        help="instead of pairs: this many passes over all items, float32 and the low "
                             "dtype alternating, each pass's median printed (no item runs twice in a row)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    vlm = loader.load(args.model, tower_precision=args.tower_precision)
    tower = vlm.model.model.visual
    low = tower.probe_dtype
    if low is None:
        raise SystemExit("this CPU has no native bfloat16, so 'auto' keeps float32 "
                         "(--tower-precision bfloat16 forces it)")
    labels = [lb for lb in read_labels(args.bench) if lb.is_sequence == (args.kind == "sequence")][:args.n]
    items = [inspection_of(label, args.bench, True) for label in labels]
    loop = Loop(vlm, LoopOptions())
    loop.run(items[:1])  # warm-up
    sides = {"float32": None, "low": low}
    if args.blocks:
        medians: dict[str, list[float]] = {"float32": [], "low": []}
        for b in range(args.blocks):
            side = ("float32", "low")[b % 2]
            tower.probe_dtype = sides[side]
            passed = []
            for item in items:
                began = time.perf_counter()
                loop.run([item])
                passed.append((time.perf_counter() - began) * 1000)
            medians[side].append(round(statistics.median(passed), 1))
            print(f"pass {b + 1}: probes in {side if side == 'float32' else low}, p50 {medians[side][-1]} ms")
        tower.probe_dtype = low
        out = args.out or Path(__file__).parent / "results" / f"probe_precision_{args.kind}_blocks.json"
        print(write_record(dict(benchmark="probe_precision_blocks", model=str(args.model), kind=args.kind,
                                n=len(items), probe_dtype=str(low), pass_medians_ms=medians), out))
        return
    times: dict[str, list[float]] = {"float32": [], "low": []}
    same = 0
    for i, item in enumerate(items):
        answers = {}
        for side in (("float32", "low") if i % 2 == 0 else ("low", "float32")):
            tower.probe_dtype = sides[side]
            began = time.perf_counter()
            trace = loop.run([item])[0]
            times[side].append((time.perf_counter() - began) * 1000)
            answers[side] = (trace.verdict, trace.defect_type, trace.box)
        same += answers["float32"] == answers["low"]
    change = [b - a for a, b in zip(times["float32"], times["low"], strict=True)]
    results = dict(kind=args.kind, n=len(items), threads=torch.get_num_threads(), probe_dtype=str(low),
                   float32_p50_ms=round(statistics.median(times["float32"]), 1),
                   low_p50_ms=round(statistics.median(times["low"]), 1),
                   paired_change_median_ms=round(statistics.median(change), 1),
                   paired_change_mean_ms=round(statistics.mean(change), 1),
                   same_answers=same)
    print(f"{args.n} {args.kind}s, batch 1, ms per inspection")
    print(f"{'probes':>10} {'p50':>8}")
    print(f"{'float32':>10} {results['float32_p50_ms']:>8}")
    print(f"{str(low).removeprefix('torch.'):>10} {results['low_p50_ms']:>8}")
    print(f"paired change: median {results['paired_change_median_ms']} ms, "
          f"mean {results['paired_change_mean_ms']} ms; "
          f"the same verdict, type and box on {same} of {len(items)}")
    line = write_record(dict(benchmark="probe_precision", model=str(args.model), results=results, runs=times),
                        args.out or Path(__file__).parent / "results" / f"probe_precision_{args.kind}.json")
    print(line[:300])


if __name__ == "__main__":
    main()

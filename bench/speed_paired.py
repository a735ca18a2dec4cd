"""Session 27's speed-ups against the code before them, paired item by item in one process.

The host's speed drifts by 20 % and more within minutes, so runs of the old and the new code in
separate processes compare phases of the host as much as code. This loads the model once and runs
every inspection (or batch) twice in a row, once the way the code ran before session 27 and once
as it runs now, alternating which goes first:

- `before`: every same-size batch through the backbone at once, the default memory layout, a
  sequence's frames resized one after another;
- `now`: batches of at most `vision.BATCH_PIXELS` pixels, channels-last (`vision.CHANNELS_LAST`),
  the frames resized on two threads (`operations.each_image`).

Prints the medians and the paired differences; the last line is one JSON object, also written to
`--out` (default `bench/results/speed_paired_<kind>_b<batch>.json`).

Run: `.venv/bin/python bench/speed_paired.py --bench /path/to/fovealbench/test --kind sequence --n 40`
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from render_throughput import write_record  # type: ignore[import-not-found]

import foveal.operations as operations
import foveal.reasoning.loop as loop_module
from foveal.evaluation.bench import inspection_of
from foveal.model import loader, vision
from foveal.plant.dataset import read_labels
from foveal.reasoning.loop import Loop, LoopOptions


def in_turn(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [work(item) for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--kind", choices=("image", "sequence"), default="sequence")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vlm = loader.load(args.model)
    tower = vlm.model.model.visual
    labels = [lb for lb in read_labels(args.bench) if lb.is_sequence == (args.kind == "sequence")][:args.n]
    items = [inspection_of(label, args.bench, True) for label in labels]
    loop = Loop(vlm, LoopOptions())
    now = (vision.BATCH_PIXELS, operations.each_image)
    settings = {"before": (10 ** 12, False, in_turn), "now": (now[0], True, now[1])}

    def use(side: str) -> None:
        vision.BATCH_PIXELS, vision.CHANNELS_LAST, resize = settings[side]
        for module in (operations, loop_module):  # the loop imported it by name
            setattr(module, "each_image", resize)  # noqa: B010
        tower.lay_out()

    use("now")
    loop.run(items[:args.batch])  # warm-up
    times: dict[str, list[float]] = {"before": [], "now": []}
    for start in range(0, len(items), args.batch):
        chunk = items[start:start + args.batch]
        for side in (("before", "now") if (start // args.batch) % 2 == 0 else ("now", "before")):
            use(side)
            began = time.perf_counter()
            loop.run(chunk)
            times[side].append((time.perf_counter() - began) * 1000)
    use("now")
    change = [b - a for a, b in zip(times["before"], times["now"], strict=True)]
    results = dict(kind=args.kind, n=len(items), batch=args.batch, threads=args.threads,
                   before_p50_ms=round(statistics.median(times["before"]), 1),
                   now_p50_ms=round(statistics.median(times["now"]), 1),
                   paired_change_median_ms=round(statistics.median(change), 1),
                   paired_change_mean_ms=round(statistics.mean(change), 1),
                   before_total_s=round(sum(times["before"]) / 1000, 2),
                   now_total_s=round(sum(times["now"]) / 1000, 2))
    print(f"{args.n} {args.kind}s, batch {args.batch}: ms per {'call' if args.batch > 1 else 'inspection'}")
    print(f"{'':>8} {'p50':>8} {'total s':>8}")
    print(f"{'before':>8} {results['before_p50_ms']:>8} {results['before_total_s']:>8}")
    print(f"{'now':>8} {results['now_p50_ms']:>8} {results['now_total_s']:>8}")
    print(f"paired change: median {results['paired_change_median_ms']} ms, "
          f"mean {results['paired_change_mean_ms']} ms")
    out = args.out or Path(__file__).parent / "results" / f"speed_paired_{args.kind}_b{args.batch}.json"
    line = write_record(dict(benchmark="speed_paired", model=str(args.model), results=results,
                             runs=times), out)
    print(line[:300])


if __name__ == "__main__":
    main()

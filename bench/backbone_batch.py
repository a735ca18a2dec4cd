"""How the vision backbone's time per image depends on how many images run in one batch.

The pointer reads many same-size images at once (16 candidate crops of 336 px, a sequence's
frames, a batch's whole views), and `ConvVisionTower.feature_maps` runs images of one size in
batches of at most `BATCH_PIXELS` pixels. This measures the backbone on random images at each
batch size, the runs of one shape interleaved and repeated (`--repeats`, the first dropped), and
prints the median per batch of `--images` images. The last line is one JSON object, also written to
`--out` (default `bench/results/backbone_batch.json`).

Run: `.venv/bin/python bench/backbone_batch.py [--model DIR] [--threads 2]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.model import loader
from foveal.model.vision import BATCH_PIXELS, ConvVisionTower

SHAPES = ((336, 16), (448, 8), (448, 2))  # (side, images): the rerank's probes, batch-8 views, a selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backbone_batch.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tower = loader.load(args.model).model.model.visual
    assert isinstance(tower, ConvVisionTower)
    generator = torch.Generator().manual_seed(0)
    results = []
    print(f"{'side':>5} {'images':>6} {'batch':>5} {'ms (median)':>12} {'ms per image':>13}")
    with torch.inference_mode():
        for side, count in SHAPES:
            x = torch.randn(count, 3, side, side, generator=generator)
            sizes = [b for b in (1, 2, 4, 8, 16) if b <= count]
            times: dict[int, list[float]] = {b: [] for b in sizes}
            for _ in range(args.repeats):
                for b in sizes:
                    started = time.perf_counter()
                    for i in range(0, count, b):
                        tower.backbone(x[i:i + b])
                    times[b].append((time.perf_counter() - started) * 1000)
            chosen = max(1, BATCH_PIXELS // (side * side))
            for b in sizes:
                ms = statistics.median(times[b][1:])
                mark = "  <- feature_maps" if b == min(chosen, count) else ""
                print(f"{side:>5} {count:>6} {b:>5} {ms:>12.1f} {ms / count:>13.2f}{mark}")
                results.append(dict(side=side, images=count, batch=b, ms=round(ms, 2), runs=times[b][1:]))
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version(),
                   threads=args.threads)
    line = json.dumps(dict(benchmark="backbone_batch", model=str(args.model), batch_pixels=BATCH_PIXELS,
                           results=results, commit=git_commit(), machine=machine))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

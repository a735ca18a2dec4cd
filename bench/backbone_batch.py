"""How the vision backbone's time per image depends on the batch size and the memory layout.

The pointer reads many same-size images at once (16 candidate crops of 336 px, a sequence's
frames, a batch's whole views), and `ConvVisionTower.feature_maps` runs images of one size in
batches of at most `BATCH_PIXELS` pixels, laid out channels-last (`CHANNELS_LAST`). This measures
the backbone on random images at each batch size in both layouts (the weights and the input
alike), the runs of one shape interleaved and repeated (`--repeats`, the first dropped), and prints
the median time for all the shape's images. The last line is one JSON object, also written to
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
from foveal.model.vision import BATCH_PIXELS, CHANNELS_LAST, ConvVisionTower

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
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    print(f"{'side':>5} {'images':>6} {'batch':>5} {'contiguous ms':>14} {'channels-last ms':>17}")
    with torch.inference_mode():
        for side, count in SHAPES:
            x = torch.randn(count, 3, side, side, generator=generator)
            sizes = [b for b in (1, 2, 4, 8, 16) if b <= count]
            times: dict[tuple[str, int], list[float]] = {(name, b): [] for name in layouts for b in sizes}
            for _ in range(args.repeats):
                for name, layout in layouts.items():
                    tower.lay_out(name == "channels_last")
                    inputs = x.contiguous(memory_format=layout)
                    for b in sizes:
                        started = time.perf_counter()
                        for i in range(0, count, b):
                            tower.backbone(inputs[i:i + b])
                        times[name, b].append((time.perf_counter() - started) * 1000)
            chosen = max(1, BATCH_PIXELS // (side * side))
            for b in sizes:
                ms = {name: statistics.median(times[name, b][1:]) for name in layouts}
                mark = "  <- feature_maps" if b == min(chosen, count) else ""
                row = f"{side:>5} {count:>6} {b:>5} {ms['contiguous']:>14.1f} {ms['channels_last']:>17.1f}"
                print(row + mark)
                results += [dict(side=side, images=count, batch=b, layout=name, ms=round(ms[name], 2),
                                 runs=times[name, b][1:]) for name in layouts]
    tower.lay_out()
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version(),
                   threads=args.threads)
    line = json.dumps(dict(benchmark="backbone_batch", model=str(args.model), batch_pixels=BATCH_PIXELS,
                           channels_last=CHANNELS_LAST,
                           results=results, commit=git_commit(), machine=machine))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

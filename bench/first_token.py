"""Does a model decide to zoom from the image? The probability of its first assistant token being
the zoom sentence's (`trajectories._ZOOM`, the v5+ trajectories), on single images of a bench.

A model whose decoder reads the image gives that probability a spread over items and ranks hard
and tiny defects (always zoomed in the trajectories) above easy ones (mostly answered at once);
one that does not gives every item the same number. Prints a table per difficulty (mean, spread
and range of P(zoom)), the AUROC of P(zoom) for hard/tiny against easy, and as its last line one
JSON object with the figures, the git commit and the machine. Seconds per hundred items on a CPU.

Run: `.venv/bin/python bench/first_token.py --model /work/data/runs/v6 --bench /work/data/fbench/dev
--n 120 --out bench/results/first_token.json`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.domain import DEFECT_TYPES
from foveal.model import loader
from foveal.operations import Workspace
from foveal.plant.dataset import load_image, read_labels
from foveal.reasoning.prompts import inspection_prompt
from foveal.training.examples import with_maps
from foveal.training.forward import collate, token_logits
from foveal.training.pretrain import auroc
from foveal.training.trajectories import _ZOOM


@torch.no_grad()
def zoom_probabilities(model: Path, bench: Path, n: int) -> list[tuple[str, float]]:
    """(difficulty or "none", P(first token = the zoom sentence's)) per single image."""
    vlm = loader.load(model)
    vlm.model.eval()
    tower = vlm.model.model.visual
    zoom_id = vlm.tokenizer.encode(_ZOOM, add_special_tokens=False)[0]
    out = []
    for label in [lb for lb in read_labels(bench) if lb.image is not None][:n]:
        assert label.image is not None
        view = Workspace([load_image(bench, label.image)], vlm.budget).views[0].pixels
        chunk = vlm.chat.prompt([view], inspection_prompt(label.product, list(DEFECT_TYPES), 1))
        chunk.extend(vlm.chat.assistant(_ZOOM, True))  # teacher-forced: only the first position is read
        example = with_maps(chunk, tower, label.id, "probe")
        batch = collate([example.chunk], vlm.chat.pad, vlm.chat.spec)
        first = int((batch.targets[0] != -100).nonzero()[0])
        probs = token_logits(vlm, batch, list(example.maps))[0, first].float().softmax(-1)
        out.append(("none" if label.defect_type == "none" else str(label.difficulty), float(probs[zoom_id])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--n", type=int, default=120, help="first N single images of the bench")
    parser.add_argument("--out", type=Path, help="where the JSON goes (also printed)")
    args = parser.parse_args()
    rows = zoom_probabilities(args.model, args.bench, args.n)
    groups: dict[str, list[float]] = {}
    for group, p in rows:
        groups.setdefault(group, []).append(p)
    print(f"{'items':<6} {'n':>4} {'P(zoom) mean':>13} {'spread (sd)':>12} {'min':>7} {'max':>7}")
    table = {}
    for group in ("easy", "hard", "tiny", "none"):
        values = groups.get(group, [])
        if not values:
            continue
        sd = statistics.pstdev(values)
        table[group] = {"n": len(values), "mean": statistics.fmean(values), "sd": sd,
                        "min": min(values), "max": max(values)}
        print(f"{group:<6} {len(values):>4} {table[group]['mean']:>13.3f} {sd:>12.4f} "
              f"{min(values):>7.3f} {max(values):>7.3f}")
    subtle = groups.get("hard", []) + groups.get("tiny", [])
    easy = groups.get("easy", [])
    separation = auroc(np.array(subtle + easy), np.array([True] * len(subtle) + [False] * len(easy))) \
        if subtle and easy else None
    shown = "n/a" if separation is None else f"{separation:.3f}"
    print(f"AUROC of P(zoom), hard+tiny vs easy: {shown}")
    result = {"model": str(args.model), "bench": str(args.bench), "items": len(rows), "groups": table,
              "auroc_subtle_vs_easy": separation, "commit": git_commit(),
              "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Where is the defect type lost? For the defective single images of a bench: the type the model's
loop answers against the types its own vision tower reads (stage 0's view head and cell head, on
the whole view and on a zoom on the labelled defect, the crop the trajectories take).

If the tower names the type far more often than the answers do, the decoder does not read it
out (v6: tower 0.58-0.62 on zooms, answers 0.08, one type for nearly every defect); if both are
low, the vision is the limit. Prints a table of accuracies per difficulty, the answers' type
counts and the zoom view head's confusion matrix; its last line is one JSON object with the
figures, the git commit and the machine. About 40 s per 160 items on two cores.

Run: `.venv/bin/python bench/type_readout.py --model models/foveal_vl/1/weights
--bench /work/data/fbench/test --n 160 --out bench/results/type_readout.json`
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
from pathlib import Path

import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.domain import DEFECT_TYPES
from foveal.evaluation.bench import inspection_of
from foveal.evaluation.metrics import box_covers
from foveal.model import loader
from foveal.model.vision import ConvVisionTower
from foveal.plant.dataset import read_labels
from foveal.reasoning.loop import Loop, LoopOptions
from foveal.training.pretrain import _pixels, samples_for

READINGS = ("answer", "whole_view", "whole_cell", "zoom_view", "zoom_cell")


@torch.no_grad()
def readings(model: Path, bench: Path, n: int, batch: int = 8) -> list[dict[str, str]]:
    """Per defective single image: truth, difficulty, the loop's answer and the tower's readings."""
    vlm = loader.load(model)
    tower = vlm.model.model.visual
    if not isinstance(tower, ConvVisionTower) or tower.head is None:
        raise SystemExit(f"{model}: the readout needs the compact tower with stage 0's cell head")
    labels = [x for x in read_labels(bench) if x.image and x.defect_type in DEFECT_TYPES[1:]][:n]
    loop = Loop(vlm, LoopOptions())
    traces = []
    for start in range(0, len(labels), batch):
        traces += loop.run([inspection_of(x, bench, True) for x in labels[start: start + batch]])
    rng = random.Random(0)
    rows = []
    for label, trace in zip(labels, traces, strict=True):
        box = trace.box
        hit = box is not None and label.bbox is not None and \
            box_covers((box.x1, box.y1, box.x2, box.y2), label.bbox)
        row = {"truth": str(label.defect_type), "difficulty": str(label.difficulty),
               "answer": trace.defect_type, "zoomed": str(bool(trace.operations)),
               "crop": ("on the defect" if hit else "elsewhere") if trace.operations else "none"}
        for sample in samples_for(label, bench, rng, vlm.budget, zooms=1, wide=0, others=0):
            maps = tower.backbone(_pixels(tower, [sample.view]))
            row[f"{sample.kind}_view"] = DEFECT_TYPES[int(tower.head.whole(maps)[0][1:].argmax()) + 1]
            cells = torch.softmax(tower.head(maps), 1)[0][1:].flatten(1).sum(-1)
            row[f"{sample.kind}_cell"] = DEFECT_TYPES[int(cells.argmax()) + 1]
        rows.append(row)
    return rows


def accuracy(rows: list[dict[str, str]], key: str) -> float | None:
    have = [r for r in rows if key in r]
    return sum(r[key] == r["truth"] for r in have) / len(have) if have else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--n", type=int, default=160, help="defective single images (the first N)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args()
    rows = readings(args.model, args.bench, args.n)
    difficulties = sorted({r["difficulty"] for r in rows})
    table: dict[str, dict[str, float | None]] = {}
    print(f"{'reading':<12}" + "".join(f"{d:>8}" for d in ["all", *difficulties]))
    for key in READINGS:
        by = {d: accuracy([r for r in rows if r["difficulty"] == d], key) for d in difficulties}
        table[key] = {"all": accuracy(rows, key), **by}
        print(f"{key:<12}" + "".join(f"{'-' if v is None else f'{v:.3f}':>8}" for v in table[key].values()))
    crops: dict[str, dict[str, float | int | None]] = {}
    for where in ("none", "on the defect", "elsewhere"):
        sub = [r for r in rows if r["crop"] == where]
        crops[where] = {"items": len(sub), "answer_accuracy": accuracy(sub, "answer"),
                        "answered_none": sum(r["answer"] == DEFECT_TYPES[0] for r in sub)}
        acc = crops[where]["answer_accuracy"]
        shown = "-" if acc is None else f"{acc:.3f}"
        print(f"model's crop {where:<14} items {len(sub):>4}  answer accuracy {shown}"
              f"  answered none {crops[where]['answered_none']}")
    answers = collections.Counter(r["answer"] for r in rows)
    print("answers:", dict(answers.most_common()))
    confusion = collections.Counter((r["truth"], r.get("zoom_view", "")) for r in rows)
    print("zoom view head, rows truth, columns read:", " ".join(DEFECT_TYPES[1:]))
    for truth in DEFECT_TYPES[1:]:
        print(f"  {truth:<8}", [confusion[(truth, read)] for read in DEFECT_TYPES[1:]])
    result = {"bench": str(args.bench), "model": str(args.model), "items": len(rows), "accuracy": table,
              "by_crop": crops,
              "answers": dict(answers), "commit": git_commit(), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} cores"}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

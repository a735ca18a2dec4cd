"""Paired comparison of two `foveal eval` runs on the same items: the difference in image F1,
defect-type accuracy, overall accuracy, false-reject rate and box hits (single images) with 95 %
paired bootstrap intervals (items resampled together, so the interval is that of the difference,
far narrower than the two runs' own intervals). When both
runs record each answer's `defect_score`, also the AUROC of that score (defective against good
items) for single images and for sequences: how well the model separates them whatever the
threshold, where F1 also moves with the threshold.

Reads the `predictions.jsonl` each run writes (each item's answer beside its label), prints a
table and, as its last line, one JSON object (also written to `--out` when given).

Run: `.venv/bin/python bench/compare_evals.py BEFORE/predictions.jsonl AFTER/predictions.jsonl`
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foveal.evaluation.metrics import box_covers, detection_scores, is_defective
from foveal.training.pretrain import auroc

Record = dict[str, Any]


def read(path: Path) -> dict[str, Record]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["image"]: r for r in records}


def f1(records: Sequence[Record]) -> float:
    truth = [is_defective(r["label"]["defect_type"]) for r in records]
    answered = [is_defective(r["defect_type"] or "unanswered") for r in records]
    return float(detection_scores(truth, answered)[2] or 0.0)


def type_accuracy(records: Sequence[Record]) -> float:
    defective = [r for r in records if is_defective(r["label"]["defect_type"])]
    return sum(bool(r["type_correct"]) for r in defective) / max(1, len(defective))


def overall_accuracy(records: Sequence[Record]) -> float:
    """Right answers over all items, good ones included (`none` is right on a good part): what
    the RL reward pays on average, where type accuracy counts the defective items only."""
    return sum(bool(r["type_correct"]) for r in records) / max(1, len(records))


def false_reject_rate(records: Sequence[Record]) -> float:
    """Good items answered with a defect (or not answered) over good items; NaN without any."""
    good = [r for r in records if not is_defective(r["label"]["defect_type"])]
    rejected = [r for r in good if is_defective(r["defect_type"] or "unanswered")]
    return len(rejected) / len(good) if good else float("nan")


def box_hits(records: Sequence[Record]) -> float:
    """Defective single images answered with a defect whose evidence box covers the labelled box
    (`metrics.box_covers`), over all defective single images: a fixed denominator, so the
    difference pairs (the eval's box hit rate divides by the detected items that have a box)."""
    rows = [r for r in records if r["label"].get("kind", "image") == "image"
            and is_defective(r["label"]["defect_type"]) and r["label"].get("bbox") is not None]
    hit = [r for r in rows if is_defective(r["defect_type"] or "unanswered") and r.get("bbox") is not None
           and box_covers(r["bbox"], r["label"]["bbox"])]
    return len(hit) / len(rows) if rows else float("nan")


def score_auroc(kind: str) -> Callable[[Sequence[Record]], float]:
    """The AUROC of `defect_score` over the items of one kind (`image` or `sequence`); NaN
    when they are not both defective and good."""
    def metric(records: Sequence[Record]) -> float:
        rows = [r for r in records if r["label"].get("kind", "image") == kind]
        scores = np.array([float(r["defect_score"]) for r in rows], dtype=np.float64)
        truths = np.array([is_defective(r["label"]["defect_type"]) for r in rows], dtype=bool)
        found = auroc(scores, truths) if rows else None
        return float("nan") if found is None else found
    return metric


METRICS: dict[str, Callable[[Sequence[Record]], float]] = {
    "image_f1": f1, "type_accuracy": type_accuracy, "overall_accuracy": overall_accuracy,
    "false_reject_rate": false_reject_rate, "box_hits_images": box_hits}
SCORED: dict[str, Callable[[Sequence[Record]], float]] = {
    "score_auroc_images": score_auroc("image"), "score_auroc_sequences": score_auroc("sequence")}


def compare(before: dict[str, Record], after: dict[str, Record], resamples: int = 2000,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric: before, after, their difference and its 95 % paired bootstrap interval."""
    if set(before) != set(after):
        raise SystemExit(f"the runs hold different items ({len(set(before) ^ set(after))} differ)")
    ids = sorted(before)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(ids), len(ids)) for _ in range(resamples)]
    a, b = [before[i] for i in ids], [after[i] for i in ids]
    scored = all(r.get("defect_score") is not None for r in (*a, *b))
    out = {}
    for name, metric in {**METRICS, **(SCORED if scored else {})}.items():
        if math.isnan(metric(a)) or math.isnan(metric(b)):
            continue
        diffs = sorted(x for x in (metric([b[k] for k in d]) - metric([a[k] for k in d]) for d in draws)
                       if not math.isnan(x))
        out[name] = {"before": round(metric(a), 4), "after": round(metric(b), 4),
                     "difference": round(metric(b) - metric(a), 4),
                     "low": round(diffs[int(0.025 * len(diffs))], 4),
                     "high": round(diffs[int(0.975 * len(diffs)) - 1], 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--kind", choices=("image", "sequence"), default=None,
                        help="compare the single images or the sequences only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    before, after = read(args.before), read(args.after)
    if args.kind:
        before, after = ({k: r for k, r in run.items() if r["label"].get("kind", "image") == args.kind}
                         for run in (before, after))
    result = compare(before, after, args.resamples)
    print(f"{'metric':<22} {'before':>8} {'after':>8} {'diff':>8}   95 % paired interval")
    for name, r in result.items():
        print(f"{name:<22} {r['before']:>8.4f} {r['after']:>8.4f} {r['difference']:>+8.4f}   "
              f"{r['low']:+.4f} … {r['high']:+.4f}")
    line = json.dumps({"benchmark": "compare_evals", "before": str(args.before), "after": str(args.after),
                       "kind": args.kind or "all", "resamples": args.resamples, "results": result})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

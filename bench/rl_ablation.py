"""The RL ablation table (issue #9): every model of the ablation on FovealBench test, side by side.

Each model is given as `name=EVAL_DIR` (a `foveal eval --out` folder holding `metrics.json`) or
`name=EVAL_DIR:RL_LOG_DIR` (an RL run's `docs/rl/<run>` folder as well, for its last episode's
sampled figures). The first model is the reference (SFT only): for every other model and headline
metric the table says whether the difference to it lies outside both models' 95 % bootstrap
intervals (`foveal eval`'s item-sampling spread), i.e. is larger than the spread of eval.

Prints the table and, as its last line, one JSON object with the figures, the git commit and the
machine; `--out FILE` also writes that JSON.

Run: `.venv/bin/python bench/rl_ablation.py sft=/work/data/eval-v6 \
curiosity=/work/data/eval-rl-curiosity:docs/rl/curiosity ... --out bench/results/rl_ablation.json`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.training import rl_log

METRICS = ("image_f1", "type_accuracy", "false_reject_at_escape", "overall_accuracy", "rapr")
EXTRA = ("false_reject_rate", "operation_error_rate", "box_hit_rate")
LOWER_IS_BETTER = {"false_reject_at_escape", "false_reject_rate", "operation_error_rate"}


def read_model(spec: str) -> tuple[str, dict]:
    """One `name=EVAL_DIR[:RL_LOG_DIR]` argument, read."""
    name, sep, paths = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"{spec!r}: expected name=EVAL_DIR or name=EVAL_DIR:RL_LOG_DIR")
    eval_dir, _, log_dir = paths.partition(":")
    metrics_file = Path(eval_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise SystemExit(f"{spec!r}: {metrics_file} does not exist (run foveal eval --out {eval_dir})")
    metrics = json.loads(metrics_file.read_text())
    overall, intervals = metrics["overall"], metrics.get("intervals", {})
    model = dict(eval_dir=eval_dir, n=overall["n"],
                 metrics={k: overall.get(k) for k in METRICS + EXTRA},
                 intervals={k: intervals.get(k) for k in METRICS})
    if log_dir:
        rows = rl_log.read(Path(log_dir) / "metrics.jsonl")
        if not rows:
            raise SystemExit(f"{spec!r}: no episodes in {log_dir}/metrics.jsonl")
        last = rows[-1]
        model["rl"] = dict(log_dir=log_dir, episodes=len(rows), queries_seen=last.get("queries_seen"),
                           sampled_accuracy_first=rows[0]["accuracy"], sampled_accuracy_last=last["accuracy"],
                           rapr_first=rows[0]["rapr"], rapr_last=last["rapr"],
                           op_error_rate_last=last.get("op_error_rate"))
    return name, model


def beyond_spread(ref: dict, other: dict, key: str) -> bool | None:
    """True when `other`'s metric differs from `ref`'s by more than the spread of eval: its value
    lies outside `ref`'s interval and `ref`'s value outside its own. None without intervals."""
    a, b = ref["intervals"].get(key), other["intervals"].get(key)
    va, vb = ref["metrics"].get(key), other["metrics"].get(key)
    if not a or not b or va is None or vb is None:
        return None
    return not (a[0] <= vb <= a[1]) and not (b[0] <= va <= b[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+",
                        help="name=EVAL_DIR or name=EVAL_DIR:RL_LOG_DIR; the first is the reference")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    models = dict(read_model(spec) for spec in args.models)
    ref_name = next(iter(models))
    ref = models[ref_name]
    for name, model in models.items():
        if name != ref_name:
            model["vs_reference"] = {}
            for key in METRICS:
                va, vb = ref["metrics"].get(key), model["metrics"].get(key)
                if va is None or vb is None:
                    continue
                delta = vb - va
                better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
                model["vs_reference"][key] = dict(delta=delta, better=better,
                                                  beyond_spread=beyond_spread(ref, model, key))
    head = ["model", "F1", "type acc", "FR@1%esc", "FR rate", "overall", "RaPR", "op err", "box hit"]
    print(" | ".join(f"{h:>14}" for h in head))
    for name, model in models.items():
        m = model["metrics"]
        cells = [name] + [m.get(k) for k in ("image_f1", "type_accuracy", "false_reject_at_escape",
                                            "false_reject_rate", "overall_accuracy", "rapr",
                                            "operation_error_rate", "box_hit_rate")]
        print(" | ".join(f"{c:>14}" if isinstance(c, str) else
                         (f"{c:>14.3f}" if c is not None else f"{'-':>14}") for c in cells))
    for name, model in models.items():
        for key, d in model.get("vs_reference", {}).items():
            if d["beyond_spread"]:
                print(f"{name}: {key} {d['delta']:+.3f} against {ref_name}, beyond the spread of eval "
                      f"({'better' if d['better'] else 'worse'})")
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    result = dict(benchmark="rl_ablation", reference=ref_name, models=models, commit=git_commit(),
                  machine=machine)
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

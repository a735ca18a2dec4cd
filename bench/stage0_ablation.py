"""What stage 0 buys: the same SFT run with and without vision pre-training, dev curves in one figure.

Both runs use the same data, trajectories, tokenizer size, SFT steps and seed; "without" skips
stage 0 and trains the randomly initialised backbone in SFT along with the rest
(`--train-backbone`), so SFT has to learn to see from the trajectories alone. Writes
`<out>/stage0_ablation.png` and prints a table; the last line is one JSON object with the
figures, the commit and the machine.

Run: `.venv/bin/python bench/stage0_ablation.py --data DIR --dev DIR --out DIR [--items 500] [--steps 200]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.cli.model import Phases, progress_bar
from foveal.training.sft import SFTConfig, plot_curves, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    args = parser.parse_args()
    reports = {}
    for name, pretrain_steps in (("with stage 0", args.pretrain_steps), ("without stage 0", 0)):
        config = SFTConfig(data=args.data, dev=args.dev, out=args.out / name.replace(" ", "-"),
                           max_items=args.items, steps=args.steps, pretrain_steps=pretrain_steps,
                           train_backbone=pretrain_steps == 0,
                           eval_every=max(1, args.steps // 5), dev_items=80, dev_loop_items=40)
        with progress_bar() as bar:
            reports[name] = run(config, Phases(bar))
    plot_curves(reports["with stage 0"], args.out / "stage0_ablation.png",
                others={"without stage 0": reports["without stage 0"]})
    print(f"{'run':<18} {'dev loss':>9} {'dev type acc':>13} {'dev RaPR':>9}")
    results = {}
    for name, report in reports.items():
        loss = report.dev_loss[-1][1] if report.dev_loss else float("nan")
        _, acc, rapr = report.dev_eval[-1][:3] if report.dev_eval else (0, float("nan"), float("nan"))
        print(f"{name:<18} {loss:>9.4f} {acc:>13.3f} {rapr:>9.3f}")
        results[name] = {"dev_loss": loss, "dev_type_accuracy": acc, "dev_rapr": rapr,
                         "dev_curve": report.dev_loss, "dev_eval": report.dev_eval}
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    print(json.dumps(dict(benchmark="stage0_ablation", items=args.items, steps=args.steps, results=results,
                          commit=git_commit(), machine=machine)))


if __name__ == "__main__":
    main()

"""The learning trap (issue #9): RaPR over episodes of RL runs from the same SFT checkpoint, with
and without the curiosity term, in one figure, and the ablation's last-episode figures.

Reads each run's `metrics.jsonl` (written by `foveal train rl --log-dir docs/rl/<run>`), draws
`<out>/learning_trap.png` (RaPR per episode of every run, and the target H), prints a table of
each run's first and last RaPR, accuracy and uniform-group share and, as its last line, one JSON
object with the figures, the git commit and the machine.

Run: `.venv/bin/python bench/rl_trap.py docs/rl/curiosity docs/rl/no-curiosity [docs/rl/no-correction]
--out docs/rl`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.training import rl_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="folders holding metrics.jsonl (and rl_config.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--H", type=float, default=None, help="target RaPR (default: the first run's config)")
    args = parser.parse_args()
    runs = {folder.name: rl_log.read(folder / "metrics.jsonl") for folder in args.runs}
    empty = [name for name, rows in runs.items() if not rows]
    if empty:
        raise SystemExit(f"no episodes logged in {', '.join(empty)}")
    config_file = args.runs[0] / "rl_config.json"
    target = args.H if args.H is not None else (
        json.loads(config_file.read_text())["rewards"]["rapr_target"] if config_file.is_file() else 0.3)
    args.out.mkdir(parents=True, exist_ok=True)
    rl_log.plot_rapr(runs, args.out / "learning_trap.png", target)
    figures = {name: dict(episodes=len(rows), rapr_first=rows[0]["rapr"], rapr_last=rows[-1]["rapr"],
                          rapr_min=min(r["rapr"] for r in rows), accuracy_last=rows[-1]["accuracy"],
                          uniform_share_last=rows[-1]["uniform_share"], dev_last=rows[-1].get("dev", {}))
               for name, rows in runs.items()}
    print(f"{'run':<16} {'episodes':>8} {'RaPR first':>10} {'RaPR last':>9} {'RaPR min':>8} {'acc last':>8}")
    for name, f in figures.items():
        print(f"{name:<16} {f['episodes']:>8} {f['rapr_first']:>10.3f} {f['rapr_last']:>9.3f} "
              f"{f['rapr_min']:>8.3f} {f['accuracy_last']:>8.3f}")
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    print(json.dumps(dict(benchmark="rl_trap", target=target, runs=figures,
                          figure=str(args.out / "learning_trap.png"), commit=git_commit(), machine=machine)))


if __name__ == "__main__":
    main()

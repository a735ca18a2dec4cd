"""Time one `foveal train rl` episode (issue #9: 512 queries x 8 rollouts in <= 20 min on the
2-core machine) and split it into rollout and update seconds.

Runs `foveal.training.rl.run` for one episode from `--model` (an SFT model directory) on `--data`
into a temporary folder (or `--out`), so the figure is what `foveal train rl` delivers, model
loading and saving excluded. `--queries` smaller than 512 gives a partial episode, labelled as
such in the output. Prints a table and, as its last line, one JSON object with the figures, the
git commit and the machine.

`--threads N` sets torch's intra-op threads (default: torch's choice, one per core); on a machine
another job keeps busy, 1 thread is several times faster than 2 fighting over the cores
(docs/rl.md).

Run: `.venv/bin/python bench/rl_episode.py --model runs/sft --data data/train [--queries 512] [--rollouts 8]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from render_throughput import git_commit  # type: ignore[import-not-found]

from foveal.training.rl import RLConfig, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="SFT model directory")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="query dataset (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temp dir)")
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--queries-per-step", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--rollout-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "rl"
        config = RLConfig(model=args.model, data=args.data, out=out, episodes=1,
                          queries_per_episode=args.queries, queries_per_step=args.queries_per_step,
                          group_size=args.rollouts,
                          micro_batch=args.micro_batch, rollout_batch=args.rollout_batch, seed=args.seed,
                          run_name="rl-episode-bench")
        row = run(config, resume=False)[-1]
    total = row["rollout_s"] + row["update_s"]
    figures = dict(queries=row["queries"], rollouts=row["rollouts"], full_episode=args.queries >= 512,
                   rollout_s=round(row["rollout_s"], 1), update_s=round(row["update_s"], 1),
                   old_logp_s=round(row.get("old_logp_s", 0.0), 1),
                   total_s=round(total, 1),
                   rollout_share=round(row["rollout_s"] / total, 3) if total else None,
                   updates=row["updates"], skipped_steps=row["skipped_steps"],
                   uniform_share=row["uniform_share"], rapr=row["rapr"], accuracy=row["accuracy"],
                   bar_s=1200, meets_bar=args.queries >= 512 and total <= 1200)
    print(f"{'queries':>7}  {'rollouts':>8}  {'rollout s':>9}  {'update s':>8}  {'total s':>7}  "
          f"{'updates':>7}")
    print(f"{row['queries']:>7}  {row['rollouts']:>8}  {row['rollout_s']:>9.1f}  {row['update_s']:>8.1f}  "
          f"{total:>7.1f}  {row['updates']:>7}")
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version(),
                   load_avg_1m=round(os.getloadavg()[0], 2), torch_threads=torch.get_num_threads())
    print(json.dumps(dict(benchmark="rl_episode", model=str(args.model), data=[str(d) for d in args.data],
                          **figures, commit=git_commit(), machine=machine)))


if __name__ == "__main__":
    main()

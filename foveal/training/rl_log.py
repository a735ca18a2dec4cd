"""The per-episode log of `foveal train rl`: what one episode's rollouts and updates amount to, one
JSON object per line of `metrics.jsonl`, and the PNG plots of every figure over training.

An episode's figures are over its sampled rollouts (the model as it explores): accuracy (the eval
judgement of the answer), RaPR overall and per difficulty, the operation error rate, the mean
curiosity bonus and penalty, the share of uniform groups that selective sample replay dropped,
and the seconds spent rolling out and updating. With a dev set the greedy loop's FovealBench
metrics are added under `dev`. `plot_rapr` draws several runs' RaPR in one figure (the
learning trap: RaPR without curiosity against RaPR with it, and the target H).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foveal.evaluation.metrics import DIFFICULTY_ORDER
from foveal.training.rollouts import Sample


@dataclass
class StepStats:
    groups: int = 0
    uniform: int = 0  # groups whose rewards were all equal (dropped)
    updated: bool = False  # False: every group was uniform, no optimizer step
    clip_fraction: float = 0.0
    loss: float = 0.0


@dataclass
class EpisodeLog:
    episode: int  # 1-based
    queries: int
    rollouts: int
    accuracy: float
    reward: float  # mean r
    reward_total: float  # mean r'
    rapr: float
    rapr_by_difficulty: dict[str, float]
    op_error_rate: float | None  # operation errors / operations (None: no operation at all)
    curiosity: float  # mean bonus over rollouts
    penalty: float  # mean penalty over rollouts (<= 0)
    uniform_share: float
    updates: int  # optimizer steps
    skipped_steps: int  # steps whose groups were all uniform
    clip_fraction: float
    loss: float
    rollout_s: float  # the loop and the rollout policy's log-probabilities
    update_s: float
    lr: float
    queries_seen: int
    old_logp_s: float = 0.0  # of rollout_s: the teacher-forced pass of the rollout policy
    # rollouts whose answer's type was drawn from the type reader (`--train reader|both`), and
    # the share of those that named the labelled type (None: no such rollout)
    type_reads: int = 0
    read_accuracy: float | None = None
    dev: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def summarize(episode: int, samples: Sequence[Sample], steps: Sequence[StepStats], seconds: dict[str, float],
              lr: float, queries_seen: int) -> EpisodeLog:
    """The episode's log line from its rollouts and its steps' statistics."""
    n = max(1, len(samples))
    by_difficulty: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        by_difficulty[s.difficulty].append(s.outcome.uses_operation)
    rank = {k: i for i, k in enumerate(DIFFICULTY_ORDER)}
    ops = sum(s.outcome.n_ops for s in samples)
    errors = sum(s.outcome.operations_ok.count(False) for s in samples)
    groups = sum(st.groups for st in steps)
    updated = [st for st in steps if st.updated]
    reads = [s.correct for s in samples if s.read is not None]
    return EpisodeLog(
        episode=episode, queries=len({(s.query_id, s.group) for s in samples}), rollouts=len(samples),
        accuracy=sum(s.correct for s in samples) / n,
        reward=sum(s.reward.correct for s in samples) / n,
        reward_total=sum(s.reward.total for s in samples) / n,
        rapr=sum(s.outcome.uses_operation for s in samples) / n,
        rapr_by_difficulty={k: sum(v) / len(v) for k, v in
                            sorted(by_difficulty.items(), key=lambda kv: (rank.get(kv[0], 99), kv[0]))},
        op_error_rate=errors / ops if ops else None,
        curiosity=sum(s.reward.curiosity for s in samples) / n,
        penalty=sum(s.reward.penalty for s in samples) / n,
        uniform_share=sum(st.uniform for st in steps) / groups if groups else 0.0,
        updates=len(updated), skipped_steps=len(steps) - len(updated),
        clip_fraction=sum(st.clip_fraction for st in updated) / len(updated) if updated else 0.0,
        loss=sum(st.loss for st in updated) / len(updated) if updated else 0.0,
        rollout_s=seconds.get("rollout", 0.0), update_s=seconds.get("update", 0.0), lr=lr,
        queries_seen=queries_seen, old_logp_s=seconds.get("old_logp", 0.0), type_reads=len(reads),
        read_accuracy=sum(reads) / len(reads) if reads else None)


def append(path: Path, log: EpisodeLog) -> None:
    with path.open("a") as sink:
        sink.write(log.to_json() + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    """The episodes of a `metrics.jsonl` (empty when there is none yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _value(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


PANELS: tuple[tuple[str, tuple[str, ...], tuple[float, float] | None], ...] = (
    ("accuracy (rollouts)", ("accuracy", "reward", "reward_total"), None),
    ("RaPR", ("rapr",), (0.0, 1.02)),
    ("operation error rate", ("op_error_rate",), (0.0, 1.02)),
    ("reward terms", ("curiosity", "penalty"), None),
    ("uniform-group share", ("uniform_share",), (0.0, 1.02)),
    ("seconds per episode", ("rollout_s", "update_s"), None),
)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "", target: float | None = None) -> None:
    """Every logged figure over episodes, one panel each (RaPR with its per-difficulty lines and
    the target H; dev metrics on the accuracy panel when present)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 8))
    episodes = [int(r["episode"]) for r in rows]
    for i, (name, keys, ylim) in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        for key in keys:
            ax.plot(episodes, [_value(r, key) for r in rows], marker="o", label=key)
        if keys == ("rapr",):
            difficulties = sorted({k for r in rows for k in r.get("rapr_by_difficulty", {})})
            for d in difficulties:
                ax.plot(episodes, [_value(r.get("rapr_by_difficulty", {}), d) for r in rows],
                        linestyle="--", label=f"rapr {d}")
            if target is not None:
                ax.axhline(target, color="grey", linestyle=":", label=f"H = {target}")
        if keys[0] == "accuracy":
            if any(r.get("read_accuracy") is not None for r in rows):  # the type reader trained
                ax.plot(episodes, [_value(r, "read_accuracy") for r in rows], marker="^",
                        label="read_accuracy (type reads)")
            for key in sorted({k for r in rows for k in r.get("dev", {})}):
                if key in ("overall_accuracy", "rapr"):
                    ax.plot(episodes, [_value(r.get("dev", {}), key) for r in rows], marker="s",
                            linestyle=":", label=f"dev {key} (greedy)")
        ax.set(xlabel="episode", title=name)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_rapr(runs: dict[str, Sequence[dict[str, Any]]], path: Path, target: float) -> None:
    """RaPR over episodes of several runs in one figure, with the target H (the learning trap):
    the sampled rollouts' RaPR and, when the runs logged a dev eval, the greedy loop's beside it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with_dev = any(isinstance(r.get("dev"), dict) and "rapr" in r["dev"]
                   for rows in runs.values() for r in rows)
    fig = Figure(figsize=(12 if with_dev else 7, 4))
    panels: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("RaPR of the sampled rollouts", lambda r: _value(r, "rapr"))]
    if with_dev:
        panels.append(("RaPR of the greedy loop on dev", lambda r: _value(r.get("dev") or {}, "rapr")))
    for i, (title, read) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, rows in runs.items():
            ax.plot([int(r["episode"]) for r in rows], [read(r) for r in rows], marker="o", label=name)
        ax.axhline(target, color="grey", linestyle=":", label=f"H = {target}")
        ax.set(xlabel="episode", ylabel="RaPR (share of inspections that zoom)", ylim=(0.0, 1.02),
               title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)

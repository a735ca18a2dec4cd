"""Curiosity-driven RL (`foveal train rl`): from a warm-start SFT model to one that keeps zooming
where zooming pays.

Reads top to bottom like nanochat's chat_rl: config -> init (policy, its frozen rollout copy,
queries, optimizer, resumed state) -> per episode, step by step: rollouts (the loop sampling
`group_size` times per query, from the rollout copy refreshed every `refresh_every` queries) ->
rewards (`rewards.py`) -> selective sample replay and the GRPO update (`grpo.py`) -> log,
optional greedy dev eval, checkpoint -> save the model (`loader.save`, loadable by eval and
predict), `rl_config.json`, `metrics.jsonl` and `rl_curves.png`. The stage-0 backbone stays
frozen, as in SFT (the merger and the decoder train), so each rollout's backbone maps are
computed once. Resumable: `<out>/work/state.pt` after every episode.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from foveal.evaluation.bench import evaluate_model
from foveal.model import loader
from foveal.model.chat import Chunk
from foveal.model.loader import VLM
from foveal.model.vision import ConvVisionTower
from foveal.reasoning.loop import LoopOptions
from foveal.training import prefix, rl_log
from foveal.training.grpo import clip_fraction, clipped_objective, group_advantages, is_uniform, replay
from foveal.training.rewards import RewardConfig
from foveal.training.rollouts import (
    Query,
    RolloutPolicy,
    Sample,
    episode_queries,
    queries_from,
    roll_out,
    roll_out_types,
    score_old_logprobs,
    type_log_softmax,
)
from foveal.training.sft import trainable

Progress = Callable[[str, int, int], None]  # (phase, done, total)
STATE = "state.pt"
TIMERS = ("rollout", "old_logp", "update")  # seconds an episode logs (old_logp is part of rollout)


@dataclass
class RLConfig:
    model: Path  # the SFT model directory to start from
    data: list[Path]  # labelled dataset folders (generated FovealBench-style data, imported plant data)
    out: Path
    dev: Path | None = None  # FovealBench dev: greedy eval every `eval_every` episodes
    run_name: str = ""
    log_dir: Path | None = None  # also copy metrics, config and plots here (e.g. docs/rl/<run>)
    episodes: int = 1
    queries_per_episode: int = 512
    queries_per_step: int = 16  # queries whose groups form one update batch
    group_size: int = 8  # rollouts per query (G)
    refresh_every: int = 512  # queries between refreshes of the rollout policy
    rewards: RewardConfig = field(default_factory=RewardConfig)
    eps_low: float = 0.2
    eps_high: float = 0.35
    lr: float = 1e-4
    grad_clip: float = 1.0
    micro_batch: int = 8  # rollouts per forward/backward pass (gradients accumulate over a step)
    rollout_batch: int = 32  # inspections the loop runs as one batch
    temperature: float = 1.0
    max_turn_tokens: int = 96
    max_turns: int = 6
    max_operations: int = 4
    max_items: int | None = None  # per data folder
    kind: str | None = None  # "image" or "sequence": roll out only that kind of query (None: both)
    eval_every: int = 1
    dev_items: int = 64
    seed: int = 0
    version: str = ""  # recorded with the model ("" keeps the SFT model's with an `-rl` suffix)
    # every verdict comes after a look up close (`foveal.reasoning.pointer`); None: the
    # checkpoint's choice. With it on, the written zoom carries no loss, so the policy's whole-view
    # decision is not trained: the learning-trap runs want it off
    look_first: bool | None = None
    # what the update trains: "decoder" (merger and decoder: the decisions to look and whether
    # there is a defect), "reader" (only the tower's type reader: a grounded answer's type is
    # then sampled in the rollouts and is the action), or "both"
    train: str = "decoder"
    # with train "reader": the decoder decodes greedily, as inspection does, so a query's rollouts
    # differ only in the type drawn and the loop runs once per query (`rollouts.roll_out_types`)
    greedy_decoder: bool = False
    reader_lr: float = 1e-3  # the reader's AdamW settings (those `foveal train readout` chose)
    reader_weight_decay: float = 1.0

    @property
    def trains_decoder(self) -> bool:
        return self.train in ("decoder", "both")

    @property
    def trains_reader(self) -> bool:
        return self.train in ("reader", "both")

    def resolved(self) -> dict[str, Any]:
        """JSON-ready, every default filled in: what `rl_config.json` and the checkpoint keep."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        out["data"] = [str(p) for p in self.data]
        return out


def _noop(phase: str, done: int, total: int) -> None:
    del phase, done, total


# -- the update ---------------------------------------------------------------------------------
def _padded(samples: Sequence[Sample], length: int) -> torch.Tensor:
    out = torch.zeros((len(samples), length))
    for row, s in enumerate(samples):
        assert s.old_logp is not None, "score_old_logprobs must run before the update"
        out[row, :len(s.old_logp)] = s.old_logp
    return out


def loss_tokens(sample: Sample, config: RLConfig) -> int:
    """The terms a rollout adds to the token-level mean: its generated tokens that carry loss
    (when the decoder trains) and its type read, one action (when the reader trains)."""
    return (sample.tokens if config.trains_decoder else 0) + \
        (1 if config.trains_reader and sample.read is not None else 0)


def policy_loss(policy: VLM, samples: Sequence[Sample], total_tokens: int, config: RLConfig,
                times: Sequence[int] | None = None) -> tuple[torch.Tensor, float]:
    """The GRPO loss of a micro-batch, already divided by the step's token count, and the number
    of its (weighted) terms whose ratio was clipped. Only tokens the chunks mark with loss
    (generated assistant text) enter, and, when the reader trains, each rollout's type read as
    one more term; a row's terms count `times[row]` times (the replay drew its group that often)."""
    counts = torch.tensor(times or [1] * len(samples), dtype=torch.float32)  # (B,)
    advantages = torch.tensor([s.advantage for s in samples])  # (B,)
    objective, clipped = torch.zeros(()), 0.0
    eps = config.eps_low, config.eps_high
    if config.trains_decoder:
        logp, mask = prefix.logprobs(policy, [s.chunk for s in samples], [s.maps for s in samples],
                                     [s.group for s in samples], config.temperature)  # (B, L)
        old = _padded(samples, logp.shape[1])
        weight = mask * counts[:, None]  # (B, L)
        objective = objective + clipped_objective(logp, old, advantages, weight, *eps)
        clipped += clip_fraction(logp.detach(), old, weight, *eps) * float(weight.sum())
    reads = [(k, s.read) for k, s in enumerate(samples) if s.read is not None] if config.trains_reader else []
    if reads:
        rows = [k for k, _ in reads]
        features = torch.stack([r.features for _, r in reads])  # (R, 2C)
        index = torch.tensor([r.index for _, r in reads])
        logp = type_log_softmax(policy, features, config.temperature).gather(1, index[:, None])  # (R, 1)
        old = torch.tensor([[r.old_logp] for _, r in reads])  # (R, 1)
        weight = counts[rows][:, None]  # (R, 1)
        objective = objective + clipped_objective(logp, old, advantages[rows], weight, *eps)
        clipped += clip_fraction(logp.detach(), old, weight, *eps) * float(weight.sum())
    return objective / max(1, total_tokens), clipped


def informative(samples: Sequence[Sample]) -> list[Sample]:
    """The samples of groups whose rewards differ: the only ones the update reads."""
    rewards: dict[int, list[float]] = {}
    for s in samples:
        rewards.setdefault(s.group, []).append(s.reward.total)
    return [s for s in samples if not is_uniform(rewards[s.group])]


def update(policy: VLM, optimizer: torch.optim.Optimizer, samples: Sequence[Sample], config: RLConfig,
           rng: random.Random) -> rl_log.StepStats:
    """One optimizer step on one rollout step: drop uniform groups, refill, GRPO advantages,
    the clipped objective as a token-level mean over the whole refilled batch. A group the
    refill drew k times runs once with its terms counted k times (the same sum, 1/k the passes)."""
    by_group: dict[int, list[Sample]] = {}
    for s in samples:
        by_group.setdefault(s.group, []).append(s)
    groups = list(by_group.values())
    kept, uniform = replay(groups, [[s.reward.total for s in g] for g in groups], len(groups), rng)
    stats = rl_log.StepStats(groups=len(groups), uniform=round(uniform * len(groups)))
    if not kept:
        return stats
    times = Counter(g[0].group for g in kept)
    distinct = list({g[0].group: g for g in kept}.values())
    for group in distinct:
        adv = group_advantages(torch.tensor([s.reward.total for s in group], dtype=torch.float64))
        for s, a in zip(group, adv.tolist(), strict=True):
            s.advantage = a
    # a group's rollouts side by side, so a micro-batch runs their shared prompt once
    flat = [s for g in distinct for s in sorted(g, key=lambda s: len(s.chunk))]
    total_tokens = sum(loss_tokens(s, config) * times[s.group] for s in flat)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, clipped = 0.0, 0.0
    for start in range(0, len(flat), config.micro_batch):
        part = flat[start:start + config.micro_batch]
        loss, outside = policy_loss(policy, part, total_tokens, config, [times[s.group] for s in part])
        if loss.requires_grad:  # a micro-batch of reader-only training without a read has no term
            loss.backward()  # type: ignore[no-untyped-call]
        loss_sum += float(loss.detach())
        clipped += outside
    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    policy.model.train(False)
    stats.updated, stats.loss, stats.clip_fraction = True, loss_sum, clipped / max(1, total_tokens)
    return stats


def make_optimizer(policy: VLM, config: RLConfig) -> torch.optim.Optimizer:
    """AdamW over what `config.train` names: the merger and decoder at `lr`, and the tower's type
    reader at its own settings (added as a copy of the view head's classifier when the model has
    none, before the rollout policy is copied from it)."""
    if config.train not in ("decoder", "reader", "both"):
        raise ValueError(f"train must be 'decoder', 'reader' or 'both', not {config.train!r}")
    if config.greedy_decoder and config.trains_decoder:
        raise ValueError("a greedy decoder has no sampled tokens to train: use it with train 'reader'")
    groups: list[dict[str, Any]] = []
    if config.trains_decoder:
        groups.append({"params": trainable(policy), "lr": config.lr, "weight_decay": 0.0})
    if config.trains_reader:
        tower = policy.model.model.visual
        if not isinstance(tower, ConvVisionTower) or tower.head is None:
            raise ValueError(f"{config.model}: training the type reader needs a compact tower with a "
                             "cell head")
        reader = tower.enable_reader()
        reader.requires_grad_(True)
        groups.append({"params": list(reader.parameters()), "lr": config.reader_lr,
                       "weight_decay": config.reader_weight_decay})
    return torch.optim.AdamW(groups, betas=(0.9, 0.99))


# -- state --------------------------------------------------------------------------------------
def save_state(path: Path, policy: VLM, rollout: RolloutPolicy, optimizer: torch.optim.Optimizer,
               episode: int, queries_seen: int, rng: random.Random, config: RLConfig) -> None:
    tmp = path.with_suffix(".tmp")
    stale = rollout.refreshed_at != queries_seen  # the copy differs from the policy: keep it too
    torch.save({"model": policy.model.state_dict(), "optimizer": optimizer.state_dict(), "episode": episode,
                "queries_seen": queries_seen, "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                "rollout": rollout.vlm.model.state_dict() if stale else None,
                "refreshed_at": rollout.refreshed_at, "config": config.resolved()}, tmp)
    tmp.replace(path)


def restore(path: Path, policy: VLM, optimizer: torch.optim.Optimizer, rng: random.Random
             ) -> tuple[RolloutPolicy, int, int]:
    state = torch.load(path, weights_only=False)
    policy.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    rollout = RolloutPolicy(policy)
    if state["rollout"] is not None:
        rollout.vlm.model.load_state_dict(state["rollout"])
    rollout.refreshed_at = int(state["refreshed_at"])
    return rollout, int(state["episode"]), int(state["queries_seen"])


# -- eval and save ------------------------------------------------------------------------------
def dev_metrics(policy: VLM, config: RLConfig) -> dict[str, float | None]:
    """The greedy loop on the first dev items: the FovealBench figures RL should move."""
    assert config.dev is not None
    metrics, _ = evaluate_model(policy, config.dev, limit=config.dev_items, batch_size=8,
                                options=LoopOptions(look_first=config.look_first))
    o = metrics.overall
    return {"overall_accuracy": o.overall_accuracy, "type_accuracy": o.type_accuracy, "rapr": o.rapr,
            "false_reject_at_escape": o.false_reject_at_escape, "image_f1": o.image_f1}


def _write_logs(config: RLConfig) -> None:
    """The resolved config and the curves next to `metrics.jsonl`; all three copied to `log_dir`."""
    (config.out / "rl_config.json").write_text(json.dumps(config.resolved(), indent=1) + "\n")
    rows = rl_log.read(config.out / "metrics.jsonl")
    if rows:
        rl_log.plot(rows, config.out / "rl_curves.png", config.run_name, config.rewards.rapr_target)
    if config.log_dir is not None:
        config.log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("rl_config.json", "metrics.jsonl", "rl_curves.png"):
            if (config.out / name).is_file():
                shutil.copyfile(config.out / name, config.log_dir / name)


def save_model(policy: VLM, config: RLConfig) -> None:
    policy.version = config.version or f"{policy.version}-rl"
    loader.save(policy, config.out, meta={"trained_by": "foveal train rl", "rl": config.resolved()})


# -- the run ------------------------------------------------------------------------------------
@dataclass
class EpisodeState:
    """What the steps of an episode add up to, for its log line."""

    samples: list[Sample] = field(default_factory=list)
    steps: list[rl_log.StepStats] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))


def run_episode(policy: VLM, rollout: RolloutPolicy, optimizer: torch.optim.Optimizer, episode: int,
                queries: Sequence[Query], queries_seen: int, config: RLConfig, rng: random.Random,
                progress: Progress) -> tuple[EpisodeState, int]:
    """Rollouts and updates of one episode, step by step; the state and the queries seen after it."""
    options = LoopOptions(max_operations=config.max_operations, max_turn_tokens=config.max_turn_tokens,
                          max_turns=config.max_turns, temperature=config.temperature,
                          look_first=config.look_first, sample_type=config.trains_reader)
    picked = episode_queries(queries, config.queries_per_episode, episode, config.seed)
    state = EpisodeState()
    for n, start in enumerate(range(0, len(picked), config.queries_per_step)):
        batch = picked[start:start + config.queries_per_step]
        # rollouts, from the frozen copy
        clock = time.perf_counter()
        seed = config.seed * 1_000_003 + episode * 10_007 + n
        sampler = roll_out_types if config.greedy_decoder else roll_out
        step = sampler(rollout, batch, config.group_size, replace(options, seed=seed), config.rewards,
                       config.rollout_batch)
        looped = time.perf_counter()
        if config.trains_decoder:  # a reader's read carries its old log-probability already
            score_old_logprobs(rollout, informative(step), config.temperature, config.micro_batch)
        state.seconds["old_logp"] += time.perf_counter() - looped
        state.seconds["rollout"] += time.perf_counter() - clock
        # update
        clock = time.perf_counter()
        state.steps.append(update(policy, optimizer, step, config, rng))
        state.seconds["update"] += time.perf_counter() - clock
        for s in step:  # the log keeps the scores (and type reads); conversations, maps and log-probs go
            s.chunk, s.maps, s.old_logp = Chunk(), None, None
        state.samples += step
        queries_seen += len(batch)
        if queries_seen - rollout.refreshed_at >= config.refresh_every:  # near-policy again
            rollout.refresh(policy, queries_seen)
        progress(f"episode {episode + 1}/{config.episodes}", start + len(batch), len(picked))
    return state, queries_seen


def run(config: RLConfig, progress: Progress = _noop, resume: bool = True) -> list[dict[str, Any]]:
    """Train from `config.model`; returns the episodes' log rows (also `<out>/metrics.jsonl`)."""
    # init
    work = config.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    policy = loader.load(config.model, tower_precision="float32")
    queries: list[Query] = queries_from(config.data, config.max_items, config.kind)
    optimizer = make_optimizer(policy, config)
    rng = random.Random(config.seed)
    metrics_file = config.out / "metrics.jsonl"
    if resume and (work / STATE).is_file():
        rollout, first, queries_seen = restore(work / STATE, policy, optimizer, rng)
        rows = rl_log.read(metrics_file)[:first]  # drop lines of an episode that never checkpointed
        metrics_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        rollout, first, queries_seen = RolloutPolicy(policy), 0, 0
        metrics_file.write_text("")
    _write_logs(config)
    for episode in range(first, config.episodes):
        # rollouts and updates
        state, queries_seen = run_episode(policy, rollout, optimizer, episode, queries, queries_seen, config,
                                          rng, progress)
        # eval and log
        done = episode + 1
        lr = config.lr if config.trains_decoder else config.reader_lr  # the rate of what trains
        log = rl_log.summarize(done, state.samples, state.steps, state.seconds, lr, queries_seen)
        if config.dev is not None and (done % config.eval_every == 0 or done == config.episodes):
            log.dev = dev_metrics(policy, config)
        rl_log.append(metrics_file, log)
        # checkpoint
        save_state(work / STATE, policy, rollout, optimizer, done, queries_seen, rng, config)
        _write_logs(config)
    # save
    save_model(policy, config)
    return rl_log.read(metrics_file)

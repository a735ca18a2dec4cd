"""Rollouts of `foveal train rl`: queries from labelled datasets, the frozen rollout policy, and
the reasoning loop run in sampling mode, G times per query, into scored samples.

A `Query` is one labelled item (FovealBench-style generated data or imported plant data: the same
dataset format) with its inspection. The rollout policy is a frozen copy of the policy that
`RolloutPolicy.refresh` overwrites every `refresh_every` queries, so rollouts come from a
slightly stale, near-policy model and the update's ratio is taken against it. Each rollout's
conversation keeps its tokens and loss marks (generated assistant tokens only); its images are
replaced by the frozen backbone's feature maps at once (a 448 px view is 5 MB of patches, its
maps a few dozen kB), and its log-probabilities under the rollout policy are computed by the same
teacher-forced pass the update uses, so a fresh copy gives a ratio of exactly 1.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from foveal.domain import DEFECT_TYPES
from foveal.evaluation.bench import inspection_of
from foveal.evaluation.metrics import correct_type, difficulty_key
from foveal.model.chat import Chunk
from foveal.model.loader import VLM
from foveal.model.vision import ConvVisionTower
from foveal.plant.dataset import Label, read_labels
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace
from foveal.training import prefix
from foveal.training.rewards import Outcome, Reward, RewardConfig, group_rewards


@dataclass(frozen=True)
class Query:
    """One labelled item to roll out; `folder` is the dataset it comes from."""

    label: Label
    folder: Path

    @property
    def truth(self) -> str:
        return self.label.defect_type

    @property
    def difficulty(self) -> str:
        return difficulty_key(self.label)

    def inspection(self) -> Inspection:
        return inspection_of(self.label, self.folder, True)


@dataclass
class TypeRead:
    """A grounded answer's type as an action (`LoopOptions.sample_type`): what the type reader read
    it from, the type drawn (index among the defect types, `none` excluded) and its
    log-probability under the rollout policy at the sampling temperature."""

    features: torch.Tensor  # (2C,)
    index: int
    old_logp: float


@dataclass
class Sample:
    """One rollout, scored, ready for the update."""

    query_id: str
    group: int  # index of its query within the step
    chunk: Chunk  # tokens, types, loss marks; no pixels once `maps` are set
    maps: list[torch.Tensor] | None  # per image backbone maps (None: the tower runs on patches)
    outcome: Outcome
    reward: Reward
    difficulty: str
    correct: bool  # the eval judgement of the answer alone (the accuracy the log reports)
    old_logp: torch.Tensor | None = None  # (L,) under the rollout policy, at the loss tokens
    advantage: float = 0.0
    tokens: int = field(default=0)  # tokens that carry loss
    read: TypeRead | None = None  # the type the reader drew, when the rollouts sample it


def queries_from(folders: Sequence[Path], limit: int | None = None, kind: str | None = None) -> list[Query]:
    """Every labelled item of every folder (the first `limit` of each when given); `kind` ("image"
    or "sequence") keeps only those items, after the limit."""
    if kind not in (None, "image", "sequence"):
        raise ValueError(f"kind must be 'image' or 'sequence', not {kind!r}")
    out: list[Query] = []
    for folder in folders:
        out += [Query(label, folder) for label in read_labels(folder)[:limit]
                if kind is None or (label.frames is None) == (kind == "image")]
    if kind is not None and not out:
        raise ValueError(f"no {kind} items in {', '.join(map(str, folders))}")
    return out


def episode_queries(queries: Sequence[Query], n: int, episode: int, seed: int) -> list[Query]:
    """`n` queries for an episode: a fresh permutation per epoch over the pool, deterministic in
    (seed, episode) so a resumed run sees the same ones."""
    order: list[Query] = []
    epoch = (episode * n) // max(1, len(queries))
    offset = (episode * n) % max(1, len(queries))
    while len(order) < offset + n:
        pool = list(queries)
        random.Random(seed * 7919 + epoch).shuffle(pool)
        order += pool
        epoch += 1
    return order[offset:offset + n]


class RolloutPolicy:
    """A frozen copy of the policy: rollouts and the ratio's denominator come from it."""

    def __init__(self, policy: VLM) -> None:
        self.vlm = replace(policy, model=copy.deepcopy(policy.model))
        self.vlm.model.train(False)
        for p in self.vlm.model.parameters():
            p.requires_grad_(False)
        self.refreshed_at = 0  # queries seen by the policy when the copy was taken

    def refresh(self, policy: VLM, queries_seen: int) -> None:
        self.vlm.model.load_state_dict(policy.model.state_dict())
        self.refreshed_at = queries_seen


def outcome_of(trace: Trace, truth: str) -> Outcome:
    ok = tuple(bool(s.ok) for s in trace.steps if s.ok is not None)  # `ok` is set on executed ones only
    return Outcome(trace.defect_type, truth, ok)


MapMemo = dict[int, tuple[npt.NDArray[np.float32], torch.Tensor]]  # id(patches) -> (the patches, their maps)


@torch.no_grad()
def backbone_maps(vlm: VLM, chunk: Chunk, memo: MapMemo | None = None
                  ) -> tuple[Chunk, list[torch.Tensor] | None]:
    """The chunk without pixels and its backbone maps (a convolutional tower), or as it is.
    Images already in `memo` (the same patches object: a query's prompt, shared by its rollouts)
    are not computed again; the same maps tensor is handed out."""
    tower = vlm.model.model.visual
    if not isinstance(tower, ConvVisionTower):
        return chunk, None
    memo = {} if memo is None else memo
    todo = [i for i, p in enumerate(chunk.patches) if memo.get(id(p), (None,))[0] is not p]
    if todo:
        pixels = torch.from_numpy(np.concatenate([chunk.patches[i] for i in todo]))
        grids = torch.tensor([chunk.grids[i] for i in todo])
        for i, fmap in zip(todo, tower.feature_maps(tower.images(pixels, grids)), strict=True):
            memo[id(chunk.patches[i])] = chunk.patches[i], fmap.half()
    maps = [memo[id(p)][1] for p in chunk.patches]
    return Chunk(chunk.ids, chunk.types, chunk.loss, [], chunk.grids), maps


def roll_out(rollout: RolloutPolicy, queries: Sequence[Query], group_size: int, options: LoopOptions,
             rewards: RewardConfig, batch_size: int = 32) -> list[Sample]:
    """`group_size` sampled rollouts of each query, scored with the group's reward. The loop's
    options must sample (temperature > 0); the seed in them makes the step reproducible."""
    if options.temperature <= 0:
        raise ValueError("rollouts need a sampling temperature > 0")
    loop = Loop(rollout.vlm, options)
    copies = []
    for query in queries:  # a query's rollouts run side by side (and with other queries')
        inspection = query.inspection()
        copies += [replace(inspection, item_id=f"{query.label.id}#{k}") for k in range(group_size)]
    traces = loop.run_batched(copies, batch_size=batch_size)
    samples: list[Sample] = []
    memo: MapMemo = {}
    for g, query in enumerate(queries):
        group = traces[g * group_size:(g + 1) * group_size]
        outcomes = [outcome_of(t, query.truth) for t in group]
        for trace, outcome, reward in zip(group, outcomes, group_rewards(outcomes, rewards), strict=True):
            chunk, maps = backbone_maps(rollout.vlm, trace.conversation, memo)
            read = type_read(rollout.vlm, trace, options.temperature) if options.sample_type else None
            samples.append(Sample(query.label.id, g, chunk, maps, outcome, reward, query.difficulty,
                                  correct_type(trace.defect_type, query.truth), tokens=sum(chunk.loss[1:]),
                                  read=read))
    return samples


def roll_out_types(rollout: RolloutPolicy, queries: Sequence[Query], group_size: int, options: LoopOptions,
                   rewards: RewardConfig, batch_size: int = 32) -> list[Sample]:
    """`group_size` rollouts of each query whose only sampled action is the answer's type (the
    decoder greedy, as inspection runs it; `RLConfig.greedy_decoder`). Every rollout of a query
    then runs the same turns, so the greedy loop runs once per query and its rollouts are
    `group_size` types drawn from the rollout policy's type reader on what that run read, at
    `options.temperature`. An answer the decoder gave without a read (`none`) makes `group_size`
    equal rollouts: a uniform group, which the update drops. The seed in `options` makes the
    draws reproducible."""
    if options.temperature <= 0:
        raise ValueError("rollouts need a sampling temperature > 0")
    loop = Loop(rollout.vlm, replace(options, temperature=0.0, sample_type=False))
    traces = loop.run_batched([query.inspection() for query in queries], batch_size=batch_size)
    generator = torch.Generator().manual_seed(options.seed or 0)
    samples: list[Sample] = []
    for g, (query, trace) in enumerate(zip(queries, traces, strict=True)):
        base = outcome_of(trace, query.truth)
        reads: list[TypeRead | None] = [None] * group_size
        if trace.answer_features is not None and trace.defect_type in DEFECT_TYPES[1:]:
            features = torch.from_numpy(trace.answer_features).float()
            logp = type_log_softmax(rollout.vlm, features[None], options.temperature)[0]
            drawn = torch.multinomial(logp.exp(), group_size, replacement=True, generator=generator)
            reads = [TypeRead(features, int(i), float(logp[i])) for i in drawn.tolist()]
        outcomes = [base if read is None else replace(base, answer=DEFECT_TYPES[1 + read.index])
                    for read in reads]
        for outcome, reward, read in zip(outcomes, group_rewards(outcomes, rewards), reads, strict=True):
            samples.append(Sample(query.label.id, g, Chunk(), None, outcome, reward, query.difficulty,
                                  correct_type(outcome.answer, query.truth), read=read))
    return samples


def type_log_softmax(vlm: VLM, features: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, types) log-probabilities of the defect types (`none` excluded) the tower's type reader
    gives pooled features (N, 2C) at the sampling temperature: the distribution a sampled read
    draws from (`CellPointer._type_of`)."""
    tower = vlm.model.model.visual
    logits = tower.type_logits(features.to(tower.dtype)).float()[:, 1:len(DEFECT_TYPES)]
    return torch.log_softmax(logits / temperature, dim=-1)


@torch.no_grad()
def type_read(vlm: VLM, trace: Trace, temperature: float) -> TypeRead | None:
    """The rollout's type read as an action, when its answer's type was read (and drawn) by the
    tower; None when the decoder answered `none` or wrote the type itself."""
    if trace.answer_features is None or trace.defect_type not in DEFECT_TYPES[1:]:
        return None
    features = torch.from_numpy(trace.answer_features).float()
    index = DEFECT_TYPES.index(trace.defect_type) - 1
    logp = type_log_softmax(vlm, features[None], temperature)[0, index]
    return TypeRead(features, index, float(logp))


@torch.no_grad()
def score_old_logprobs(rollout: RolloutPolicy, samples: Sequence[Sample], temperature: float,
                       batch_size: int = 8) -> None:
    """Each sample's per-token log-probabilities under the rollout policy (the ratio's base)."""
    vlm = rollout.vlm
    # a group's rollouts side by side, so a batch runs their shared prompt once
    order = sorted(range(len(samples)), key=lambda i: (samples[i].group, len(samples[i].chunk)))
    for start in range(0, len(order), batch_size):
        part = [samples[i] for i in order[start:start + batch_size]]
        logp, _ = prefix.logprobs(vlm, [s.chunk for s in part], [s.maps for s in part],
                                  [s.group for s in part], temperature)  # (B, L)
        for row, s in enumerate(part):
            s.old_logp = logp[row, :len(s.chunk)].clone()

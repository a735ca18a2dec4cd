"""`foveal train rl` on micro configs (seconds on a CPU): one GRPO step changes the trainable
parameters and nothing else, only generated assistant tokens carry gradient (never the prompt or
the tool output), rollouts come from the loop in sampling mode with their group's reward, and a
run resumes from its checkpoint to the same place as a run that never stopped."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from foveal.domain import DEFECT_TYPES
from foveal.model import loader
from foveal.model.chat import IMAGE
from foveal.model.loader import VLM, create
from foveal.plant.dataset import Label
from foveal.plant.generate import generate
from foveal.reasoning.loop import Inspection, Loop, LoopOptions
from foveal.reasoning.prompts import inspection_prompt
from foveal.training.examples import materialize, with_maps
from foveal.training.forward import collate, token_logits
from foveal.training.grpo import clipped_objective, logprobs_of, target_logprobs
from foveal.training.rewards import Outcome, Reward, RewardConfig, group_rewards
from foveal.training.rl import RLConfig, make_optimizer, restore, run, update
from foveal.training.rollouts import (
    Query,
    RolloutPolicy,
    Sample,
    TypeRead,
    backbone_maps,
    queries_from,
    roll_out,
    roll_out_types,
    score_old_logprobs,
    type_log_softmax,
)
from foveal.training.sft import example_loss, trainable
from foveal.training.trajectories import AssistantTurn, Trajectory, tool_call
from tests.reasoning.protocol_model import SCRIPTS, frames_for

CROP = tool_call("crop_image_normalized", {"bbox_2d": [0.2, 0.2, 0.4, 0.4], "target_image": 1})
TINY = dict(queries_per_episode=1, queries_per_step=1, group_size=4, refresh_every=2, max_turn_tokens=8,
            max_turns=2, micro_batch=4, lr=1e-3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plant") / "data"
    generate(out, 3, seed=5, workers=1, size=256, progress=False)
    return out


@pytest.fixture(scope="module")
def coin_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data set's scratched item, as a dataset of its own."""
    out = tmp_path_factory.mktemp("plant") / "one"
    out.mkdir()
    line = next(raw for raw in (tiny_data / "labels.jsonl").read_text().splitlines() if '"scratch"' in raw)
    (out / "labels.jsonl").write_text(line + "\n")
    for sub in ("images", "masks"):
        (out / sub).symlink_to(tiny_data / sub)
    return out


@pytest.fixture(scope="module")
def coin_dir(micro_tokenizer, coin_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A micro model taught for a few steps to answer the item at once: sampled, it is right some
    of the time and writes garbage otherwise, so its groups are mixed and RL steps really update."""
    vlm = create(micro_tokenizer, "micro", seed=2)
    query = queries_from([coin_data])[0]
    inspection = query.inspection()
    turn = AssistantTurn(f"\\boxed{{{query.truth}}}", True)
    trajectory = Trajectory("coin", inspection.prompt, (turn,), query.truth, "direct")
    chunk = materialize(trajectory, inspection.frames, vlm.chat, vlm.budget)
    examples = [with_maps(chunk, vlm.model.model.visual, "coin", "direct")]
    optimizer = torch.optim.AdamW(trainable(vlm), lr=1e-2)
    vlm.model.train()
    for _ in range(8):
        loss = example_loss(vlm, examples)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    out = tmp_path_factory.mktemp("sft") / "coin"
    vlm.model.train(False)
    loader.save(vlm, out)
    return out


def scripted(vlm: VLM, texts: list[str], group: int, total: float) -> Sample:
    """A rollout as the loop records it: prompt, assistant turns, the crop's tool output."""
    frames = [np.random.default_rng(0).integers(0, 256, (560, 700, 3), dtype=np.uint8)]
    trajectory = Trajectory("t", inspection_prompt(None, DEFECT_TYPES, 1),
                            tuple(AssistantTurn(t, True) for t in texts), "", "scripted")
    chunk, maps = backbone_maps(vlm, materialize(trajectory, frames, vlm.chat, vlm.budget))
    ops = (True,) * (len(texts) - 1)
    return Sample("t", group, chunk, maps, Outcome("scratch", "scratch", ops), Reward(total, 0, 0, total),
                  "easy", True, tokens=sum(chunk.loss[1:]))


def test_one_grpo_step_trains_the_policy_and_leaves_the_rollout_copy_and_backbone(micro_vlm: VLM) -> None:
    zoom, direct = [f"A mark. {CROP}", "\\boxed{scratch}"], ["\\boxed{none}"]
    samples = [scripted(micro_vlm, zoom, 0, 1.0), scripted(micro_vlm, direct, 0, 0.0),
               scripted(micro_vlm, zoom, 1, 0.5), scripted(micro_vlm, direct, 1, 0.5)]  # group 1 uniform
    rollout = RolloutPolicy(micro_vlm)
    score_old_logprobs(rollout, samples, temperature=1.0)
    optimizer = torch.optim.AdamW(trainable(micro_vlm), lr=1e-3)
    before = {n: p.detach().clone() for n, p in micro_vlm.model.named_parameters()}
    stats = update(micro_vlm, optimizer, samples, RLConfig(Path("m"), [], Path("o")), random.Random(0))
    assert stats.updated and stats.groups == 2 and stats.uniform == 1
    assert stats.clip_fraction == 0.0  # a fresh copy: every ratio is 1
    assert [s.advantage for s in samples[:2]] == [0.5, -0.5]
    trained = {id(p) for p in trainable(micro_vlm)}
    changed = {n for n, p in micro_vlm.model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in micro_vlm.model.named_parameters() if id(p) not in trained}
    assert changed and not changed & frozen and frozen  # the stage-0 backbone stays as it was
    for name, p in rollout.vlm.model.named_parameters():
        assert torch.equal(p, before[name])
    rollout.refresh(micro_vlm, 1)
    assert all(torch.equal(p, q) for p, q in zip(rollout.vlm.model.parameters(), micro_vlm.model.parameters(),
                                                 strict=True))


def test_a_reader_step_trains_only_the_type_reader_toward_the_rewarded_read(micro_vlm: VLM) -> None:
    config = RLConfig(Path("m"), [], Path("o"), train="reader", reader_lr=1e-2)
    tower = micro_vlm.model.model.visual
    assert tower.reader is None
    optimizer = make_optimizer(micro_vlm, config)  # adds the reader: a copy of the view head's classifier
    assert tower.reader is not None and torch.equal(tower.reader.weight, tower.head.view.weight)
    rollout = RolloutPolicy(micro_vlm)
    features = torch.randn(2 * tower.feature_dim, generator=torch.Generator().manual_seed(0))
    old = type_log_softmax(rollout.vlm, features[None], config.temperature)[0]
    zoom = [f"A mark. {CROP}", "\\boxed{scratch}"]
    samples = [scripted(micro_vlm, zoom, 0, 1.0), scripted(micro_vlm, zoom, 0, 0.0)]
    samples[0].read = TypeRead(features, 2, float(old[2]))
    samples[1].read = TypeRead(features, 4, float(old[4]))
    before = {n: p.detach().clone() for n, p in micro_vlm.model.named_parameters()}
    stats = update(micro_vlm, optimizer, samples, config, random.Random(0))  # no decoder log-probs needed
    assert stats.updated and stats.clip_fraction == 0.0
    changed = {n for n, p in micro_vlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.visual.reader.weight", "model.visual.reader.bias"}
    after = type_log_softmax(micro_vlm, features[None], config.temperature)[0]
    assert after[2] > old[2] and after[4] < old[4]  # toward the read that earned the reward
    with pytest.raises(ValueError, match="train must be"):
        make_optimizer(micro_vlm, RLConfig(Path("m"), [], Path("o"), train="head"))


def test_a_step_training_both_moves_the_decoder_and_the_reader(micro_vlm: VLM) -> None:
    config = RLConfig(Path("m"), [], Path("o"), train="both")
    optimizer = make_optimizer(micro_vlm, config)
    rollout = RolloutPolicy(micro_vlm)
    zoom, direct = [f"A mark. {CROP}", "\\boxed{scratch}"], ["\\boxed{none}"]
    samples = [scripted(micro_vlm, zoom, 0, 1.0), scripted(micro_vlm, direct, 0, 0.0)]
    features = torch.randn(2 * micro_vlm.model.model.visual.feature_dim)
    samples[0].read = TypeRead(features, 1, float(type_log_softmax(rollout.vlm, features[None], 1.0)[0, 1]))
    score_old_logprobs(rollout, samples, temperature=1.0)
    before = {n: p.detach().clone() for n, p in micro_vlm.model.named_parameters()}
    assert update(micro_vlm, optimizer, samples, config, random.Random(0)).updated
    changed = {n for n, p in micro_vlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert {"model.visual.reader.weight"} < changed
    assert any(n.startswith("model.language_model") for n in changed)
    assert not any(".head." in n or ".stem." in n for n in changed)  # stage 0 stays frozen


def test_a_group_the_replay_draws_twice_counts_twice_in_one_pass(micro_vlm: VLM) -> None:
    zoom, direct = [f"A mark. {CROP}", "\\boxed{scratch}"], ["\\boxed{none}"]
    samples = [scripted(micro_vlm, zoom, 0, 1.0), scripted(micro_vlm, direct, 0, 0.0),
               scripted(micro_vlm, zoom, 1, 0.5), scripted(micro_vlm, direct, 1, 0.5)]  # group 0 refills
    score_old_logprobs(RolloutPolicy(micro_vlm), samples, temperature=1.0)
    reference = replace(micro_vlm, model=copy.deepcopy(micro_vlm.model))
    before = {n: p.detach().clone() for n, p in micro_vlm.model.named_parameters()}
    optimizer = torch.optim.SGD(trainable(micro_vlm), lr=1.0)  # the step is the gradient itself
    stats = update(micro_vlm, optimizer, samples, RLConfig(Path("m"), [], Path("o"), grad_clip=1e9),
                   random.Random(0))
    # the refilled batch as it reads: group 0 twice, every conversation run whole
    twice = samples[:2] * 2
    batch = collate([s.chunk for s in twice], micro_vlm.chat.pad, micro_vlm.chat.spec)
    reference.model.train()
    logp, mask = target_logprobs(reference, batch, [m for s in twice for m in s.maps or []])
    old = torch.zeros(logp.shape)
    for row, s in enumerate(twice):
        assert s.old_logp is not None
        old[row, :len(s.old_logp)] = s.old_logp
    loss = clipped_objective(logp, old, torch.tensor([s.advantage for s in twice]), mask)
    loss = loss / sum(s.tokens for s in twice)
    loss.backward()  # type: ignore[no-untyped-call]
    assert stats.updated and stats.loss == pytest.approx(float(loss.detach()), rel=1e-4, abs=1e-7)
    trained = {id(p) for p in trainable(micro_vlm)}
    moved = 0
    for (name, p), q in zip(micro_vlm.model.named_parameters(), reference.model.parameters(), strict=True):
        if id(p) in trained:
            assert q.grad is not None
            torch.testing.assert_close(before[name] - p.detach(), q.grad, rtol=1e-3, atol=1e-6)
            moved += int(bool(q.grad.abs().sum() > 0))
    assert moved > 0


def test_prompt_and_tool_output_tokens_get_no_gradient(micro_vlm: VLM) -> None:
    sample = scripted(micro_vlm, [f"A mark. {CROP}", "\\boxed{scratch}"], 0, 1.0)
    chunk = sample.chunk
    assert chunk.types.count(IMAGE) > 0 and len(chunk.grids) == 2  # the frame and the crop
    text = [micro_vlm.tokenizer.decode(chunk.ids[:i]) for i in range(len(chunk) + 1)]
    at = next(i for i, t in enumerate(text) if "Here is the cropped image" in t) - 1  # tool output
    crop = [i for i, t in enumerate(chunk.types) if t == IMAGE and i > at]
    assert crop and not any(chunk.loss[at:crop[-1] + 1])
    batch = collate([chunk], micro_vlm.chat.pad, micro_vlm.chat.spec)
    logits = token_logits(micro_vlm, batch, sample.maps)
    logits.retain_grad()
    logp, mask = logprobs_of(logits, batch)
    clipped_objective(logp, logp.detach() - 0.1, torch.tensor([1.0]), mask).backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    grad = logits.grad[0].abs().sum(-1)  # (L,): position i predicts token i + 1
    no_loss = [i for i in range(len(chunk) - 1) if not chunk.loss[i + 1]]
    with_loss = [i for i in range(len(chunk) - 1) if chunk.loss[i + 1]]
    assert float(grad[no_loss].sum()) == 0.0
    assert all(float(grad[i]) > 0 for i in with_loss)
    assert at - 1 in no_loss and chunk.types.index(IMAGE) - 1 in no_loss  # tool text and image slots
    assert all(chunk.types[i + 1] != IMAGE for i in with_loss)


def test_rollouts_sample_groups_from_the_loop_with_their_reward(micro_vlm: VLM, tiny_data: Path) -> None:
    queries = queries_from([tiny_data])[:2]
    rollout = RolloutPolicy(micro_vlm)
    options = LoopOptions(max_turn_tokens=6, max_turns=2, temperature=1.0, seed=3)
    samples = roll_out(rollout, queries, 3, options, RewardConfig())
    assert [s.group for s in samples] == [0, 0, 0, 1, 1, 1]
    assert [s.query_id for s in samples] == [q.label.id for q in queries for _ in range(3)]
    for g, query in enumerate(queries):
        group = [s for s in samples if s.group == g]
        assert [s.reward for s in group] == group_rewards([s.outcome for s in group], RewardConfig())
        assert all(s.outcome.truth == query.truth and s.difficulty == query.difficulty for s in group)
    for s in samples:
        assert s.maps is not None and not s.chunk.patches and s.tokens > 0
        assert all(t != IMAGE for t, loss in zip(s.chunk.types, s.chunk.loss, strict=True) if loss)
    again = roll_out(rollout, queries, 3, options, RewardConfig())  # the seed fixes the samples
    assert [s.chunk.ids for s in again] == [s.chunk.ids for s in samples]
    score_old_logprobs(rollout, samples, 1.0)
    for s in samples:
        assert s.old_logp is not None and s.old_logp.shape == (len(s.chunk),)
        assert float(s.old_logp.max()) <= 0.0 and float(s.old_logp.min()) < 0.0
    with pytest.raises(ValueError, match="temperature"):
        roll_out(rollout, queries, 2, replace(options, temperature=0.0), RewardConfig())


@dataclass(frozen=True)
class ZoomQuery(Query):
    """A query on the frame and prompt the taught micro model zooms into and answers `scratch`."""

    def inspection(self) -> Inspection:
        return Inspection(frames_for("zoom", 1), SCRIPTS["zoom"][0], item_id=self.label.id)


def test_with_a_greedy_decoder_a_querys_rollouts_are_types_drawn_from_one_run(taught_vlm: VLM) -> None:
    vlm = copy.deepcopy(taught_vlm)
    config = RLConfig(Path("m"), [], Path("o"), train="reader", greedy_decoder=True)
    make_optimizer(vlm, config)  # adds the reader; made uniform so that the draws vary
    reader = vlm.model.model.visual.reader
    with torch.no_grad():
        reader.weight.zero_()
        reader.bias.zero_()
    rollout = RolloutPolicy(vlm)
    queries = [ZoomQuery(Label(id=f"z{k}", image="z.png", product="p", defect_type=truth, width=700,
                               height=560, bbox=(0.2, 0.2, 0.4, 0.4)), Path("."))
               for k, truth in enumerate(["stain", "crack"])]
    options = LoopOptions(max_turn_tokens=48, pointer=True, temperature=1.0, seed=3)
    samples = roll_out_types(rollout, queries, 8, options, RewardConfig())
    greedy = Loop(rollout.vlm, replace(options, temperature=0.0)).run_batched(
        [q.inspection() for q in queries])
    assert [s.group for s in samples] == [0] * 8 + [1] * 8
    for g, query in enumerate(queries):
        group = [s for s in samples if s.group == g]
        assert greedy[g].answer_features is not None  # the run the draws come from read the type
        features = torch.from_numpy(greedy[g].answer_features).float()
        logp = type_log_softmax(vlm, features[None], 1.0)[0].detach()
        for s in group:
            assert s.read is not None and torch.equal(s.read.features, features)
            assert s.outcome.answer == DEFECT_TYPES[1 + s.read.index] and s.outcome.truth == query.truth
            assert s.outcome.operations_ok == (True,)  # the one run's zoom, shared by the group
            assert s.read.old_logp == pytest.approx(float(logp[s.read.index]))
            assert s.correct == (s.outcome.answer == query.truth) and not s.chunk.ids and s.tokens == 0
        assert [s.reward for s in group] == group_rewards([s.outcome for s in group], RewardConfig())
    assert len({s.outcome.answer for s in samples}) >= 3  # 16 draws of 6 equally likely types
    again = roll_out_types(rollout, queries, 8, options, RewardConfig())  # the seed fixes the draws
    assert [s.outcome.answer for s in again] == [s.outcome.answer for s in samples]
    # the decoder writing the type itself (no pointer): no read, so every group is uniform
    plain = roll_out_types(rollout, queries, 4, replace(options, pointer=False), RewardConfig())
    assert all(s.read is None for s in plain) and len({s.outcome.answer for s in plain}) == 1
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    optimizer = make_optimizer(vlm, config)
    stats = update(vlm, optimizer, samples, config, random.Random(0))
    assert stats.updated or stats.uniform == 2  # both groups may have drawn no right type
    changed = {n for n, p in vlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= {"model.visual.reader.weight", "model.visual.reader.bias"}
    with pytest.raises(ValueError, match="greedy decoder"):
        make_optimizer(vlm, RLConfig(Path("m"), [], Path("o"), train="both", greedy_decoder=True))


def _strip_timing(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k not in ("rollout_s", "update_s", "old_logp_s")} for r in rows]


def test_a_run_logs_saves_and_resumes_where_an_unbroken_run_would_be(coin_dir: Path, coin_data: Path,
                                                                     tmp_path: Path) -> None:
    straight = RLConfig(model=coin_dir, data=[coin_data], out=tmp_path / "straight", episodes=2, **TINY)
    rows = run(straight)
    broken = replace(straight, out=tmp_path / "broken", episodes=1, log_dir=tmp_path / "docs" / "run")
    run(broken)
    state = torch.load(broken.out / "work" / "state.pt", weights_only=False)
    assert state["episode"] == 1 and state["config"]["episodes"] == 1
    assert state["rollout"] is not None and state["refreshed_at"] == 0  # stale copy, due after query 2
    policy = loader.load(coin_dir)
    rollout, episode, seen = restore(broken.out / "work" / "state.pt", policy,
                                     torch.optim.AdamW(trainable(policy)), random.Random())
    start = loader.load(coin_dir).model.parameters()
    assert (episode, seen) == (1, 1) and rollout.refreshed_at == 0
    assert all(torch.equal(p, q) for p, q in zip(rollout.vlm.model.parameters(), start, strict=True))
    pairs = zip(policy.model.parameters(), rollout.vlm.model.parameters(), strict=True)
    assert not all(torch.equal(p, q) for p, q in pairs)  # episode 1 updated the policy
    resumed = run(replace(broken, episodes=2))
    assert _strip_timing(resumed) == _strip_timing(rows)
    a, b = loader.load(straight.out), loader.load(broken.out)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    keys = {"episode", "accuracy", "rapr", "op_error_rate", "uniform_share", "curiosity", "penalty",
            "rapr_by_difficulty", "rollout_s", "update_s"}
    assert [r["episode"] for r in rows] == [1, 2] and all(keys <= set(r) for r in rows)
    assert all(r["rollouts"] == 4 and 0 <= r["uniform_share"] <= 1 for r in rows)
    assert json.loads((straight.out / "rl_config.json").read_text())["group_size"] == 4
    assert (straight.out / "rl_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert a.meta["trained_by"] == "foveal train rl" and a.version.endswith("-rl")
    assert sum(int(r["updates"]) for r in rows) > 0  # mixed groups: the resumed run really trained
    copied = tmp_path / "docs" / "run" / "metrics.jsonl"
    assert copied.read_text() == (broken.out / "metrics.jsonl").read_text()


def test_the_command_line_trains_a_loadable_model(coin_dir: Path, coin_data: Path, tmp_path: Path) -> None:
    from foveal.cli import app

    out = tmp_path / "rl"
    result = CliRunner().invoke(app, ["train", "rl", "--model", str(coin_dir), "--data", str(coin_data),
                                      "--out", str(out), "--episodes", "1", "--queries-per-episode", "1",
                                      "--rollouts", "2", "--max-turn-tokens", "8", "--alpha", "0",
                                      "--H", "0.4", "--N", "2"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "rl_config.json").read_text())
    assert config["rewards"] == {"alpha": 0.0, "beta": 0.05, "rapr_target": 0.4, "n_free": 2}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert loader.load(out).meta["rl"]["group_size"] == 2


def test_queries_cover_every_folder(tiny_data: Path) -> None:
    queries = queries_from([tiny_data, tiny_data], limit=2)
    assert [q.folder for q in queries] == [tiny_data] * 4
    assert isinstance(queries[0], Query) and queries[0].inspection().frames


def test_a_run_can_roll_out_one_kind_of_query_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(data, 2, seed=5, sequences=1, workers=1, size=256, progress=False)
    images = queries_from([data], kind="image")
    sequences = queries_from([data], kind="sequence")
    assert len(images) == 2 and all(q.label.image for q in images)
    assert len(sequences) == 1 and sequences[0].label.frames
    assert sorted(q.label.id for q in images + sequences) == sorted(q.label.id for q in queries_from([data]))
    with pytest.raises(ValueError, match="kind must be"):
        queries_from([data], kind="video")
    with pytest.raises(ValueError, match="no sequence items"):
        queries_from([data], limit=2, kind="sequence")  # the limit comes first: two images
    assert RLConfig(model=tmp_path, data=[], out=tmp_path, kind="image").resolved()["kind"] == "image"


def test_rollouts_and_dev_evals_follow_the_runs_look_first_choice(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a look-first checkpoint writes the zoom with no loss, so a learning-trap run turns it off
    from foveal.training import rl

    seen: list[bool | None] = []

    def rollouts(rollout: object, queries: object, group: int, options: LoopOptions, *rest: object) -> None:
        seen.append(options.look_first)
        raise StopIteration

    def dev_eval(policy: object, folder: Path, **kwargs: object) -> None:
        seen.append(kwargs["options"].look_first)  # type: ignore[attr-defined]
        raise StopIteration

    monkeypatch.setattr(rl, "roll_out", rollouts)
    monkeypatch.setattr(rl, "evaluate_model", dev_eval)
    queries = queries_from([tiny_data])
    for choice in (False, None):
        config = RLConfig(model=tmp_path, data=[tiny_data], out=tmp_path, dev=tiny_data, look_first=choice)
        with pytest.raises(StopIteration):
            rl.run_episode(None, None, None, 0, queries, 0, config, random.Random(0), None)  # type: ignore[arg-type]
        with pytest.raises(StopIteration):
            rl.dev_metrics(None, config)  # type: ignore[arg-type]
    assert seen == [False, False, None, None]
    assert RLConfig(model=tmp_path, data=[], out=tmp_path, look_first=False).resolved()["look_first"] is False

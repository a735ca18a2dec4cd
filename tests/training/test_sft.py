"""Warm-start SFT on a micro config: the loss falls, tool output carries no loss, the saved model
loads and runs through eval and predict (seconds on a CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foveal.model import loader
from foveal.plant.generate import generate
from foveal.training.forward import collate, sft_loss, token_logits
from foveal.training.sft import SFTConfig, example_loss, run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plant") / "data"
    generate(out, 14, seed=5, sequences=2, workers=1, size=512, progress=False)
    return out


@pytest.fixture(scope="module")
def micro_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    config = SFTConfig(data=tiny_data, out=out, dev=tiny_data, preset="micro", dev_items=4, vocab_size=400,
                       pretrain_steps=4, pretrain_batch=4, steps=40, batch_size=4, lr=3e-3, warmup=5,
                       eval_every=20, checkpoint_every=20)
    run(config)
    return out


def test_sft_on_a_few_dozen_examples_lowers_the_loss(micro_model: Path) -> None:
    report = json.loads((micro_model / "train.json").read_text())
    losses = [loss for _, loss in report["train_loss"]]
    trajectories = sum(n for kind, n in report["kinds"].items() if kind != "caption")
    assert trajectories == 32 and report["kinds"]["caption"] > 0  # 16 items x 2 trajectories + captions
    assert report["examples"] == trajectories + report["kinds"]["caption"]
    assert report["dev_eval"] and all(0 <= acc <= 1 and 0 <= rapr <= 1 and 0 <= separation <= 1
                                      for _, acc, rapr, separation in report["dev_eval"])
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert (micro_model / "sft_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["look_threshold"] is not None and 0 < report["look_share"] <= 1  # looks from the cell head


def test_tool_output_and_masked_turns_carry_no_gradient(micro_model: Path) -> None:
    saved = torch.load(micro_model / "work" / "prepared.pt", weights_only=False)
    example = saved["train"][0]
    vlm = loader.load(micro_model)
    chunk = example.chunk
    batch = collate([chunk], vlm.chat.pad)
    # every target is an assistant token: no image placeholder, no environment text
    targeted = (batch.targets[0] != -100).nonzero().flatten().tolist()
    assert targeted and all(chunk.loss[i + 1] for i in targeted)
    logits = token_logits(vlm, batch, list(example.maps))
    logits.retain_grad()
    sft_loss(logits, batch.targets).backward()
    grad = logits.grad[0].abs().sum(-1)  # (L,)
    no_loss = [i for i in range(len(chunk) - 1) if not chunk.loss[i + 1]]
    assert float(grad[no_loss].sum()) == 0.0


def test_a_trained_model_resumes_from_its_checkpoint(micro_model: Path, tiny_data: Path) -> None:
    state = torch.load(micro_model / "work" / "state.pt", weights_only=False)
    assert state["step"] == 40
    vlm = loader.load(micro_model)
    saved = torch.load(micro_model / "work" / "prepared.pt", weights_only=False)
    with torch.no_grad():
        assert float(example_loss(vlm, saved["train"][:4])) < 10


def test_eval_and_predict_run_on_the_trained_model(micro_model: Path, tiny_data: Path,
                                                   tmp_path: Path) -> None:
    env_cmd = [sys.executable, "-m", "foveal"]
    subprocess.run([*env_cmd, "eval", "--bench", str(tiny_data), "--model", str(micro_model), "--out",
                    str(tmp_path / "eval"), "--limit", "6", "--compare-no-ops"],
                   check=True, capture_output=True)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 6
    assert (tmp_path / "eval" / "report.md").is_file()
    for name in ("predictions.jsonl", "predictions-no-ops.jsonl"):  # each run's items beside their labels
        items = [json.loads(line) for line in (tmp_path / "eval" / name).read_text().splitlines()]
        assert len(items) == 6
        assert all(set(i["label"]) >= {"defect_type", "difficulty", "product"} for i in items)
        assert all(i["type_correct"] == (i["defect_type"] == i["label"]["defect_type"]) for i in items)
    no_ops = [json.loads(line) for line in (tmp_path / "eval" / "predictions-no-ops.jsonl").open()]
    assert all(i["operations"] == 0 for i in no_ops)
    images = sorted((tiny_data / "images").iterdir())[:2]
    seq = next((tiny_data / "sequences").iterdir())
    out = tmp_path / "results.jsonl"
    subprocess.run([*env_cmd, "predict", *map(str, images), str(seq), "--out", str(out), "--model",
                    str(micro_model)], check=True, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == [*map(str, images), str(seq)]
    for row in rows:
        assert set(row) >= {"image", "verdict", "defect_type", "confidence", "bbox", "steps", "latency_ms"}
        assert row["verdict"] in ("ok", "defect", "uncertain")
        assert 0.0 <= row["confidence"] <= 1.0
        assert row["bbox"] is None or (len(row["bbox"]) == 4 and all(0 <= v <= 1 for v in row["bbox"]))
        assert isinstance(row["steps"], list) and row["steps"]
        assert row["latency_ms"] > 0


def test_a_run_from_a_saved_model_keeps_its_tokenizer_and_continues_stage_0(
        micro_model: Path, tiny_data: Path, tmp_path: Path) -> None:
    config = SFTConfig(data=tiny_data, out=tmp_path / "next", init=micro_model, preset="micro",
                       vocab_size=300,
                       pretrain_steps=3, pretrain_batch=2, steps=2, batch_size=2, dev_loop_items=0,
                       version="2")
    run(config)
    before, after = loader.load(micro_model), loader.load(tmp_path / "next")
    assert after.tokenizer.get_vocab() == before.tokenizer.get_vocab()  # not retrained (vocab_size ignored)
    assert after.version == "2"
    stem = "model.visual.stem.0.0.weight"
    assert not torch.equal(before.model.state_dict()[stem], after.model.state_dict()[stem])


@pytest.mark.parametrize("upgrade", [True, False])
def test_a_run_from_an_older_layout_gains_type_and_coordinate_embeddings_and_its_own_head_when_asked(
        micro_tokenizer: object, tiny_data: Path, tmp_path: Path, upgrade: bool) -> None:
    old = loader.create(micro_tokenizer, "micro", seed=0)  # type: ignore[arg-type]  # tied, no type embedding
    assert old.model.lm_head.weight is old.model.get_input_embeddings().weight
    loader.save(old, tmp_path / "old")
    config = SFTConfig(data=tiny_data, out=tmp_path / "new", init=tmp_path / "old", pretrain_steps=0,
                       steps=2, batch_size=2, dev_loop_items=0, type_embedding=upgrade, untie_head=upgrade,
                       cell_looks=upgrade)
    run(config)
    new = loader.load(tmp_path / "new").model
    tower = new.model.visual
    assert (tower.type_embed is not None) is upgrade and (tower.coord_embed is not None) is upgrade
    head, embedding = new.lm_head.weight, new.get_input_embeddings().weight
    assert (head.data_ptr() != embedding.data_ptr()) is upgrade
    if upgrade:
        assert not torch.equal(head, embedding)  # trained apart


def test_the_backbone_is_frozen_unless_asked_and_freeze_merger_leaves_the_decoder(  # type: ignore[no-untyped-def]
        micro_vlm) -> None:
    from foveal.training.sft import trainable

    tower = micro_vlm.model.model.visual
    merger = {id(p) for p in tower.merger.parameters()}
    backbone = {id(p) for p in tower.backbone_parameters()}
    trained = {id(p) for p in trainable(micro_vlm)}
    frozen_merger = {id(p) for p in trainable(micro_vlm, freeze_merger=True)}
    assert merger <= trained and not backbone & trained
    assert not merger & frozen_merger and frozen_merger == trained - merger
    # SFT without stage 0 trains the backbone too: it has to learn to see
    everything = {id(p) for p in trainable(micro_vlm, train_backbone=True)}
    assert everything == trained | backbone


def test_caption_warmup_steps_train_on_captions_alone(micro_model: Path, tiny_data: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from foveal.training import sft

    saved = torch.load(micro_model / "work" / "prepared.pt", weights_only=False)
    kinds: list[set[str]] = []
    real = sft.example_loss

    def spy(vlm, batch, weighted=True):  # type: ignore[no-untyped-def]
        kinds.append({e.kind for e in batch})
        return real(vlm, batch, weighted)

    monkeypatch.setattr(sft, "example_loss", spy)
    for warmup in (8, 0):
        config = SFTConfig(data=tiny_data, out=micro_model, preset="micro", steps=8, batch_size=2,
                           caption_warmup=warmup, eval_every=100, checkpoint_every=100)
        vlm = loader.load(micro_model)
        sft.train_steps(vlm, saved["train"], [], config, sft.SFTReport(), lambda *_: None)
    assert len(kinds) == 16
    assert all(k == {"caption"} for k in kinds[:8])
    assert any(k != {"caption"} for k in kinds[8:])  # without warm-up the trajectories come in

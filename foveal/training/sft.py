"""Warm-start SFT (`foveal train sft`): from labelled plant data to a model that zooms.

Reads top to bottom: config -> trajectories -> tokenizer -> model -> stage 0 (vision) ->
examples (operations executed on the real frames, backbone maps cached) -> SFT steps with
periodic dev loss -> save, curves (PNG) and `train.json`. Loss is on assistant tokens only; tool
outputs never carry it; turns with a deliberately wrong or over-large operation are masked too
(the paper's choice: the model should learn to recover, never to make the mistake). The
backbone is frozen during SFT (stage 0 taught it to see); the merger and the decoder train.
Resumable: `<out>/work/state.pt` holds everything after the expensive preparation.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from foveal.domain import NO_DEFECT
from foveal.model import loader
from foveal.model.loader import VLM
from foveal.model.tokenizer import train_tokenizer
from foveal.model.vision import ConvVisionTower
from foveal.operations import ImageBudget, budget_size
from foveal.plant.dataset import Label, defect_mask, read_labels
from foveal.training.captions import caption_chunks
from foveal.training.examples import Example, corpus_lines, frames_of, materialize, with_maps
from foveal.training.forward import collate, decision_weights, sft_loss, token_logits
from foveal.training.pretrain import PretrainReport, cell_peaks, frame_peaks, pretrain, samples_for
from foveal.training.trajectories import Hint, Mix, Trajectory, synthesize

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class SFTConfig:
    data: Path
    out: Path
    dev: Path | None = None
    preset: str = "default"
    max_items: int | None = None
    dev_items: int = 120
    dev_loop_items: int = 40  # items the loop inspects at every dev evaluation (0: dev loss only)
    trajectories_per_item: int = 2
    vocab_size: int = 2048
    pretrain_steps: int = 1500
    pretrain_batch: int = 24
    pretrain_side: int = 224  # stage-0 training windows (px): more, smaller windows per second than 336
    pretrain_lr: float = 3e-3
    pretrain_zooms: int = 3  # stage-0 views per defective frame: jittered zooms on the defect
    pretrain_wide: int = 1  # ... and large crops holding it (defect-free frames get them too)
    steps: int = 800
    batch_size: int = 8
    lr: float = 1.5e-3
    warmup: int = 100
    eval_every: int = 100
    checkpoint_every: int = 200
    decision_weight: float = 3.0  # loss weight of the tokens that decide (`forward.decision_weights`)
    seed: int = 0
    # defect-free images: a fifth answered at once, the rest after a look. The compact model cannot
    # see hard or tiny defects in the whole view, so "nothing visible" must mostly mean "look
    # closer": with half answered at once (v3) the greedy opening of every clean-looking frame was
    # the direct answer and the model never zoomed (RaPR 0 on FovealBench test)
    mix: Mix = field(default_factory=lambda: Mix(none_direct=0.2))
    name: str = "foveal-vl"
    version: str = "1"
    # start from this saved model (its tokenizer, tower and decoder) instead of a fresh one:
    # stage 0 then continues on its backbone (retraining, or a longer stage 0 in two runs)
    init: Path | None = None
    # caption examples per single image (whole view, zoom on the defect, zoom elsewhere; see
    # `captions`): short answers only the pixels decide, so the decoder must read the image
    captions: bool = True
    # keep the merger at its initialisation: measured on v3, a trained merger collapsed the image
    # tokens to one constant vector (between-image spread ~2 % of their norm) before the decoder
    # had learned to read them
    freeze_merger: bool = False
    # train the vision backbone in SFT too (it is otherwise frozen after stage 0): what SFT without
    # stage 0 has to do, learn to see from the trajectories alone (`bench/stage0_ablation.py`)
    train_backbone: bool = False
    # the first steps train on caption examples alone: their few words are learned at once, so
    # what is left of the loss is the image (LLaVA's alignment stage before instruction tuning)
    caption_warmup: int = 0
    # defect-free images look first where, and exactly when, the stage-0 cell head is most
    # suspicious (its top 1 - none_direct share of them), instead of at random places drawn by
    # the mix: a look the model can predict from the pixels it is shown (needs a cell head)
    look_hints: bool = True
    # the tower's type embedding (`FovealVisionConfig.type_embedding`): the cell head's class
    # probabilities enter every image token in the class names' word directions. Without it the
    # decoder named one type for every defect (v6: `stain` on 92 of 94 defect answers, while the
    # tower's heads named the right type on 58-62 % of the zooms)
    type_embedding: bool = False
    # an output projection of the decoder's own instead of the tied input embeddings: with them
    # tied, v7's hidden state at the answer held the type (linear probe 0.59 on zoom captions)
    # while its own logits named it on 0.37 and leant on one type; untied, 0.50 (800 steps each)
    untie_head: bool = False
    # zooms on defects (and looks at defect-free parts) at the `operations.look_box` of one
    # whole-view token's cell, and the tower's coordinate embedding giving every token the
    # numbers of its own look box: v6 and v7 wrote the same box, [0.0, 0.0, 0.3, 0.3], for every
    # zoom (the tight label boxes they were taught are not predictable from 56 px cells)
    cell_looks: bool = False


@dataclass
class SFTReport:
    steps: int = 0
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    dev_loss: list[tuple[int, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    examples: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    pretrain: dict[str, Any] | None = None
    # the loop run greedily on dev items: (step, type accuracy over all items, RaPR, AUROC of the
    # defect score on defective vs good items: 0.5 means the answers do not depend on the image)
    dev_eval: list[tuple[float, ...]] = field(default_factory=list)
    # the cell-head score from which a defect-free image is looked at first, and the share of
    # the training set's defect-free images above it (`look_hints`)
    look_threshold: float | None = None
    look_share: float | None = None


def _noop(phase: str, done: int, total: int) -> None:
    del phase, done, total


def trajectories_for(labels: Sequence[Label], per_item: int, mix: Mix, seed: int,
                     hints: dict[str, Hint] | None = None,
                     grids: dict[str, tuple[int, int]] | None = None) -> list[Trajectory]:
    out = []
    for i, label in enumerate(labels):
        hint, grid = (hints or {}).get(label.id), (grids or {}).get(label.id)
        for k in range(per_item):
            out.append(synthesize(label, random.Random(seed * 1_000_003 + i * 101 + k), mix, hint, grid))
    return out


def look_hints(vlm: VLM, labels: Sequence[Label], folder: Path, progress: Progress, phase: str,
               none_direct: float, threshold: float | None = None, cell_looks: bool = False,
               sequences: bool = False) -> tuple[dict[str, Hint], float]:
    """A `Hint` per defect-free single image: look at its cell-head peak when the peak's score
    is at least `threshold` (by default the `none_direct` quantile of these images' scores, so
    that share of them is answered at once). With `sequences`, also one per defect-free
    sequence: the frame that peaks highest and the look at its peak (`frame_peaks`; always a
    look, as a look-first pointer makes). Returns the hints and the threshold used."""
    tower = vlm.model.model.visual
    assert isinstance(tower, ConvVisionTower)
    clean = [lb for lb in labels if lb.image is not None and lb.defect_type == NO_DEFECT]
    peaks = cell_peaks(tower, clean, folder, vlm.budget, lambda n: progress(phase, n + 1, len(clean)),
                       cell_looks)
    if threshold is None:
        scores = sorted(score for _, score in peaks.values())
        threshold = float(np.quantile(scores, none_direct)) if scores else 0.0
    hints = {key: Hint(box, score >= threshold) for key, (box, score) in peaks.items()}
    if sequences:
        runs = [lb for lb in labels if lb.frames and lb.defect_type == NO_DEFECT]
        found = frame_peaks(tower, runs, folder, vlm.budget,
                            lambda n: progress(f"{phase} (sequences)", n + 1, len(runs)), cell_looks)
        hints |= {key: Hint(box, True, frame) for key, (frame, box, _) in found.items()}
    return hints, threshold


def new_model(tokenizer: PreTrainedTokenizerBase, preset: str, *, name: str, version: str, seed: int) -> VLM:
    """A fresh compact model; its chat format and pixel budget follow its tower's merge size
    (`loader.create`), and `loader.save` writes them to `preprocessor_config.json`."""
    return loader.create(tokenizer, preset, name=name, version=version, seed=seed)


def build_examples(vlm: VLM, labels: Sequence[Label], trajectories: Sequence[Trajectory], folder: Path,
                   progress: Progress, phase: str, decision_weight: float = 1.0,
                   captions: bool = False, seed: int = 0) -> list[Example]:
    """Materialize every trajectory on its frames (each frame file read once), add the item's
    caption examples when asked, and cache maps."""
    tower = vlm.model.model.visual
    assert isinstance(tower, ConvVisionTower)
    by_item: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_item.setdefault(t.item_id, []).append(t)
    rng = random.Random(seed)
    examples: list[Example] = []
    for n, label in enumerate(labels):
        frames = frames_of(label, folder)
        chunks = [(materialize(t, frames, vlm.chat, vlm.budget), t.kind) for t in by_item.get(label.id, [])]
        if captions and label.image is not None:
            mask = defect_mask(folder, label, frames[0].shape[:2])
            chunks += [(c, "caption") for c in caption_chunks(label, frames, mask, vlm.chat, vlm.budget, rng)]
        for chunk, kind in chunks:
            example = with_maps(chunk, tower, label.id, kind)
            if decision_weight != 1.0:
                example.weights = decision_weights(example.chunk, vlm.tokenizer, decision_weight)
            examples.append(example)
        progress(phase, n + 1, len(labels))
    return examples


def run_pretrain(vlm: VLM, labels: Sequence[Label], folder: Path, config: SFTConfig,
                 progress: Progress) -> PretrainReport:
    rng = random.Random(config.seed)
    samples = []
    for n, label in enumerate(labels):
        samples += samples_for(label, folder, rng, vlm.budget, zooms=config.pretrain_zooms,
                               wide=config.pretrain_wide)
        progress("stage-0 views", n + 1, len(labels))
    rng.shuffle(samples)
    cut = max(1, len(samples) // 20)
    return pretrain(vlm, samples[cut:], samples[:cut], steps=config.pretrain_steps,
                    batch_size=config.pretrain_batch, lr=config.pretrain_lr, seed=config.seed,
                    side=config.pretrain_side,
                    on_step=lambda s, _loss: progress("stage-0 training", s + 1, config.pretrain_steps))


def _lr(step: int, config: SFTConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def example_loss(vlm: VLM, batch: Sequence[Example], weighted: bool = True) -> torch.Tensor:
    """Mean loss of `batch`; weighted by the examples' decision weights when they have them."""
    use = weighted and all(e.weights is not None for e in batch)
    weights = [e.weights or [] for e in batch] if use else None
    b = collate([e.chunk for e in batch], vlm.chat.pad, vlm.chat.spec, weights)
    maps = [m for e in batch for m in e.maps]
    return sft_loss(token_logits(vlm, b, maps), b.targets, b.weights)


@torch.no_grad()
def dev_loss(vlm: VLM, examples: Sequence[Example], batch_size: int) -> float:
    examples = sorted(examples, key=lambda e: len(e.chunk))
    vlm.model.train(False)
    losses = [float(example_loss(vlm, examples[i:i + batch_size], weighted=False))
              for i in range(0, len(examples), batch_size)]
    return sum(losses) / max(1, len(losses))


def trainable(vlm: VLM, freeze_merger: bool = False,
              train_backbone: bool = False) -> list[torch.nn.Parameter]:
    """Merger and decoder; the stage-0 backbone (and its cell head) stays frozen unless
    `train_backbone`, and with `freeze_merger` the merger too (its random projection keeps images
    apart)."""
    tower = vlm.model.model.visual
    frozen = {id(p) for p in tower.backbone_parameters()} \
        if isinstance(tower, ConvVisionTower) and not train_backbone else set()
    if freeze_merger and isinstance(tower, ConvVisionTower):
        frozen |= {id(p) for m in (tower.merger_in, tower.merger) for p in m.parameters()}
    return [p for p in vlm.model.parameters() if id(p) not in frozen]


class DevLoop:
    """The reasoning loop on the first dev items, frames held in memory: what the curves show
    besides the loss is whether the model answers right and zooms."""

    def __init__(self, folder: Path | None, items: int) -> None:
        from foveal.evaluation.bench import inspection_of

        labels = read_labels(folder)[:items] if folder and items else []
        self.truth = [label.defect_type for label in labels]
        self.inspections = [inspection_of(label, folder, True) for label in labels] if folder else []

    def __call__(self, vlm: VLM) -> tuple[float, float, float] | None:
        from foveal.reasoning.loop import Loop
        from foveal.training.pretrain import auroc

        if not self.inspections:
            return None
        vlm.model.train(False)
        traces = Loop(vlm).run_batched(self.inspections, batch_size=8)
        right = sum(t.defect_type == truth for t, truth in zip(traces, self.truth, strict=True))
        separation = auroc(np.array([t.defect_score for t in traces], dtype=np.float64),
                           np.array([truth != NO_DEFECT for truth in self.truth]))
        return (right / len(traces), sum(t.used_operation for t in traces) / len(traces),
                0.5 if separation is None else separation)


def train_steps(vlm: VLM, train: Sequence[Example], dev: Sequence[Example], config: SFTConfig,
                report: SFTReport, progress: Progress, state_file: Path | None = None,
                start: int = 0, optimizer: torch.optim.Optimizer | None = None,
                dev_loop: DevLoop | None = None) -> None:
    params = trainable(vlm, config.freeze_merger, config.train_backbone)
    optimizer = optimizer or torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.95))
    rng = random.Random(config.seed + start)
    by_length = sorted(range(len(train)), key=lambda i: len(train[i].chunk))
    captions_only = [i for i in by_length if train[i].kind == "caption"] or by_length
    for step in range(start, config.steps):
        vlm.model.train()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        pool = captions_only if step < config.caption_warmup else by_length
        batch = [train[i] for i in length_batch(pool, config.batch_size, rng)]
        loss = example_loss(vlm, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        report.train_loss.append((step + 1, float(loss.detach())))
        report.steps = step + 1
        if dev and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            report.dev_loss.append((step + 1, dev_loss(vlm, dev, config.batch_size)))
            scored = dev_loop(vlm) if dev_loop is not None else None
            if scored is not None:
                report.dev_eval.append((step + 1, *scored))
        if state_file is not None and ((step + 1) % config.checkpoint_every == 0):
            save_state(state_file, vlm, optimizer, report, step + 1)
        progress("sft", step + 1, config.steps)


def length_batch(by_length: Sequence[int], size: int, rng: random.Random) -> list[int]:
    """`size` examples of similar length (a random window of the length-sorted order): padding
    a one-image answer to a nine-image sequence made steps several times slower."""
    start = rng.randrange(max(1, len(by_length) - size + 1))
    return list(by_length[start:start + size])


def save_state(path: Path, vlm: VLM, optimizer: torch.optim.Optimizer, report: SFTReport, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": vlm.model.state_dict(), "optimizer": optimizer.state_dict(),
                "report": asdict(report), "step": step}, tmp)
    tmp.replace(path)


def _with_layout(vlm: VLM, config: SFTConfig) -> None:
    """The layout changes a run asks for that an older starting model lacks."""
    tower = vlm.model.model.visual
    if config.type_embedding and isinstance(tower, ConvVisionTower) and tower.head is not None:
        loader.add_type_embedding(vlm)
    if config.cell_looks and isinstance(tower, ConvVisionTower):
        loader.add_coord_embedding(vlm)
    if config.untie_head:
        loader.untie_lm_head(vlm)


def token_grids(labels: Sequence[Label], budget: ImageBudget) -> dict[str, tuple[int, int]]:
    """Per label, the token grid (rows, cols) its whole view is shown as (a sequence: the grid
    of each of its frames shown whole, after a selection)."""
    grids = {}
    for label in labels:
        height, width = budget_size(label.height, label.width, budget)
        grids[label.id] = (height // budget.factor, width // budget.factor)
    return grids


def prepare(config: SFTConfig, progress: Progress) -> tuple[VLM, list[Example], list[Example], SFTReport]:
    """Everything before the SFT steps; cached in `<out>/work/` so a resumed run skips it."""
    work = config.out / "work"
    cache = work / "prepared.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        vlm = loader.load(work / "stage0", tower_precision="float32")
        _with_layout(vlm, config)
        return vlm, saved["train"], saved["dev"], SFTReport(**saved["report"])
    report = SFTReport()
    clock = time.perf_counter()
    labels = read_labels(config.data)[: config.max_items]
    trajectories = trajectories_for(labels, config.trajectories_per_item, config.mix, config.seed)
    dev_labels = read_labels(config.dev)[: config.dev_items] if config.dev else []
    dev_trajectories = trajectories_for(dev_labels, 1, config.mix, config.seed + 1)
    if config.init is not None:
        vlm = loader.load(config.init, tower_precision="float32")
        vlm.name, vlm.version = config.name, config.version
    else:
        tokenizer = train_tokenizer(corpus_lines(trajectories), config.vocab_size)
        vlm = new_model(tokenizer, config.preset, name=config.name, version=config.version, seed=config.seed)
    _with_layout(vlm, config)
    grids = token_grids(labels, vlm.budget) if config.cell_looks else None
    dev_grids = token_grids(dev_labels, vlm.budget) if config.cell_looks else None
    if config.cell_looks:
        trajectories = trajectories_for(labels, config.trajectories_per_item, config.mix, config.seed,
                                        None, grids)
        dev_trajectories = trajectories_for(dev_labels, 1, config.mix, config.seed + 1, None, dev_grids)
    report.seconds["tokenizer"] = time.perf_counter() - clock
    if config.pretrain_steps > 0:
        clock = time.perf_counter()
        pre = run_pretrain(vlm, labels, config.data, config, progress)
        report.pretrain = asdict(pre)
        report.seconds["stage0"] = time.perf_counter() - clock
    tower = vlm.model.model.visual
    if config.look_hints and isinstance(tower, ConvVisionTower) and tower.head is not None:
        clock = time.perf_counter()
        none_direct = config.mix.none_direct
        hints, threshold = look_hints(vlm, labels, config.data, progress, "look hints", none_direct,
                                      cell_looks=config.cell_looks, sequences=config.mix.seq_look > 0)
        trajectories = trajectories_for(labels, config.trajectories_per_item, config.mix, config.seed, hints,
                                        grids)
        if config.dev:
            dev_hints, _ = look_hints(vlm, dev_labels, config.dev, progress, "dev look hints",
                                      none_direct, threshold, config.cell_looks, config.mix.seq_look > 0)
            dev_trajectories = trajectories_for(dev_labels, 1, config.mix, config.seed + 1, dev_hints,
                                                dev_grids)
        report.look_threshold = threshold
        images = [h for h in hints.values() if h.frame is None]
        report.look_share = sum(h.look for h in images) / len(images) if images else None
        report.seconds["look hints"] = time.perf_counter() - clock
    clock = time.perf_counter()
    train = build_examples(vlm, labels, trajectories, config.data, progress, "examples",
                           config.decision_weight, config.captions, config.seed)
    dev = build_examples(vlm, dev_labels, dev_trajectories, config.dev, progress, "dev examples") \
        if config.dev else []
    report.seconds["examples"] = time.perf_counter() - clock
    report.examples = len(train)
    for e in train:
        report.kinds[e.kind] = report.kinds.get(e.kind, 0) + 1
    work.mkdir(parents=True, exist_ok=True)
    loader.save(vlm, work / "stage0")
    torch.save({"train": train, "dev": dev, "report": asdict(report)}, cache)
    return vlm, train, dev, report


def run(config: SFTConfig, progress: Progress = _noop, resume: bool = True) -> SFTReport:
    """Train and save the model into `config.out`; returns the report (also `train.json`)."""
    started = time.perf_counter()
    vlm, train, dev, report = prepare(config, progress)
    state_file = config.out / "work" / "state.pt"
    start = 0
    optimizer = None
    if resume and state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        vlm.model.load_state_dict(state["model"])
        params = trainable(vlm, config.freeze_merger, config.train_backbone)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01,
                                      betas=(0.9, 0.95))
        optimizer.load_state_dict(state["optimizer"])
        report, start = SFTReport(**state["report"]), int(state["step"])
    clock = time.perf_counter()
    dev_loop = DevLoop(config.dev, config.dev_loop_items)
    train_steps(vlm, train, dev, config, report, progress, state_file, start, optimizer, dev_loop)
    report.seconds["sft"] = report.seconds.get("sft", 0.0) + time.perf_counter() - clock
    report.seconds["total"] = time.perf_counter() - started
    vlm.model.train(False)
    meta = {"config": {k: str(v) for k, v in asdict(config).items()}, "train": asdict(report)}
    loader.save(vlm, config.out, meta={"trained_by": "foveal train sft", "sft": meta["config"]})
    (config.out / "train.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
    plot_curves(report, config.out / "sft_curves.png")
    return report


def plot_curves(report: SFTReport, path: Path, others: dict[str, SFTReport] | None = None) -> None:
    """Loss over steps (train smoothed, dev; other runs' dev loss, e.g. without stage 0) and,
    when the loop ran on dev items, their type accuracy and RaPR."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    runs = {"": report, **{f", {name}": other for name, other in (others or {}).items()}}
    panels = 2 if any(r.dev_eval for r in runs.values()) else 1
    fig = Figure(figsize=(7 * panels, 4))
    ax = fig.add_subplot(1, panels, 1)
    if report.train_loss:
        steps, losses = zip(*report.train_loss, strict=True)
        window = 20
        smooth = [sum(losses[max(0, i - window):i + 1]) / len(losses[max(0, i - window):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, label="train (smoothed)")
    for suffix, run_report in runs.items():
        if run_report.dev_loss:
            ax.plot(*zip(*run_report.dev_loss, strict=True), marker="o", label=f"dev{suffix}")
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    if panels == 2:
        right = fig.add_subplot(1, 2, 2)
        for suffix, run_report in runs.items():
            if run_report.dev_eval:
                columns = list(zip(*run_report.dev_eval, strict=False))
                right.plot(columns[0], columns[1], marker="o", label=f"type accuracy{suffix}")
                right.plot(columns[0], columns[2], marker="s", linestyle="--", label=f"RaPR{suffix}")
                if len(columns) > 3:  # reports from before the AUROC column have three
                    right.plot(columns[0], columns[3], marker="^", linestyle=":",
                               label=f"defect-score AUROC{suffix}")
        right.set(xlabel="step", ylabel="share of dev items", ylim=(0, 1.02))
        right.grid(alpha=0.3)
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)

"""`foveal train sft|rl`, `foveal eval`, `foveal predict`: train, measure and use the reasoning model.

`train sft` builds the model from labelled plant data (stage-0 vision pre-training, then
warm-start SFT); `eval` runs it over a FovealBench folder and writes metrics, a markdown report
and figures; `predict` is the stable interface other tools evaluate through: image files or
directories in, one JSON line per image out. `train rl` continues an SFT model with
curiosity-driven GRPO (`foveal.training.rl`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from foveal.cli.context import settings_of

train_app = typer.Typer(help="Train the reasoning model.", no_args_is_help=True)
console = Console(stderr=True)


def progress_bar() -> Progress:
    """The bar training and evaluation commands (and `bench/` scripts) show their phases on."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


class QueryKind(StrEnum):
    image = "image"
    sequence = "sequence"


class RLTarget(StrEnum):
    decoder = "decoder"
    reader = "reader"
    both = "both"


class Phases:
    """Maps the trainer's (phase, done, total) callbacks onto rich tasks; when stderr is not a
    terminal (CI, nohup), it logs a line every tenth of each phase instead."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}
        self.started = time.perf_counter()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total)
        self.bar.update(self.tasks[phase], completed=done)
        if not console.is_terminal and (done == total or done % max(1, total // 10) == 0):
            console.print(f"{phase}: {done}/{total} ({time.perf_counter() - self.started:.0f} s)")


@train_app.command("sft")
def train_sft(
    data: Path = typer.Option(..., "--data", help="Training dataset folder (foveal format)."),
    out: Path = typer.Option(..., "--out", help="Where the trained model goes (resumes if work/ is there)."),
    dev: Path | None = typer.Option(None, "--dev", help="FovealBench dev folder for the dev loss."),
    preset: str = typer.Option("default", "--preset", help="Model size: default, v1 or micro."),
    steps: int = typer.Option(800, "--steps", min=1, help="SFT optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    lr: float = typer.Option(1.5e-3, "--lr", min=0.0),
    pretrain_steps: int = typer.Option(1500, "--pretrain-steps", min=0,
                                       help="Stage-0 vision steps (0: no stage 0)."),
    pretrain_batch: int = typer.Option(24, "--pretrain-batch", min=1, help="Stage-0 windows per step."),
    pretrain_side: int = typer.Option(224, "--pretrain-side", min=56, help="Stage-0 window side (px)."),
    pretrain_lr: float = typer.Option(3e-3, "--pretrain-lr", min=0.0, help="Stage-0 peak learning rate."),
    init: Path | None = typer.Option(None, "--init", help="Start from this saved model (tokenizer, tower, "
                                     "decoder) instead of a fresh one; stage 0 continues on its backbone."),
    max_items: int | None = typer.Option(None, "--max-items", min=1, help="Use the first N items only."),
    per_item: int = typer.Option(2, "--trajectories-per-item", min=1),
    vocab_size: int = typer.Option(2048, "--vocab-size", min=300),
    seed: int = typer.Option(0, "--seed"),
    version: str = typer.Option("1", "--version", help="Version recorded with the model."),
    decision_weight: float = typer.Option(3.0, "--decision-weight", min=0.0,
                                          help="Loss weight of the deciding tokens (1: plain mean)."),
    eval_every: int = typer.Option(100, "--eval-every", min=1, help="Steps between dev evaluations."),
    dev_loop_items: int = typer.Option(40, "--dev-loop-items", min=0,
                                       help="Dev items the loop inspects at each evaluation."),
    caption_warmup: int = typer.Option(0, "--caption-warmup", min=0,
                                       help="First SFT steps on caption examples alone."),
    freeze_merger: bool = typer.Option(False, "--freeze-merger/--train-merger",
                                       help="Keep the vision merger at its initialisation."),
    train_backbone: bool = typer.Option(False, "--train-backbone/--freeze-backbone",
                                        help="Train the vision backbone in SFT too (frozen after stage 0 "
                                             "otherwise); for SFT without stage 0."),
    self_correction: bool = typer.Option(True, "--self-correction/--no-self-correction",
                                         help="Trajectories with wrong or over-large operations first "
                                              "(off: every zoom is single pass; the RL ablation)."),
    none_direct: float = typer.Option(0.2, "--none-direct", min=0.0, max=1.0,
                                      help="Share of defect-free images answered without a zoom."),
    easy_direct: float = typer.Option(0.8, "--easy-direct", min=0.0, max=1.0,
                                      help="Share of easy defect images answered without a zoom."),
    seq_look: float = typer.Option(0.0, "--seq-look", min=0.0, max=1.0,
                                   help="Share of sequences written as a look-first pointer runs them: two "
                                        "frames selected, a crop inside one, the verdict after the crop."),
    look_hints: bool = typer.Option(True, "--look-hints/--random-looks",
                                    help="Defect-free images look first where and when the stage-0 cell "
                                         "head is most suspicious (off: at random, by the mix)."),
    type_embedding: bool = typer.Option(False, "--type-embedding/--no-type-embedding",
                                        help="The cell head's class probabilities enter the image tokens "
                                             "in the class names' word directions (needs a cell head)."),
    untie_head: bool = typer.Option(False, "--untie-head/--tie-head",
                                    help="The decoder's output projection separate from its input "
                                         "embeddings (started from them)."),
    cell_looks: bool = typer.Option(False, "--cell-looks/--tight-looks",
                                    help="Zooms at the look box of one whole-view token's cell, and the "
                                         "tower's coordinate embedding (off: the label's tight box)."),
) -> None:
    """Stage 0 + warm-start SFT on synthetic expert trajectories; saves a loadable model."""
    from foveal.training.sft import SFTConfig, run

    config = SFTConfig(data=data, out=out, dev=dev, preset=preset, steps=steps, batch_size=batch_size, lr=lr,
                       pretrain_steps=pretrain_steps, pretrain_batch=pretrain_batch,
                       pretrain_side=pretrain_side, pretrain_lr=pretrain_lr, init=init,
                       freeze_merger=freeze_merger, train_backbone=train_backbone,
                       caption_warmup=caption_warmup,
                       max_items=max_items, trajectories_per_item=per_item,
                       vocab_size=vocab_size, seed=seed, version=version, decision_weight=decision_weight,
                       eval_every=eval_every, dev_loop_items=dev_loop_items, look_hints=look_hints,
                       type_embedding=type_embedding, untie_head=untie_head,
                       cell_looks=cell_looks)
    config.mix = dataclasses.replace(config.mix, none_direct=none_direct, easy_direct=easy_direct,
                                     seq_look=seq_look)
    if not self_correction:
        config.mix = config.mix.without_correction()
    with progress_bar() as bar:
        report = run(config, Phases(bar))
    last = report.dev_loss[-1][1] if report.dev_loss else float("nan")
    console.print(f"trained {report.steps} steps on {report.examples} examples; dev loss {last:.4f}; "
                  f"time {report.seconds.get('total', 0):.0f} s; model in {out}")


@train_app.command("rl")
def train_rl(
    model: Path = typer.Option(..., "--model", help="The SFT model directory RL starts from."),
    data: list[Path] = typer.Option(..., "--data", help="Query dataset folder(s), generated or imported "
                                    "(repeatable)."),
    out: Path = typer.Option(..., "--out", help="Where the RL model, metrics and plots go (resumes from "
                             "work/state.pt)."),
    dev: Path | None = typer.Option(None, "--dev", help="FovealBench dev folder: greedy eval per episode."),
    episodes: int = typer.Option(1, "--episodes", min=1),
    queries_per_episode: int = typer.Option(512, "--queries-per-episode", min=1),
    queries_per_step: int = typer.Option(16, "--queries-per-step", min=1, help="Queries per update batch."),
    rollouts: int = typer.Option(8, "--rollouts", min=2, help="Rollouts per query (the group size G)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, help="Curiosity weight (0: no curiosity)."),
    beta: float = typer.Option(0.05, "--beta", min=0.0, help="Penalty per operation beyond N."),
    rapr_target: float = typer.Option(0.3, "--H", min=0.0, max=1.0, help="RaPR target H."),
    n_free: int = typer.Option(1, "--N", min=0, help="Operations without penalty N."),
    refresh_every: int = typer.Option(512, "--refresh-every", min=1,
                                      help="Queries between refreshes of the rollout policy."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0),
    temperature: float = typer.Option(1.0, "--temperature", min=0.01, help="Rollout sampling temperature."),
    max_turn_tokens: int = typer.Option(96, "--max-turn-tokens", min=1),
    micro_batch: int = typer.Option(8, "--micro-batch", min=1, help="Rollouts per forward/backward pass."),
    max_items: int | None = typer.Option(None, "--max-items", min=1, help="First N items of each --data."),
    kind: QueryKind | None = typer.Option(None, "--kind", help="Roll out only single images or only "
                                          "sequences (default: both)."),
    dev_items: int = typer.Option(64, "--dev-items", min=1),
    eval_every: int = typer.Option(1, "--eval-every", min=1, help="Episodes between dev evaluations."),
    seed: int = typer.Option(0, "--seed"),
    run_name: str = typer.Option("", "--run-name", help="Names the run in its plots and config."),
    log_dir: Path | None = typer.Option(None, "--log-dir", help="Also copy metrics.jsonl, rl_config.json "
                                        "and plots here (e.g. docs/rl/<run>)."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: torch's default; 1 is "
                                "measured 2.5-9x faster on 2 cores while other work runs, docs/rl.md)."),
    look_first: bool | None = typer.Option(
        None, "--look-first/--no-look-first",
        help="Every verdict comes after a look up close (default: the checkpoint's choice; "
             "off lets RL train the whole-view decision and the sequences' selection)."),
    train: RLTarget = typer.Option(RLTarget.decoder, "--train", help="What the update trains: the decoder "
                                   "(its decisions), the tower's type reader (a grounded answer's type is "
                                   "then sampled and is the action), or both."),
    reader_lr: float = typer.Option(1e-3, "--reader-lr", min=0.0, help="The type reader's learning rate."),
    reader_weight_decay: float = typer.Option(1.0, "--reader-weight-decay", min=0.0,
                                              help="The type reader's AdamW weight decay."),
    greedy_decoder: bool = typer.Option(False, "--greedy-decoder", help="With --train reader: the decoder "
                                        "decodes greedily, as inspection does, so the loop runs once per "
                                        "query and its rollouts are types drawn from that run's read."),
) -> None:
    """Curiosity-driven GRPO from an SFT model; saves a loadable model, metrics.jsonl and plots."""
    import torch

    from foveal.training.rewards import RewardConfig
    from foveal.training.rl import RLConfig, run

    if threads:
        torch.set_num_threads(threads)

    config = RLConfig(model=model, data=data, out=out, dev=dev, run_name=run_name or out.name,
                      log_dir=log_dir, episodes=episodes, queries_per_episode=queries_per_episode,
                      queries_per_step=queries_per_step, group_size=rollouts, refresh_every=refresh_every,
                      rewards=RewardConfig(alpha=alpha, beta=beta, rapr_target=rapr_target, n_free=n_free),
                      lr=lr, temperature=temperature, max_turn_tokens=max_turn_tokens,
                      micro_batch=micro_batch, max_items=max_items,
                      kind=kind.value if kind else None, dev_items=dev_items, eval_every=eval_every,
                      seed=seed, look_first=look_first, train=train.value, reader_lr=reader_lr,
                      reader_weight_decay=reader_weight_decay, greedy_decoder=greedy_decoder)
    with progress_bar() as bar:
        rows = run(config, Phases(bar))
    last = rows[-1] if rows else {}
    console.print(f"{len(rows)} episodes; last: accuracy {last.get('accuracy', float('nan')):.3f}, "
                  f"RaPR {last.get('rapr', float('nan')):.3f}, uniform groups "
                  f"{last.get('uniform_share', float('nan')):.2f}; model in {out}")


@train_app.command("readout")
def readout_command(
    model: Path = typer.Option(..., "--model", help="The model whose view head reads the answers' types."),
    data: list[Path] = typer.Option(..., "--data", help="Labelled dataset folder(s) (repeatable); only "
                                    "their defective items run."),
    out: Path = typer.Option(..., "--out", help="Where the refitted model goes."),
    max_items: int | None = typer.Option(None, "--max-items", min=1,
                                         help="First N defective items of each --data."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    steps: int = typer.Option(100, "--steps", min=0, help="Full-batch steps of the fit on the loop's reads."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    weight_decay: float = typer.Option(1.0, "--weight-decay", min=0.0),
    holdout: float = typer.Option(0.2, "--holdout", min=0.0, max=0.9,
                                  help="Share of items checked, not fitted."),
    seed: int = typer.Option(0, "--seed"),
    crop_steps: int = typer.Option(0, "--crop-steps", min=0,
                                   help="First fine-tune a backbone of the reader's own on this many steps "
                                        "of tight looks at the labelled defects (0: none)."),
    crops_per_item: int = typer.Option(8, "--crops-per-item", min=1),
    crop_batch: int = typer.Option(24, "--crop-batch", min=1),
    crop_lr: float = typer.Option(1e-3, "--crop-lr", min=0.0),
    loop_fit: str = typer.Option("linear", "--loop-fit",
                                 help="What the loop's reads fit: 'linear' (the reader's classifier) or "
                                      "'temperature' (only its confidence: the types read stay)."),
) -> None:
    """Fit the type reader: on tight looks at the labelled defects (--crop-steps), then on the
    looks the greedy loop reads (--steps; 0 skips it). docs/model.md, "Readout refit"."""
    from foveal.training.readout import ReadoutConfig, run

    config = ReadoutConfig(model=model, data=data, out=out, max_items=max_items, batch_size=batch_size,
                           steps=steps, lr=lr, weight_decay=weight_decay, holdout=holdout, seed=seed,
                           crop_steps=crop_steps, crops_per_item=crops_per_item, crop_batch=crop_batch,
                           crop_lr=crop_lr, loop_fit=loop_fit)
    with progress_bar() as bar:
        report = run(config, Phases(bar))
    if "tight_looks" in report:
        tight = report["tight_looks"]
        console.print(f"tight looks: {tight['crops']} crops of {tight['items']} items; held-out accuracy "
                      f"({tight['held_out_crops']} crops): {_change(tight)}")
    if "temperature" in report:
        console.print(f"{report['readings']} types read of {report['items_run']} defective items; "
                      f"temperature {report['temperature']:.3f}; held-out calibration error "
                      f"{report['held_out_calibration_error_before']:.3f} -> "
                      f"{report['held_out_calibration_error_after']:.3f}")
    elif "readings" in report:
        console.print(f"{report['readings']} types read of {report['items_run']} defective items; held-out "
                      f"accuracy of the read ({report['held_out']} items): {_change(report)}")
    console.print(f"model in {out}")


def retrain_command(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="The job's folder: reviews, models, eval, retrain.json "
                             "(rerun with the same options to resume)."),
    model: Path | None = typer.Option(None, "--model", help="The parent model (default: FOVEAL_MODEL_DIR)."),
    data: list[Path] = typer.Option([], "--data", help="Labelled folder(s) trained on beside the reviews "
                                    "(repeatable)."),
    line: str | None = typer.Option(None, "--line", help="Only reviews of this production line."),
    product: str | None = typer.Option(None, "--product", help="Only reviews of this product."),
    since: datetime | None = typer.Option(None, "--since", formats=["%Y-%m-%d"],
                                          help="Only inspections from this day on."),
    until: datetime | None = typer.Option(None, "--until", formats=["%Y-%m-%d"],
                                          help="Only inspections up to this day."),
    bench: Path | None = typer.Option(None, "--bench", help="Labelled folder both models are evaluated on "
                                      "(FovealBench dev)."),
    bench_limit: int | None = typer.Option(None, "--bench-limit", min=1, help="First N items of --bench."),
    guards: list[Path] = typer.Option([], "--guard-bench", help="Another line's labelled folder "
                                      "(repeatable): no promotion when the new model is worse on it beyond "
                                      "the paired interval."),
    crop_steps: int | None = typer.Option(None, "--crop-steps", min=1, help="Fine-tune steps on tight looks "
                                          "(default: about two passes over them, 100 to 1,500)."),
    crops_per_item: int = typer.Option(6, "--crops-per-item", min=1),
    sft_steps: int = typer.Option(0, "--sft-steps", min=0, help="Fine-tune the tower and decoder too, this "
                                  "many SFT steps from the parent, before the reader (for a product or "
                                  "surface the model was not trained on; 0: the reader alone)."),
    pretrain_steps: int = typer.Option(0, "--pretrain-steps", min=0,
                                       help="Stage-0 steps on the tower's backbone before those SFT steps."),
    sft_lr: float = typer.Option(5e-4, "--sft-lr", min=0.0),
    pretrain_lr: float = typer.Option(1e-3, "--pretrain-lr", min=0.0),
    loop_items: int = typer.Option(500, "--loop-items", min=1,
                                   help="Defective items per folder whose reads calibrate the confidence."),
    promote: bool = typer.Option(False, "--promote", help="Copy the model into the Triton model "
                                 "repository as its next version when it measures better on --bench."),
    gate: str = typer.Option("point", "--gate", help="How sure --bench must be before --promote: point "
                             "(overall accuracy up) or interval (its paired 95 % interval above zero)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Retrain on reviewed data: export the reviews, fine-tune the type reader (and, with
    --sft-steps, the tower and decoder before it), calibrate it, evaluate against the parent,
    register both in model_versions, promote if better.
    docs/model.md, "Retraining on reviewed data"."""
    from foveal.dashboard.export import ExportFilters
    from foveal.storage.database import make_engine, session_factory
    from foveal.training.retrain import RetrainConfig, better, run

    settings = settings_of(ctx)
    config = RetrainConfig(out=out, model=model or settings.model_dir, data=tuple(data),
                           filters=ExportFilters(line, product, since.date() if since else None,
                                                 until.date() if until else None),
                           bench=bench, bench_limit=bench_limit, guards=tuple(guards), crop_steps=crop_steps,
                           crops_per_item=crops_per_item, loop_items=loop_items, promote=promote, seed=seed,
                           gate=gate, sft_steps=sft_steps, pretrain_steps=pretrain_steps, sft_lr=sft_lr,
                           pretrain_lr=pretrain_lr)
    engine = make_engine(settings.postgres_url, pool_size=1, max_overflow=0)
    try:
        with progress_bar() as bar:
            state = run(config, settings, session_factory(engine), Phases(bar))
    finally:
        engine.dispose()
    stages = state["stages"]
    exported = stages["export"]
    console.print(f"reviews: {exported['items']} items ({exported['defects_with_box']} defects with a box), "
                  f"snapshot {exported['snapshot_id']}")
    if "vision" in stages:
        vision = stages["vision"]
        console.print(f"tower and decoder: {vision['pretrain_steps']} stage-0 and {vision['sft_steps']} "
                      f"SFT steps on {vision['examples']} examples")
    tight = stages["tight"].get("tight_looks")
    if tight:
        console.print(f"tight looks: {tight['crops']} crops of {tight['items']} items; held-out accuracy: "
                      f"{_change(tight)}")
    if "skipped" in stages["calibrate"]:
        console.print(f"confidence not calibrated: {stages['calibrate']['skipped']}")
    registered = stages["register"]
    console.print(f"model {registered['name']} {registered['version']} in {out / 'model'}; "
                  f"model_versions id {registered['model_version_id']} (parent {registered['parent_id']})")
    if "eval" in stages:
        console.print(f"on {stages['eval']['items']} bench items, paired: {better(stages['eval'], gate)[1]}")
        for guard in stages["eval"].get("guards", []):
            console.print(f"guard {Path(guard['bench']).name} ({guard['items']} items), paired: "
                          f"{better({'paired': guard['paired']})[1]}")
    if "promote" in stages:
        promoted = stages["promote"]
        console.print(f"promoted to {promoted['version_folder']} (Triton: {promoted['triton']})"
                      if promoted["promoted"] else f"not promoted: {promoted['why']}")


def _change(report: dict[str, Any]) -> str:
    before, after = report["held_out_accuracy_before"], report["held_out_accuracy_after"]
    return "n/a" if before is None else f"{before:.3f} -> {after:.3f}"


def eval_command(
    ctx: typer.Context,
    bench: Path = typer.Option(..., "--bench", help="FovealBench split folder (or any labelled dataset)."),
    out: Path = typer.Option(Path("eval"), "--out", help="Report folder."),
    model: Path | None = typer.Option(None, "--model", help="Model directory (default: FOVEAL_MODEL_DIR)."),
    no_ops: bool = typer.Option(False, "--no-ops", help="Operations disabled: answer from the whole view."),
    compare_no_ops: bool = typer.Option(False, "--compare-no-ops", help="Also run --no-ops and compare."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N items only."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    named_prompt: bool = typer.Option(True, "--named-prompt/--generic-prompt",
                                      help="Name the product and the defect types in the prompt."),
    pointer: bool | None = typer.Option(
        None, "--pointer/--no-pointer",
        help="Grounded zooms: the crop's box from the tower's cell head (default: the checkpoint's choice)."),
    rerank: int | None = typer.Option(
        None, "--rerank", min=0, max=32,  # foveal.reasoning.pointer.MAX_LOOKS
        help="Candidate looks seen at full resolution before a grounded box is written "
             "(0: none; default: the checkpoint's choice)."),
    look_first: bool | None = typer.Option(
        None, "--look-first/--no-look-first",
        help="Every verdict comes after a look up close: a frame is cropped, a sequence's frames "
             "selected and one of them cropped (default: the checkpoint's choice)."),
) -> None:
    """Evaluate on FovealBench: F1, false reject at 1 % escape, type accuracy, box hits, RaPR, latency.

    Writes metrics.json, report.md, the figures and predictions.jsonl (each item's answer and label)."""
    from foveal.evaluation.bench import evaluate_model
    from foveal.evaluation.report import PREDICTIONS_FILE, write_predictions, write_report
    from foveal.model import loader
    from foveal.reasoning.loop import LoopOptions

    vlm = loader.load(model or settings_of(ctx).model_dir, tower_precision=settings_of(ctx).tower_precision)
    runs = [no_ops] + ([True] if compare_no_ops and not no_ops else [])
    results = {}
    out.mkdir(parents=True, exist_ok=True)
    for ops_off in runs:
        with progress_bar() as bar:
            task = bar.add_task("eval --no-ops" if ops_off else "eval", total=None)

            def advance(done: int, total: int, bar: Progress = bar, task: TaskID = task) -> None:
                bar.update(task, completed=done, total=total)

            metrics, records = evaluate_model(vlm, bench, no_ops=ops_off, limit=limit, batch_size=batch_size,
                                              named_prompt=named_prompt, on_item=advance,
                                              options=LoopOptions(pointer=pointer, rerank=rerank,
                                                                  look_first=look_first))
        results["no-ops" if ops_off else "ops"] = metrics
        # the per-item answers beside their labels; the --no-ops run of a comparison apart
        name = PREDICTIONS_FILE if ops_off == no_ops else PREDICTIONS_FILE.replace(".jsonl", "-no-ops.jsonl")
        write_predictions(out / name, records)
    main = results.get("ops") or results["no-ops"]
    compare = {"no-ops": results["no-ops"]} if "ops" in results and "no-ops" in results else None
    where = model or settings_of(ctx).model_dir
    meta = {"model": f"{vlm.name} v{vlm.version} ({where})", "bench": str(bench),
            "prompt": "named" if named_prompt else "generic", "batch_size": str(batch_size),
            "pointer": "checkpoint's choice" if pointer is None else ("on" if pointer else "off"),
            "rerank": "checkpoint's choice" if rerank is None else str(rerank),
            "look_first": "checkpoint's choice" if look_first is None else ("on" if look_first else "off"),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    path = write_report(out, main, title=f"FovealBench eval: {bench.name}", meta=meta, compare=compare)
    console.print(f"report: {path}")


def predict_command(
    ctx: typer.Context,
    paths: list[str] = typer.Argument(
        ..., help="Image files or directories (a folder of numeric-named frames is a sequence)."),
    out: Path = typer.Option(..., "--out", help="JSON lines, one object per image."),
    model: Path | None = typer.Option(None, "--model", help="Model directory (default: FOVEAL_MODEL_DIR)."),
    no_ops: bool = typer.Option(False, "--no-ops", help="Operations disabled."),
    product: str | None = typer.Option(None, "--product", help="Name the product in the prompt."),
    defect_types: list[str] = typer.Option([], "--type", help="The line's defect types (repeatable)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    pointer: bool | None = typer.Option(
        None, "--pointer/--no-pointer",
        help="Grounded zooms: the crop's box from the tower's cell head (default: the checkpoint's choice)."),
    rerank: int | None = typer.Option(
        None, "--rerank", min=0, max=32,  # foveal.reasoning.pointer.MAX_LOOKS
        help="Candidate looks seen at full resolution before a grounded box is written "
             "(0: none; default: the checkpoint's choice)."),
    look_first: bool | None = typer.Option(
        None, "--look-first/--no-look-first",
        help="Every verdict comes after a look up close: a frame is cropped, a sequence's frames "
             "selected and one of them cropped (default: the checkpoint's choice)."),
) -> None:
    """Inspect images; write verdict, defect type, confidence, evidence box and steps per image."""
    from foveal.evaluation import inference
    from foveal.model import loader
    from foveal.reasoning.loop import Loop, LoopOptions, Trace

    items = inference.discover(paths)
    vlm = loader.load(model or settings_of(ctx).model_dir, tower_precision=settings_of(ctx).tower_precision)
    loop = Loop(vlm, LoopOptions(allow_operations=not no_ops, pointer=pointer, rerank=rerank,
                                 look_first=look_first))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w") as sink, progress_bar() as bar:
        task = bar.add_task("predict", total=len(items))

        def write(trace: Trace) -> None:
            sink.write(json.dumps(inference.record(trace)) + "\n")
            bar.advance(task)

        inference.run(loop, inference.inspections(items, product, defect_types or None), batch_size, write)
    tmp.replace(out)
    console.print(f"{len(items)} results in {out}")

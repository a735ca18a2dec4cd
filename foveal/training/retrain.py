"""`foveal retrain`: the reviewed plant data back into the model, as one resumable job.

What QA staff confirmed and corrected on the dashboard is the best data a line has. This job
runs, in order, each stage recorded in `<out>/retrain.json` (a rerun with the same `--out`
skips what is done, so an interrupted job resumes and a finished one repeats nothing):

1. **export**: the reviewed inspections (optionally one line, product or time window) as a
   dataset in foveal's format under `<out>/reviews`, recorded as a `dataset_snapshots` row
   (`foveal.dashboard.export`, the dashboard's Export page does the same);
2. **vision** (only with `--sft-steps`, for a product or surface the model was not trained on):
   the tower and the decoder fine-tuned on the reviews and any `--data` folders, as `foveal
   train sft --init <parent>` does: `--pretrain-steps` stage-0 steps continue on the tower's
   backbone (a reviewed defect's drawn box stands in for its mask), then `--sft-steps` SFT steps
   from the parent's weights with the parent's recipe; the next stages start from this model;
3. **tight**: the type reader's backbone fine-tuned on tight looks at the reviewed defects (and
   at those of any `--data` folders), as `foveal train readout --crop-steps` does
   (`foveal.training.readout`; the tower that makes the image tokens is left as it was);
4. **calibrate**: the reader's confidence calibrated on the loop's own reads of those items
   (`--loop-fit temperature`: every type it reads stays; skipped, and said so in the record, when
   the loop reads no type on them), written to `<out>/model` with the version
   `<parent version>+rt.<8 hex digits of the reviews' labels and the recipe>` (`model_digest`);
5. **eval** (with `--bench`): the parent and the new model on the same items, each asked with
   the prompt the service would use for the item's product (`foveal.serving.request.prompt_for`:
   named for the products the catalog knows, generic for the others), the differences paired
   item by item with bootstrap intervals (`metrics.paired_differences`); the same on each
   `--guard-bench` (the benches of the products already served);
6. **register**: both models in `model_versions` (the parent as `imported` when it is not
   there yet; the new one with the parent, the dataset snapshot, the recipe and the metrics),
   upserted on (name, version), so a rerun writes the same rows;
7. **promote** (with `--promote`, which needs `--bench`): only when the new model's overall
   accuracy on the bench is higher (`--gate point`, the default: the paired difference's point
   estimate above zero; `--gate interval`: its 95 % interval's lower bound above zero) and its
   image F1 not lower beyond the paired interval, and on no `--guard-bench` is either lower
   beyond its paired interval (a model fitted to a new product must not cost the old ones), the
   model is copied into the Triton model repository as the next version folder, and Triton, when
   it is up, is asked to load it (its `latest` policy then serves the new version). The new
   model's row records the folder (`served_model`, `served_version`), so the inspections it makes
   link to it, as those of a parent served from the repository link to the parent's row.

Why the reader alone by default: with the compact checkpoints every none/defect decision and box
comes from the tower and the decoder, and the answer's type from the reader, and the reader is
what a few hundred reviewed defects of a known product can move (session 31: a new camera, type
+0.046 on its test split). A surface the tower never saw needs the vision stage (session 32: on
two held-out surfaces the parent rejected 94 % of good parts). `foveal train rl` takes the
exported folder as `--data` too, by hand. Which stages run and why is in `docs/model.md`,
"Retraining on reviewed data".
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from foveal.dashboard.export import ExportFilters, export_reviews
from foveal.errors import ConfigError, FovealError
from foveal.model.loader import META_FILE
from foveal.plant.dataset import MANIFEST_FILE, Label, merged_folder, read_labels
from foveal.settings import Settings
from foveal.storage.database import ensure_reachable
from foveal.storage.models import ModelVersion
from foveal.training.readout import ReadoutConfig, defect_boxes
from foveal.training.readout import run as readout

STATE_FILE = "retrain.json"
STAGES = ("export", "vision", "tight", "calibrate", "eval", "register", "promote")
Progress = Callable[[str, int, int], None]


class RetrainError(FovealError):
    """The retraining job cannot go on; the message says why and nothing was registered."""


@dataclass(frozen=True)
class RetrainConfig:
    out: Path
    model: Path  # the parent: the model now in use
    data: tuple[Path, ...] = ()  # labelled folders trained on beside the reviews (generated plant data)
    filters: ExportFilters = field(default_factory=ExportFilters)
    bench: Path | None = None  # a labelled folder both models are evaluated on (FovealBench dev)
    bench_limit: int | None = None
    # other lines' labelled folders (FovealBench dev for the products already served): the new
    # model must not be worse on any of them beyond the paired interval to be promoted
    guards: tuple[Path, ...] = ()
    # fine-tune steps on tight looks; None: about two passes over them (`auto_crop_steps`), as the
    # default checkpoint's fine-tune made (session 26: 1,500 steps of 24 over 18,900 looks)
    crop_steps: int | None = None
    # the vision stage (module docstring): 0 SFT steps skips it; stage-0 steps need SFT steps after
    # them (a moved backbone changes every image token the decoder reads)
    pretrain_steps: int = 0
    sft_steps: int = 0
    pretrain_lr: float = 1e-3
    sft_lr: float = 5e-4
    crops_per_item: int = 6
    crop_batch: int = 24
    loop_items: int = 500  # defective items per folder whose reads calibrate the confidence
    batch_size: int = 8
    seed: int = 0
    promote: bool = False
    model_repository: Path | None = None  # where a promoted version goes (default: the settings')
    triton_model: str | None = None
    # how sure the bench must be (`better`); not part of the recipe: it decides, it does not train,
    # and a job that was not promoted decides again on a rerun, so a stricter or looser gate can
    # be tried on the same job without retraining
    gate: str = "point"

    def recipe(self) -> dict[str, Any]:
        """What decides the result, JSON-ready (a rerun into the same `out` must match it)."""
        keep = ("model", "data", "filters", "bench", "bench_limit", "guards", "crop_steps", "crops_per_item",
                "crop_batch", "loop_items", "seed", "pretrain_steps", "sft_steps", "pretrain_lr", "sft_lr")
        chosen = {k: getattr(self, k) for k in keep}
        recipe: dict[str, Any] = json.loads(json.dumps(chosen, default=_jsonable))
        return recipe


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, ExportFilters):
        return value.as_json()
    raise TypeError(type(value))


class _State:
    """`<out>/retrain.json`: the recipe and each finished stage's result."""

    def __init__(self, config: RetrainConfig) -> None:
        self.path = config.out / STATE_FILE
        recipe = config.recipe()
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("recipe") != recipe:
                raise RetrainError(f"{config.out} holds a retrain with another recipe; give a new --out "
                                   "(or the same options)")
        else:
            config.out.mkdir(parents=True, exist_ok=True)
            self.data = {"recipe": recipe, "stages": {}}

    def done(self, stage: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.data["stages"].get(stage)
        return found

    def finish(self, stage: str, result: dict[str, Any]) -> dict[str, Any]:
        self.data["stages"][stage] = result
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        scratch.replace(self.path)
        return result


def run(config: RetrainConfig, settings: Settings, sessions: sessionmaker[Session],
        progress: Progress | None = None) -> dict[str, Any]:
    """Run the stages not yet done (module docstring); returns `retrain.json`'s content."""
    if config.promote and config.bench is None:
        raise ConfigError("--promote needs --bench: a model is promoted only when it measures better")
    if config.guards and config.bench is None:
        raise ConfigError("--guard-bench needs --bench: the guards only keep a gain on it from costing "
                          "other lines")
    if config.gate not in GATES:
        raise ConfigError(f"--gate must be one of {', '.join(GATES)}, not {config.gate!r}")
    if config.pretrain_steps and not config.sft_steps:
        raise ConfigError("--pretrain-steps needs --sft-steps: the decoder must learn the moved tower's "
                          "tokens")
    for folder in (*config.data, *([config.bench] if config.bench else []), *config.guards):
        if not (folder / "labels.jsonl").is_file():
            raise ConfigError(f"{folder} is not a labelled dataset folder (no labels.jsonl)")
    ensure_reachable(sessions)  # before any work: the job ends by writing to it
    state = _State(config)
    reviews = config.out / "reviews"
    exported = state.done("export") or state.finish("export", _export(config, settings, sessions, reviews))
    folders = [reviews, *config.data]
    base = config.model
    if config.sft_steps:
        if not state.done("vision"):
            state.finish("vision", _vision(config, folders, progress))
        base = config.out / "vision"
    if not state.done("tight"):
        steps = config.crop_steps or auto_crop_steps(folders, config.crops_per_item, config.crop_batch)
        state.finish("tight", {**_readout(config, folders, base, config.out / "tight", progress,
                                          crop_steps=steps, steps=0), "crop_steps": steps})
    if not state.done("calibrate"):
        try:
            report = _readout(config, folders, config.out / "tight", config.out / "model", progress,
                              crop_steps=0, steps=1, loop_fit="temperature", max_items=config.loop_items)
        except RetrainError as exc:  # the loop read no type on these items: keep the reader as tuned
            shutil.rmtree(config.out / "model", ignore_errors=True)
            shutil.copytree(config.out / "tight", config.out / "model")
            report = {"skipped": str(exc)}
        digest = model_digest(config, exported["labels_sha256"])
        version = f"{_meta(config.model).get('version', '1')}+rt.{digest}"
        _set_meta(config.out / "model", version=version)
        state.finish("calibrate", {**report, "version": version})
    if config.bench is not None and not state.done("eval"):
        state.finish("eval", _evaluate(config, settings, progress))
    if not state.done("register"):
        state.finish("register", _register(config, settings, sessions, state.data["stages"]))
    if config.promote and not (state.done("promote") or {}).get("promoted"):
        state.finish("promote", _promote(config, settings, sessions, state.data["stages"]))
    result: dict[str, Any] = state.data
    return result


def model_digest(config: RetrainConfig, labels_sha256: str) -> str:
    """8 hex digits that name what made the model: the reviews' labels and every option that
    shapes the weights (not the bench, which only measures them). Two jobs on the same reviews
    with other data or steps get two versions, so neither's record replaces the other's."""
    recipe = {k: v for k, v in config.recipe().items() if k not in ("bench", "bench_limit", "guards")}
    text = json.dumps({"reviews": labels_sha256, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def auto_crop_steps(folders: list[Path], crops_per_item: int, batch: int, passes: float = 2.0,
                    holdout: float = 0.2) -> int:
    """Steps of `batch` tight looks that make about `passes` passes over the looks the fine-tune
    cuts (`crops_per_item` per labelled defect box, the held-out share left out), within
    [100, 1500].

    >>> auto_crop_steps([], 6, 24)
    100
    """
    boxes = sum(len(defect_boxes(label)) for folder in folders for label in read_labels(folder))
    return int(min(1500, max(100, round(passes * boxes * crops_per_item * (1 - holdout) / batch))))


def _export(config: RetrainConfig, settings: Settings, sessions: sessionmaker[Session],
            reviews: Path) -> dict[str, Any]:
    """The reviewed data into `reviews` and its snapshot row, in one transaction: a failure
    leaves neither (a half-written folder from an interrupted run is replaced)."""
    if reviews.exists():
        shutil.rmtree(reviews)
    try:
        with sessions() as session, session.begin():
            done = export_reviews(session, settings, "foveal", reviews, config.filters,
                                  name=f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%S%f}")
            labels = read_labels(reviews)
            defects = sum(1 for label in labels if defect_boxes(label))  # what the fine-tune can cut
            if not defects and not config.data:
                raise RetrainError(
                    f"no reviewed defect with a box matches {config.filters.as_json()} ({done.items} "
                    "reviewed items): the type reader learns from reviewed defects; review some, or "
                    "give --data")
    except BaseException:
        shutil.rmtree(reviews, ignore_errors=True)
        raise
    sha = json.loads((reviews / MANIFEST_FILE).read_text())["labels_sha256"]
    return {"snapshot_id": done.snapshot_id, "items": done.items, "defects_with_box": defects,
            "skipped": done.skipped, "labels_sha256": sha}


def _vision(config: RetrainConfig, folders: list[Path], progress: Progress | None) -> dict[str, Any]:
    """Stage-0 and SFT steps from the parent on the reviews and `--data` (one merged folder), with
    the parent's own SFT recipe (what its zooms, heads and trajectories were trained as)."""
    from foveal.training.sft import SFTConfig
    from foveal.training.sft import run as sft

    recipe = {k: str(v) for k, v in _meta(config.model).get("sft", {}).items()}

    def flag(name: str, default: bool) -> bool:
        return recipe.get(name, str(default)) == "True"

    out = config.out / "vision"
    sft_config = SFTConfig(
        data=merged_folder(config.out / "vision-data", folders), out=out, init=config.model,
        pretrain_steps=config.pretrain_steps, pretrain_lr=config.pretrain_lr, steps=config.sft_steps,
        lr=config.sft_lr, warmup=min(100, max(config.sft_steps // 10, 1)), batch_size=config.batch_size,
        decision_weight=float(recipe.get("decision_weight", 3.0)), captions=flag("captions", True),
        look_hints=flag("look_hints", True), type_embedding=flag("type_embedding", False),
        untie_head=flag("untie_head", False), cell_looks=flag("cell_looks", False), seed=config.seed,
        version=str(_meta(config.model).get("version", "1")), checkpoint_every=max(config.sft_steps, 1))
    report = sft(sft_config, progress or (lambda *_: None))
    shutil.rmtree(out / "work", ignore_errors=True)  # the examples' cache: hundreds of MB, done with
    return {"pretrain_steps": config.pretrain_steps, "sft_steps": config.sft_steps,
            "examples": report.examples, "seconds": report.seconds,
            "last_train_loss": report.train_loss[-1][1] if report.train_loss else None,
            "pretrain": report.pretrain}


def _readout(config: RetrainConfig, folders: list[Path], model: Path, out: Path, progress: Progress | None,
             **options: Any) -> dict[str, Any]:
    if out.exists():  # an interrupted stage's partial output
        shutil.rmtree(out)
    try:
        report = readout(ReadoutConfig(model=model, data=folders, out=out, batch_size=config.batch_size,
                                       seed=config.seed, crops_per_item=config.crops_per_item,
                                       crop_batch=config.crop_batch, **options), progress)
    except ValueError as exc:
        raise RetrainError(f"{out.name}: {exc}") from exc
    return report


def _meta(model: Path) -> dict[str, Any]:
    path = model / META_FILE
    found: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return found


def _set_meta(model: Path, **values: Any) -> None:
    meta = {**_meta(model), **values}
    (model / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _evaluate(config: RetrainConfig, settings: Settings, progress: Progress | None) -> dict[str, Any]:
    """Both models on `--bench` (into `eval/`) and on each `--guard-bench` (`eval/guard-<k>/`)."""
    assert config.bench is not None
    result = _paired_eval(config, settings, config.bench, config.out / "eval", progress)
    if config.guards:
        result["guards"] = [_paired_eval(config, settings, folder, config.out / "eval" / f"guard-{k}",
                                         progress) for k, folder in enumerate(config.guards)]
    return result


def _paired_eval(config: RetrainConfig, settings: Settings, bench: Path, out: Path,
                 progress: Progress | None) -> dict[str, Any]:
    from foveal.evaluation.bench import predict_labelled
    from foveal.evaluation.metrics import evaluate, paired_differences
    from foveal.evaluation.report import write_predictions
    from foveal.model import loader
    from foveal.serving.request import catalog_from, product_for, prompt_for

    catalog = catalog_from(settings)

    def prompt_of(label: Label, frames: int) -> str:  # as the service would ask for this product
        return prompt_for(product_for(label.product, [], catalog), frames)

    runs = {}
    for name, folder in (("parent", config.model), ("model", config.out / "model")):
        vlm = loader.load(folder)
        phase = f"evaluating the {'new model' if name == 'model' else 'parent'} on {bench.name}"
        def advance(done: int, total: int, phase: str = phase) -> None:
            if progress is not None:
                progress(phase, done, total)
        labels, predictions, records = predict_labelled(vlm, bench, limit=config.bench_limit,
                                                        batch_size=config.batch_size, on_item=advance,
                                                        prompt_of=prompt_of)
        (out / name).mkdir(parents=True, exist_ok=True)
        write_predictions(out / name / "predictions.jsonl", records)
        runs[name] = (labels, predictions)
    labels, before = runs["parent"]
    after = runs["model"][1]
    metrics = {name: evaluate(labels, predictions).overall.model_dump(mode="json")
               for name, (_, predictions) in runs.items()}
    keys = ("image_f1", "type_accuracy", "overall_accuracy", "false_reject_at_escape", "rapr")
    return {"bench": str(bench.resolve()), "items": len(labels),
            "parent": {k: metrics["parent"].get(k) for k in keys},
            "model": {k: metrics["model"].get(k) for k in keys},
            "paired": {k: list(v) for k, v in paired_differences(labels, before, after,
                                                                 seed=config.seed).items()}}


def _upsert(session: Session, **row: Any) -> int:
    """A `model_versions` row on (name, version): inserted, or its record brought up to date."""
    changing = {k: v for k, v in row.items() if k not in ("name", "version")}
    statement = insert(ModelVersion).values(**row).on_conflict_do_update(
        index_elements=[ModelVersion.name, ModelVersion.version], set_=changing).returning(ModelVersion.id)
    found: int = session.execute(statement).scalar_one()
    return found


def _repository(config: RetrainConfig, settings: Settings) -> tuple[str, Path]:
    """The Triton model name and its folder in the model repository."""
    name = config.triton_model or settings.triton_model
    return name, (config.model_repository or settings.model_repository_dir) / name


def served_as(model: Path, triton_model: str, repository: Path) -> tuple[str, str] | None:
    """(Triton model, version) when `model` is a version folder's `weights` in `repository`.

    >>> served_as(Path("/r/foveal_vl/3/weights"), "foveal_vl", Path("/r/foveal_vl"))
    ('foveal_vl', '3')
    >>> served_as(Path("/work/runs/v9"), "foveal_vl", Path("/r/foveal_vl")) is None
    True
    """
    folder = model.resolve()
    if (folder.name == "weights" and folder.parent.name.isdigit()
            and folder.parent.parent == repository.resolve()):
        return triton_model, folder.parent.name
    return None


def _register(config: RetrainConfig, settings: Settings, sessions: sessionmaker[Session],
              stages: dict[str, Any]) -> dict[str, Any]:
    parent_meta, meta = _meta(config.model), _meta(config.out / "model")
    name = str(meta.get("name", "foveal-vl"))
    parent_name, parent_version = str(parent_meta.get("name", name)), str(parent_meta.get("version", "1"))
    served = served_as(config.model, *_repository(config, settings))
    with sessions() as session, session.begin():
        parent = None
        if served is not None:  # the parent serves: the row its inspections link to (maybe `served`)
            parent = session.scalar(select(ModelVersion.id).where(ModelVersion.served_model == served[0],
                                                                  ModelVersion.served_version == served[1]))
        if parent is None:
            parent = session.scalar(select(ModelVersion.id).where(ModelVersion.name == parent_name,
                                                                  ModelVersion.version == parent_version))
        if parent is None:  # the model in use was never registered: it enters as imported
            parent = _upsert(session, name=parent_name, version=parent_version, stage="imported",
                             parent_id=None, dataset_snapshot_id=None,
                             checkpoint_uri=config.model.resolve().as_uri(), config={}, metrics={},
                             served_model=served[0] if served else None,
                             served_version=served[1] if served else None)
        metrics = {"tight_looks": stages["tight"].get("tight_looks", {}),
                   "calibration": {k: v for k, v in stages["calibrate"].items() if k != "version"},
                   **({"eval": stages["eval"]} if "eval" in stages else {})}
        model = _upsert(session, name=name, version=str(meta["version"]), stage="retrain",
                        parent_id=parent, dataset_snapshot_id=stages["export"]["snapshot_id"],
                        checkpoint_uri=(config.out / "model").resolve().as_uri(), config=config.recipe(),
                        metrics=json.loads(json.dumps(metrics)))
    return {"parent_id": parent, "model_version_id": model, "name": name, "version": meta["version"]}


GATES = ("point", "interval")


def better(evaluation: dict[str, Any], gate: str = "point") -> tuple[bool, str]:
    """Whether a retrained model may replace its parent: overall accuracy (verdict and type) higher
    on the bench (`point`: the paired difference above zero; `interval`: its interval's lower
    bound above zero, so the bench is sure of the gain), and image F1 not lower beyond the paired
    interval; on every guard bench neither lower beyond its interval; and the reason, in words.

    >>> better({"paired": {"overall_accuracy": [0.02, 0.0, 0.04], "image_f1": [-0.01, -0.03, 0.01]}})
    (True, 'overall accuracy +0.020 (+0.000 … +0.040), image F1 -0.010 (-0.030 … +0.010)')
    >>> sure = {"paired": {"overall_accuracy": [0.02, 0.0, 0.04], "image_f1": [0.0, 0.0, 0.0]}}
    >>> better(sure, "interval")[0]
    False
    >>> better({"paired": {"overall_accuracy": [0.0, -0.01, 0.01], "image_f1": [0.0, 0.0, 0.0]}})[0]
    False
    >>> worse = {"bench": "/b/fbench-dev", "paired": {"overall_accuracy": [-0.04, -0.06, -0.02],
    ...                                                "image_f1": [-0.05, -0.07, -0.02]}}
    >>> ok, why = better({**sure, "guards": [worse]})
    >>> ok, why.split("; ")[1]  # doctest: +ELLIPSIS
    (False, 'worse on fbench-dev: overall accuracy -0.040 (-0.060 … -0.020), image F1 -0.050 (...)')
    """
    paired = evaluation["paired"]
    accuracy, f1 = paired.get("overall_accuracy"), paired.get("image_f1")
    if accuracy is None:
        return False, "no overall accuracy on the bench"
    words = "overall accuracy {:+.3f} ({:+.3f} … {:+.3f})".format(*accuracy)
    if f1 is not None:
        words += ", image F1 {:+.3f} ({:+.3f} … {:+.3f})".format(*f1)
    gain = accuracy[1] if gate == "interval" else accuracy[0]
    ok = gain > 0 and (f1 is None or f1[2] >= 0)
    for guard in evaluation.get("guards", []):
        g_accuracy, g_f1 = guard["paired"].get("overall_accuracy"), guard["paired"].get("image_f1")
        lower = [(name, v) for name, v in (("overall accuracy", g_accuracy), ("image F1", g_f1))
                 if v is not None and v[2] < 0]
        if lower:
            ok = False
            words += f"; worse on {Path(guard['bench']).name}: " + ", ".join(
                "{} {:+.3f} ({:+.3f} … {:+.3f})".format(name, *v) for name, v in lower)
    return ok, f"{words} [gate: {gate}]" if gate != "point" else words


def _promote(config: RetrainConfig, settings: Settings, sessions: sessionmaker[Session],
             stages: dict[str, Any]) -> dict[str, Any]:
    ok, why = better(stages["eval"], config.gate)
    if not ok:
        return {"promoted": False, "why": why, "gate": config.gate}
    name, repository = _repository(config, settings)
    versions = sorted(int(p.name) for p in repository.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise RetrainError(f"{repository} holds no version folder to take model.py from")
    version = stages["calibrate"]["version"]
    # A job stopped after the copy finds its folder again instead of making another.
    target = next((repository / str(v) for v in versions
                   if _meta(repository / str(v) / "weights").get("version") == version), None)
    if target is None:
        target = repository / str(versions[-1] + 1)
        scratch = repository / f".{target.name}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(repository / str(versions[-1]), scratch,
                        ignore=shutil.ignore_patterns("weights", "__pycache__"))
        shutil.copytree(config.out / "model", scratch / "weights")
        scratch.rename(target)  # Triton never sees a half-copied version
    with sessions() as session, session.begin():  # before Triton loads it: its first inspection links here
        taken = (ModelVersion.served_model == name) & (ModelVersion.served_version == target.name)
        row_id = stages["register"]["model_version_id"]
        session.execute(update(ModelVersion).where(taken, ModelVersion.id != row_id)  # a folder number reused
                        .values(served_model=None, served_version=None))
        session.execute(update(ModelVersion).where(ModelVersion.id == row_id)
                        .values(served_model=name, served_version=target.name))
    return {"promoted": True, "why": why, "gate": config.gate, "version_folder": str(target),
            "served_as": [name, target.name], "triton": _load_on_triton(settings, name)}


def _load_on_triton(settings: Settings, model: str) -> str:
    """Ask a running Triton to (re)load the model, which then serves its newest version; a
    Triton that is not up loads it when it starts."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(settings.triton_address)
        client.load_model(model)
        return "loaded"
    except InferenceServerException as exc:
        return f"not loaded now ({str(exc).splitlines()[0]}); Triton loads it at its next start"


__all__ = ["STAGES", "RetrainConfig", "RetrainError", "better", "run", "served_as"]

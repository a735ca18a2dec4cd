"""`foveal retrain` on a real PostgreSQL: reviews written through the dashboard become a dataset
snapshot, a retrained model and its lineage in `model_versions`; a rerun repeats nothing; a job
with nothing to learn from registers nothing; promotion copies a version folder only when the
new model measured better.
Run: `.venv/bin/python -m pytest -q tests/training/test_retrain.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from foveal.dashboard import create_app
from foveal.dashboard.export import ExportFilters
from foveal.model import loader
from foveal.plant.dataset import read_labels
from foveal.storage.models import DatasetSnapshot, Inspection, ModelVersion
from foveal.training.retrain import RetrainConfig, RetrainError, model_digest, run
from tests.conftest import free_ports
from tests.dashboard.conftest import Env, dashboard_postgres, env, sign_in  # noqa: F401 (fixtures)
from tests.dashboard.test_export import _review
from tests.training.test_readout import _coloured_defects

LINE = "line-retrain"


def _counts(env: Env) -> tuple[int, int]:  # noqa: F811
    with env.sessions() as session:
        return (session.scalar(select(func.count()).select_from(ModelVersion)) or 0,
                session.scalar(select(func.count()).select_from(DatasetSnapshot)) or 0)


@pytest.fixture(scope="module")
def reviewed(env: Env) -> Env:  # noqa: F811
    """Four reviewed inspections on LINE (three defects, one good part) and one not reviewed."""
    env.add_user("retrainer")
    with TestClient(create_app(env.settings)) as client:
        token = sign_in(client, "retrainer")
        for seed, defect in enumerate(["scratch", "stain", "crack", "none"]):
            inspection = env.inspection(defect=defect, product="textile", seed=70 + seed, line=LINE)
            _review(client, token, inspection, "confirm")
        env.inspection(defect="pit", product="textile", seed=79, line=LINE)
    return env


def _config(tmp_path: Path, model: Path, **extra: object) -> RetrainConfig:
    options: dict[str, object] = dict(out=tmp_path / "job", model=model, filters=ExportFilters(line=LINE),
                                      crop_steps=3, crops_per_item=2, crop_batch=4, loop_items=4,
                                      batch_size=4)
    return RetrainConfig(**{**options, **extra})  # type: ignore[arg-type]


def test_reviews_become_a_snapshot_a_retrained_model_and_its_lineage_and_a_rerun_repeats_nothing(
        reviewed: Env, micro_tokenizer: object, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    loader.save(loader.create(micro_tokenizer, "micro", seed=0, version="7"), parent)  # type: ignore[arg-type]
    _coloured_defects(tmp_path / "bench", 4)
    _coloured_defects(tmp_path / "other-line", 2)
    config = _config(tmp_path, parent, bench=tmp_path / "bench", guards=(tmp_path / "other-line",))
    phases: set[str] = set()
    state = run(config, reviewed.settings, reviewed.sessions, lambda phase, done, total: phases.add(phase))
    stages = state["stages"]
    assert set(stages) == {"export", "tight", "calibrate", "eval", "register"}
    assert stages["export"]["items"] == 4 and stages["export"]["defects_with_box"] == 3
    # an untaught model reads no type in the loop, so its reader stays uncalibrated, and says so
    assert "no answer's type was read" in stages["calibrate"]["skipped"]
    assert {"fine-tuning the reader on tight looks", "evaluating the parent on bench",
            "evaluating the new model on bench"} <= phases
    sha = stages["export"]["labels_sha256"]
    model = loader.load(config.out / "model")
    assert model.version == f"7+rt.{model_digest(config, sha)}"
    assert model.model.model.visual.reader_backbone is not None
    assert stages["eval"]["items"] == 4 and set(stages["eval"]["paired"]) >= {"overall_accuracy", "image_f1"}
    assert (config.out / "eval" / "model" / "predictions.jsonl").read_text().count("\n") == 4
    [guard] = stages["eval"]["guards"]  # the other line's bench, measured the same way
    assert guard["items"] == 2 and guard["bench"] == str((tmp_path / "other-line").resolve())
    assert (config.out / "eval" / "guard-0" / "parent" / "predictions.jsonl").read_text().count("\n") == 2
    with reviewed.sessions() as session:
        row = session.get(ModelVersion, stages["register"]["model_version_id"])
        assert row is not None and row.parent is not None and row.dataset_snapshot is not None
        assert (row.stage, row.version) == ("retrain", model.version)
        assert (row.parent.version, row.parent.stage) == ("7", "imported")
        assert row.dataset_snapshot.n_items == 4 and row.dataset_snapshot.content_sha256 == sha
        assert row.metrics["eval"]["paired"] == stages["eval"]["paired"]
        assert row.checkpoint_uri == (config.out / "model").resolve().as_uri()
    counts = _counts(reviewed)
    again = run(config, reviewed.settings, reviewed.sessions, lambda *_: pytest.fail("a finished stage ran"))
    assert again == state and _counts(reviewed) == counts
    with pytest.raises(RetrainError, match="another recipe"):
        run(_config(tmp_path, parent, crop_steps=5), reviewed.settings, reviewed.sessions)
    # the same reviews with more data make another version: a row of its own, the first kept
    other = run(_config(tmp_path, parent, out=tmp_path / "job2", data=(tmp_path / "bench",)),
                reviewed.settings, reviewed.sessions)["stages"]["register"]
    assert other["version"] != model.version
    assert other["model_version_id"] != stages["register"]["model_version_id"]
    with reviewed.sessions() as session:
        first = session.get(ModelVersion, stages["register"]["model_version_id"])
        assert first is not None and first.checkpoint_uri == (config.out / "model").resolve().as_uri()


def test_the_vision_stage_fine_tunes_tower_and_decoder_on_the_reviews_before_the_reader(
        reviewed: Env, micro_tokenizer: object, tmp_path: Path) -> None:
    import torch

    parent = tmp_path / "parent"
    loader.save(loader.create(micro_tokenizer, "micro", seed=0, version="7"), parent)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="--pretrain-steps needs --sft-steps"):
        run(_config(tmp_path, parent, pretrain_steps=2), reviewed.settings, reviewed.sessions)
    _coloured_defects(tmp_path / "more", 3)
    config = _config(tmp_path, parent, data=(tmp_path / "more",), pretrain_steps=2, sft_steps=2)
    phases: set[str] = set()
    stages = run(config, reviewed.settings, reviewed.sessions,
                 lambda phase, done, total: phases.add(phase))["stages"]
    assert stages["vision"]["sft_steps"] == 2 and stages["vision"]["pretrain_steps"] == 2
    assert {"stage-0 training", "sft", "fine-tuning the reader on tight looks"} <= phases
    assert len(read_labels(config.out / "vision-data")) == 4 + 3  # the reviews and the --data folder
    assert not (config.out / "vision" / "work").exists()
    before, vision, after = (loader.load(p) for p in (parent, config.out / "vision", config.out / "model"))

    def weights(vlm: object, part: str) -> torch.Tensor:
        tower = vlm.model.model.visual  # type: ignore[attr-defined]
        module = tower.stem if part == "backbone" else vlm.model.lm_head  # type: ignore[attr-defined]
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    for part in ("backbone", "decoder"):
        assert not torch.equal(weights(before, part), weights(vision, part)), part
        assert torch.equal(weights(vision, part), weights(after, part)), part  # the reader stage left it
    assert after.version == f"7+rt.{model_digest(config, stages['export']['labels_sha256'])}"


def test_a_parent_served_from_the_model_repository_is_the_row_its_inspections_already_link_to(
        reviewed: Env, micro_tokenizer: object, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    parent = repository / "foveal_vl" / "1" / "weights"  # what Triton serves as foveal_vl version 1
    loader.save(loader.create(micro_tokenizer, "micro", seed=0, version="7"), parent)  # type: ignore[arg-type]
    stages = run(_config(tmp_path, parent, model_repository=repository),
                 reviewed.settings, reviewed.sessions)["stages"]
    with reviewed.sessions() as session:
        served = session.scalar(select(ModelVersion).where(ModelVersion.served_model == "foveal_vl",
                                                           ModelVersion.served_version == "1"))
        assert served is not None and served.stage == "served"  # registered when ingest first saw it
        linked = session.scalar(select(func.count()).select_from(Inspection)
                                .where(Inspection.model_version_id == served.id))
        row = session.get(ModelVersion, stages["register"]["model_version_id"])
        assert row is not None and row.parent_id == served.id and linked


def test_a_job_without_reviewed_defects_registers_nothing_and_leaves_no_folder(
        reviewed: Env, micro_tokenizer: object, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    loader.save(loader.create(micro_tokenizer, "micro", seed=0), parent)  # type: ignore[arg-type]
    counts = _counts(reviewed)
    config = _config(tmp_path, parent, filters=ExportFilters(line="a-line-nobody-reviewed"))
    with pytest.raises(RetrainError, match="no reviewed defect with a box"):
        run(config, reviewed.settings, reviewed.sessions)
    assert _counts(reviewed) == counts and not (config.out / "reviews").exists()
    assert not (config.out / "retrain.json").exists()


def test_promotion_copies_the_next_version_folder_only_when_the_new_model_measured_better(
        reviewed: Env, tmp_path: Path) -> None:
    from foveal.training.retrain import _promote

    repository = tmp_path / "repo"
    (repository / "foveal_vl" / "1" / "weights").mkdir(parents=True)
    (repository / "foveal_vl" / "1" / "model.py").write_text("# the python backend\n")
    (tmp_path / "job" / "model").mkdir(parents=True)
    (tmp_path / "job" / "model" / "foveal.json").write_text(json.dumps({"version": "7+rt.0"}))
    settings = reviewed.settings.model_copy(update={"triton_url": f"127.0.0.1:{free_ports(1)[0]}"})
    config = _config(tmp_path, tmp_path / "parent", promote=True, model_repository=repository)
    with reviewed.sessions() as session, session.begin():
        row = ModelVersion(name="foveal-vl", version="7+rt.0", stage="retrain", checkpoint_uri="file:///job")
        session.add(row)
        session.flush()
        done_before = {"calibrate": {"version": "7+rt.0"}, "register": {"model_version_id": row.id}}
    worse = {**done_before, "eval": {"paired": {"overall_accuracy": [-0.01, -0.05, 0.02],
                                                "image_f1": [0.0, 0.0, 0.0]}}}
    assert _promote(config, settings, reviewed.sessions, worse)["promoted"] is False
    assert sorted(p.name for p in (repository / "foveal_vl").iterdir()) == ["1"]
    good = {**done_before, "eval": {"paired": {"overall_accuracy": [0.05, 0.01, 0.09],
                                               "image_f1": [0.01, -0.02, 0.04]}}}
    done = _promote(config, settings, reviewed.sessions, good)
    assert done["promoted"] is True and "not loaded now" in done["triton"]
    new = repository / "foveal_vl" / "2"
    assert (new / "model.py").read_text() == "# the python backend\n"
    assert json.loads((new / "weights" / "foveal.json").read_text())["version"] == "7+rt.0"
    assert sorted(p.name for p in (repository / "foveal_vl").iterdir()) == ["1", "2"]
    # the row now answers for what Triton serves from that folder; a job stopped after the copy
    # and run again finds its folder instead of making a third
    assert _promote(config, settings, reviewed.sessions, good)["version_folder"] == str(new)
    assert sorted(p.name for p in (repository / "foveal_vl").iterdir()) == ["1", "2"]
    with reviewed.sessions() as session:
        promoted = session.get(ModelVersion, done_before["register"]["model_version_id"])
        assert promoted is not None and (promoted.served_model, promoted.served_version) == ("foveal_vl", "2")
    with pytest.raises(Exception, match="needs --bench"):
        run(_config(tmp_path, tmp_path / "parent", promote=True), reviewed.settings, reviewed.sessions)


def test_the_interval_gate_promotes_only_a_gain_the_bench_is_sure_of_and_a_refused_job_decides_again(
        reviewed: Env, tmp_path: Path) -> None:
    from foveal.training.retrain import _promote

    repository = tmp_path / "repo"
    (repository / "foveal_vl" / "1" / "weights").mkdir(parents=True)
    (tmp_path / "job" / "model").mkdir(parents=True)
    (tmp_path / "job" / "model" / "foveal.json").write_text(json.dumps({"version": "7+rt.1"}))
    settings = reviewed.settings.model_copy(update={"triton_url": f"127.0.0.1:{free_ports(1)[0]}"})
    with reviewed.sessions() as session, session.begin():
        row = ModelVersion(name="foveal-vl", version="7+rt.1", stage="retrain", checkpoint_uri="file:///job")
        session.add(row)
        session.flush()
        stages = {"calibrate": {"version": "7+rt.1"}, "register": {"model_version_id": row.id},
                  "eval": {"paired": {"overall_accuracy": [0.02, -0.008, 0.05], "image_f1": [0.0, 0.0, 0.0]}}}
    strict = _config(tmp_path, tmp_path / "parent", promote=True, model_repository=repository,
                     gate="interval")
    refused = _promote(strict, settings, reviewed.sessions, stages)
    assert refused == {"promoted": False, "gate": "interval", "why": refused["why"]}
    assert "[gate: interval]" in refused["why"]
    assert sorted(p.name for p in (repository / "foveal_vl").iterdir()) == ["1"]
    # the same finished job run again under the default gate decides again (nothing retrains):
    # the point estimate is up, so it is promoted
    loose = _config(tmp_path, tmp_path / "parent", promote=True, model_repository=repository,
                    bench=tmp_path / "bench")
    _coloured_defects(tmp_path / "bench", 1)
    done = {"export": {"items": 1}, "tight": {"crop_steps": 3}, **stages, "promote": refused}
    (loose.out / "retrain.json").write_text(json.dumps({"recipe": loose.recipe(), "stages": done}))
    state = run(loose, settings, reviewed.sessions)
    assert state["stages"]["promote"]["promoted"] is True and state["stages"]["tight"] == {"crop_steps": 3}
    assert sorted(p.name for p in (repository / "foveal_vl").iterdir()) == ["1", "2"]
    # a gain on this line that costs another line is not promoted, whatever the gate
    costly = {**stages, "eval": {**stages["eval"], "guards": [
        {"bench": "/b/fbench-dev", "items": 360,
         "paired": {"overall_accuracy": [-0.03, -0.05, -0.01], "image_f1": [0.0, -0.01, 0.01]}}]}}
    assert _promote(loose, settings, reviewed.sessions, costly)["why"].endswith(
        "worse on fbench-dev: overall accuracy -0.030 (-0.050 … -0.010)")
    with pytest.raises(Exception, match="--guard-bench needs --bench"):
        run(_config(tmp_path, tmp_path / "parent", guards=(tmp_path / "bench",)), reviewed.settings,
            reviewed.sessions)
    with pytest.raises(Exception, match="--gate must be one of point, interval"):
        run(_config(tmp_path, tmp_path / "parent", gate="sure"), reviewed.settings, reviewed.sessions)


def test_the_docstring_examples_hold() -> None:
    import doctest

    from foveal.training import retrain

    assert doctest.testmod(retrain).attempted >= 3 and doctest.testmod(retrain).failed == 0


def test_an_unreachable_database_stops_the_job_before_any_work(tmp_path: Path) -> None:
    from foveal.errors import StorageError
    from foveal.storage.database import make_engine, session_factory
    from tests.conftest import embedded_settings

    port = free_ports(1)[0]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"  # nothing listens there
    settings = embedded_settings(tmp_path / "home", database_url=url)
    engine = make_engine(settings.postgres_url, pool_size=1, max_overflow=0)
    config = _config(tmp_path, tmp_path / "parent")
    try:
        with pytest.raises(StorageError, match="cannot be reached"):
            run(config, settings, session_factory(engine))
    finally:
        engine.dispose()
    assert not config.out.exists()

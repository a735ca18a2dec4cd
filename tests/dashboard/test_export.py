"""Export of reviewed data: the reviewer's labels and the full frames, in foveal's dataset format,
as MVTec AD folders and as COCO; the MVTec and COCO exports read back through the importers with
the same types and pixel boxes; each export is a dataset snapshot; the dashboard answers a zip.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_export.py`.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from foveal.dashboard.export import ExportFilters, export_reviews
from foveal.plant.dataset import read_labels
from foveal.plant.importers import import_coco, import_mvtec
from foveal.storage.models import DatasetSnapshot
from tests.dashboard.conftest import Env, sign_in


def _review(client: TestClient, token: str, inspection: int, action: str, **extra: object) -> None:
    answer = client.post(
        f"/api/inspections/{inspection}/reviews",
        headers={"X-CSRF-Token": token},
        json={"action": action, "request_id": str(uuid.uuid4()), **extra},
    )
    assert answer.status_code == 200, answer.text


def test_reviewed_data_round_trips_through_the_importers(
    env: Env, client: TestClient, tmp_path: Path
) -> None:
    env.add_user("exporter")
    token = sign_in(client, "exporter")
    line = "line-export"
    confirmed = env.inspection(defect="scratch", product="textile", seed=51, line=line)
    relabelled = env.inspection(defect="stain", product="textile", seed=52, line=line)
    rejected = env.inspection(defect="pit", product="textile", seed=53, line=line)
    clean = env.inspection(defect="none", product="textile", seed=54, line=line)
    env.inspection(defect="crack", product="textile", seed=55, line=line)  # never reviewed: not exported
    _review(client, token, confirmed, "confirm")
    _review(client, token, relabelled, "relabel", defect_type="burn")
    _review(client, token, relabelled, "box", box=[0.2, 0.25, 0.5, 0.6])
    _review(client, token, rejected, "reject")
    _review(client, token, clean, "confirm")
    filters = ExportFilters(line=line)
    with env.sessions() as session, session.begin():
        native = export_reviews(session, env.settings, "foveal", tmp_path / "native", filters)
        mvtec = export_reviews(session, env.settings, "mvtec", tmp_path / "mvtec", filters)
        coco = export_reviews(session, env.settings, "coco", tmp_path / "coco", filters)
    labels = {label.id: label for label in read_labels(tmp_path / "native")}
    assert native.items == mvtec.items == coco.items == 4
    expected = {
        f"review-{confirmed}": "scratch",
        f"review-{relabelled}": "burn",
        f"review-{rejected}": "none",
        f"review-{clean}": "none",
    }
    assert {k: v.defect_type for k, v in labels.items()} == expected
    assert labels[f"review-{relabelled}"].bbox == (0.2, 0.25, 0.5, 0.6)
    assert labels[f"review-{rejected}"].bbox is None

    def by_type_and_box(folder: Path) -> list[tuple[str, object]]:
        return sorted((label.defect_type, label.bbox_px) for label in read_labels(folder))

    truth = sorted((label.defect_type, label.bbox_px) for label in labels.values())
    import_mvtec(tmp_path / "mvtec", tmp_path / "mvtec-in")
    import_coco(tmp_path / "coco" / "annotations.json", tmp_path / "coco-in")
    assert by_type_and_box(tmp_path / "mvtec-in") == truth
    assert by_type_and_box(tmp_path / "coco-in") == truth
    # Images are copied byte for byte.
    native_image = next((tmp_path / "native" / "images").glob(f"review-{confirmed}.*")).read_bytes()
    assert native_image in {p.read_bytes() for p in (tmp_path / "coco" / "images").iterdir()}
    with env.sessions() as session:
        snapshots = session.scalars(
            select(DatasetSnapshot).where(
                DatasetSnapshot.id.in_([native.snapshot_id, mvtec.snapshot_id, coco.snapshot_id])
            )
        ).all()
    assert {s.filters["format"] for s in snapshots} == {"foveal", "mvtec", "coco"}
    assert all(s.n_items == 4 and s.source == "reviews" for s in snapshots)


def test_export_page_answers_a_zip(env: Env, client: TestClient) -> None:
    env.add_user("zipper")
    token = sign_in(client, "zipper")
    inspection = env.inspection(defect="dent", product="painted_panel", seed=56, line="line-zip")
    _review(client, token, inspection, "confirm")
    answer = client.post("/export", data={"format": "coco", "line": "line-zip", "csrf_token": token})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    assert "annotations.json" in names and any(n.startswith("images/") for n in names)
    assert "reviews-" in client.get("/export").text


def test_the_export_command_without_a_database_says_so_and_writes_nothing(
        tmp_path: Path, monkeypatch: object, capsys: object) -> None:
    import pytest

    from foveal.cli import main
    from tests.conftest import free_ports

    assert isinstance(monkeypatch, pytest.MonkeyPatch) and isinstance(capsys, pytest.CaptureFixture)
    monkeypatch.setenv("FOVEAL_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_ports(1)[0]}/x")
    monkeypatch.setattr("sys.argv", ["foveal", "export", "reviews", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

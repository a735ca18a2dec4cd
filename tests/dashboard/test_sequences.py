"""Sequences in the dashboard, on the real PostgreSQL and blob store, written through the
pipeline's write path: the inspection page's strip shows every frame with the model's selections
numbered in the order it made them, each frame is served by `/media/frames/{id}/{k}` (404 past
the end, a session needed), a sequence stored before every frame was kept still shows what there
is, and the export writes every frame of a reviewed sequence (foveal format; MVTec and COCO one
image per frame whose state is known).
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_sequences.py`.
"""

from __future__ import annotations

import doctest
import json
import re
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from foveal.dashboard import inspection as inspection_view
from foveal.dashboard import sample
from foveal.dashboard.export import ExportFilters, export_reviews
from foveal.plant import exporters
from foveal.plant.dataset import read_labels
from foveal.plant.exporters import round_out
from foveal.plant.importers import import_coco
from foveal.storage.models import FrameBlob, Inspection
from tests.dashboard.conftest import Env, sign_in

FIGURE = re.compile(
    r'<figure class="([^"]*)" data-frame="(\d+)"(?: data-selection="(\d+)")?>(.*?)</figure>', re.S
)


def test_doctests() -> None:
    for module in (inspection_view, exporters):
        assert doctest.testmod(module).failed == 0


def _review(client: TestClient, token: str, inspection: int, action: str, **extra: object) -> None:
    answer = client.post(
        f"/api/inspections/{inspection}/reviews",
        headers={"X-CSRF-Token": token},
        json={"action": action, "request_id": str(uuid.uuid4()), **extra},
    )
    assert answer.status_code == 200, answer.text


def _selected(written: object) -> list[int]:
    """The frames (0-based) the scripted inspection selected, in the order it selected them."""
    steps = written.steps  # type: ignore[attr-defined]
    assert steps[0].operation == "select_frames"
    return [crop.frame_index for crop in steps[0].crops]


def test_the_strip_shows_every_frame_with_the_selected_ones_numbered_in_selection_order(
    env: Env, client: TestClient
) -> None:
    env.add_user("strip")
    sign_in(client, "strip")
    inspection, rendered, written = env.sequence(defect="scratch", seed=3, frames=8)
    chosen = _selected(written)
    zoomed = written.steps[1].crops[0].frame_index
    assert written.steps[1].operation == "crop_image_normalized" and zoomed == chosen[0]

    page = client.get(f"/inspections/{inspection}")
    assert page.status_code == 200
    figures = FIGURE.findall(page.text)
    assert [int(index) for _, index, _, _ in figures] == list(range(8))
    numbers = {int(index): int(number) for _, index, number, _ in figures if number}
    assert numbers == {frame: n for n, frame in enumerate(chosen, 1)}
    for classes, index, number, body in figures:
        assert ("selected" in classes.split()) == bool(number)
        assert f'src="/media/frames/{inspection}/{index}"' in body and "data-enlarge" in body
    # The zoom's frame is the one in the large viewer, with its numbered box on it.
    viewer = f'src="/media/frames/{inspection}/{zoomed}" alt="frame {zoomed + 1} of 8" id="frame-img"'
    assert viewer in page.text
    assert re.findall(r'data-zoom="(\d+)"', page.text) == ["1"]

    for k, pixels in enumerate(rendered.frames):
        image = client.get(f"/media/frames/{inspection}/{k}")
        assert image.status_code == 200 and image.content == sample.png(pixels), k
    assert client.get(f"/media/frames/{inspection}").content == sample.png(rendered.frames[0])
    assert client.get(f"/media/frames/{inspection}/8").status_code == 404
    assert client.get(f"/media/frames/{inspection}/-1").status_code == 404
    assert client.get("/media/frames/999999/0").status_code == 404
    client.cookies.clear()
    assert client.get(f"/media/frames/{inspection}/0").status_code == 401


def test_a_sequence_with_only_its_first_frame_kept_shows_what_the_model_saw(
    env: Env, client: TestClient
) -> None:
    # What a sequence ingested before revision 0003 looks like: position 0 only (the migration's copy).
    env.add_user("old-seq")
    sign_in(client, "old-seq")
    inspection, _, written = env.sequence(defect="pit", product="cast_part", seed=5, frames=8)
    with env.sessions() as session, session.begin():
        frame_id = session.scalars(select(Inspection.frame_id).where(Inspection.id == inspection)).one()
        session.execute(delete(FrameBlob).where(FrameBlob.frame_id == frame_id, FrameBlob.position > 0))
    chosen = _selected(written)
    page = client.get(f"/inspections/{inspection}")
    figures = {int(index): body for _, index, _, body in FIGURE.findall(page.text)}
    assert len(figures) == 8
    assert f'src="/media/frames/{inspection}/0"' in figures[0]
    for k in range(1, 8):
        assert ("/media/crops/" in figures[k]) == (k in chosen)
        assert ("not kept" in figures[k]) == (k not in chosen)
    assert f'src="/media/frames/{inspection}/0" alt="frame 1 of 8" id="frame-img"' in page.text
    assert client.get(f"/media/frames/{inspection}/1").status_code == 404


def test_export_writes_every_frame_of_a_reviewed_sequence(
    env: Env, client: TestClient, tmp_path: Path
) -> None:
    env.add_user("seq-export")
    token = sign_in(client, "seq-export")
    line = "line-seq-export"
    defect, defect_seq, defect_written = env.sequence(defect="scratch", seed=11, line=line)
    clean, clean_seq, _ = env.sequence(defect="none", seed=12, line=line)
    relabelled, _, relabelled_written = env.sequence(
        defect="none", product="painted_panel", seed=13, line=line
    )
    _review(client, token, defect, "confirm")  # keeps the model's box, in the frame it zoomed into
    _review(client, token, clean, "confirm")
    _review(client, token, relabelled, "relabel", defect_type="dent")
    _review(client, token, relabelled, "box", box=[0.1, 0.2, 0.3, 0.4])  # drawn on the shown frame
    zoomed = defect_written.steps[1].crops[0].frame_index
    first_selected = _selected(relabelled_written)[0]

    filters = ExportFilters(line=line)
    with env.sessions() as session, session.begin():
        native = export_reviews(session, env.settings, "foveal", tmp_path / "native", filters)
        coco = export_reviews(session, env.settings, "coco", tmp_path / "coco", filters)
        mvtec = export_reviews(session, env.settings, "mvtec", tmp_path / "mvtec", filters)
    assert native.items == 3 and native.skipped == []
    labels = {label.id: label for label in read_labels(tmp_path / "native")}
    for item, rendered in ((defect, defect_seq), (clean, clean_seq)):
        label = labels[f"review-{item}"]
        assert label.frames is not None and len(label.frames) == 8
        for rel, pixels in zip(label.frames, rendered.frames, strict=True):
            assert (tmp_path / "native" / rel).read_bytes() == sample.png(pixels)  # byte for byte
    scratch = labels[f"review-{defect}"]
    assert scratch.defect_type == "scratch" and scratch.bbox_frame == zoomed
    assert scratch.bbox == defect_written.box and scratch.defect_frames is None
    none = labels[f"review-{clean}"]
    assert none.defect_type == "none" and none.defect_frames == [] and none.frame_boxes == [None] * 8
    dent = labels[f"review-{relabelled}"]
    assert (dent.defect_type, dent.bbox, dent.bbox_frame) == ("dent", (0.1, 0.2, 0.3, 0.4), first_selected)

    # COCO: a clean sequence is 8 clean images; a defect sequence only its boxed frame.
    assert coco.items == mvtec.items == 8 + 1 + 1
    assert len([s for s in coco.skipped if "not known" in s]) == 7 + 7
    annotations = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    by_file = {image["file_name"]: image for image in annotations["images"]}
    assert len(by_file) == 10
    scratch_image = by_file[f"images/review-{defect}-f{zoomed:02d}.png"]
    assert scratch_image["attributes"] == {"sequence_id": f"review-{defect}", "frame_index": zoomed,
                                           "sequence_length": 8}
    assert sorted(image["attributes"]["frame_index"] for image in annotations["images"]
                  if image["attributes"]["sequence_id"] == f"review-{clean}") == list(range(8))
    (box_annotation,) = [a for a in annotations["annotations"] if a["image_id"] == scratch_image["id"]]
    x1, y1, x2, y2 = round_out(defect_written.box, scratch.width, scratch.height)
    assert box_annotation["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert len(annotations["annotations"]) == 2
    copied = (tmp_path / "coco" / scratch_image["file_name"]).read_bytes()
    assert copied == sample.png(defect_seq.frames[zoomed])
    import_coco(tmp_path / "coco" / "annotations.json", tmp_path / "coco-in")
    back = sorted((label.defect_type, label.bbox_px) for label in read_labels(tmp_path / "coco-in"))
    assert back == sorted([("none", None)] * 8 + [("scratch", (x1, y1, x2, y2)),
                                                   ("dent", round_out((0.1, 0.2, 0.3, 0.4), dent.width,
                                                                      dent.height))])
    # MVTec: the clean frames under good/, each boxed frame with its mask.
    product_dir = tmp_path / "mvtec" / "brushed_metal"
    assert len(list((product_dir / "test" / "good").iterdir())) == 8
    assert [p.name for p in (product_dir / "ground_truth" / "scratch").iterdir()] == [
        f"review-{defect}-f{zoomed:02d}_mask.png"]


def test_a_sequence_missing_frames_in_the_blob_store_is_skipped_with_the_reason(
    env: Env, client: TestClient, tmp_path: Path
) -> None:
    env.add_user("seq-missing")
    token = sign_in(client, "seq-missing")
    line = "line-seq-missing"
    inspection, _, _ = env.sequence(defect="none", seed=21, line=line)
    _review(client, token, inspection, "confirm")
    with env.sessions() as session, session.begin():
        frame_id = session.scalars(select(Inspection.frame_id).where(Inspection.id == inspection)).one()
        session.execute(delete(FrameBlob).where(FrameBlob.frame_id == frame_id, FrameBlob.position == 5))
        done = export_reviews(session, env.settings, "foveal", tmp_path / "out", ExportFilters(line=line))
    assert done.items == 0
    assert done.skipped == [f"inspection {inspection}: a sequence of 8 frames with 7 in the blob store "
                            "(ingested before every frame was kept)"]
    assert not (tmp_path / "out" / "sequences").exists()

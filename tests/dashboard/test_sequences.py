"""Sequences in the dashboard, on the real PostgreSQL and blob store, written through the
pipeline's write path: the inspection page's strip shows every frame with the model's selections
numbered in the order it made them, each frame is served by `/media/frames/{id}/{k}` (404 past
the end, a session needed), and a sequence stored before every frame was kept still shows what
there is.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_sequences.py`.
"""

from __future__ import annotations

import doctest
import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from foveal.dashboard import inspection as inspection_view
from foveal.dashboard import sample
from foveal.storage.models import FrameBlob, Inspection
from tests.dashboard.conftest import Env, sign_in

FIGURE = re.compile(
    r'<figure class="([^"]*)" data-frame="(\d+)"(?: data-selection="(\d+)")?>(.*?)</figure>', re.S
)


def test_doctests() -> None:
    for module in (inspection_view,):
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

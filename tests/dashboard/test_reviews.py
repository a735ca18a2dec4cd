"""Review actions and the pages that show evidence, on the real PostgreSQL: each action stores
one row with who, when, what and the label after it; a double submit (same request_id) adds
nothing and answers the same row; the inspection page draws every zoom numbered in order and
shows the crops, the steps and the registered model that made the inspection; frame and crop
images come through the media endpoints; the statistics page computes the false-reject rate
and confusion matrix from the reviews.
Run: `.venv/bin/python -m pytest -q tests/dashboard/test_reviews.py`.
"""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import select

from foveal.dashboard import stats as figures
from foveal.storage.models import ModelVersion, Review
from tests.dashboard.conftest import Env, sign_in


def _post(client: TestClient, token: str, inspection: int, action: str, **extra: object) -> dict[str, object]:
    body = {"action": action, "request_id": str(uuid.uuid4()), **extra}
    answer = client.post(f"/api/inspections/{inspection}/reviews", json=body, headers={"X-CSRF-Token": token})
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


def _rows(env: Env, inspection: int) -> list[Review]:
    with env.sessions() as session:
        return list(
            session.scalars(select(Review).where(Review.inspection_id == inspection).order_by(Review.id))
        )


def test_every_action_is_a_review_row_with_the_label_after_it(env: Env, client: TestClient) -> None:
    env.add_user("vera")
    token = sign_in(client, "vera")
    inspection = env.inspection(defect="scratch", seed=21)
    _post(client, token, inspection, "confirm")
    _post(client, token, inspection, "relabel", defect_type="crack")
    _post(client, token, inspection, "box", box=[0.1, 0.2, 0.3, 0.4])
    _post(client, token, inspection, "comment", note="hairline, left edge")
    _post(client, token, inspection, "reject")
    rows = _rows(env, inspection)
    assert [(r.action, r.decision, r.corrected_verdict, r.corrected_type) for r in rows] == [
        ("confirm", "confirm", "defect", "scratch"),
        ("relabel", "correct", "defect", "crack"),
        ("box", "correct", "defect", "crack"),  # the type from the relabel is kept
        ("comment", "comment", None, None),
        ("reject", "correct", "ok", "none"),
    ]
    assert all(r.reviewer == "vera" and r.reviewed_at is not None for r in rows)
    assert (rows[2].corrected_box_x1, rows[2].corrected_box_y2) == (0.1, 0.4)
    assert rows[1].corrected_box_x1 is not None  # a relabel keeps the model's box
    assert rows[3].note == "hairline, left edge" and rows[4].corrected_box_x1 is None


def test_double_submit_stores_one_row(env: Env, client: TestClient) -> None:
    env.add_user("double")
    token = sign_in(client, "double")
    inspection = env.inspection(seed=22)
    body = {"action": "confirm", "request_id": str(uuid.uuid4())}

    def send(_: int) -> dict[str, object]:
        answer = client.post(
            f"/api/inspections/{inspection}/reviews", json=body, headers={"X-CSRF-Token": token}
        )
        assert answer.status_code == 200, answer.text
        data: dict[str, object] = answer.json()
        return data

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    assert len(_rows(env, inspection)) == 1
    assert {a["review_id"] for a in answers} == {_rows(env, inspection)[0].id}
    assert sorted(bool(a["created"]) for a in answers) == [False, False, False, True]


def test_bad_actions_are_refused_with_reasons(env: Env, client: TestClient) -> None:
    env.add_user("strict")
    token = sign_in(client, "strict")
    inspection = env.inspection(seed=23)
    for body, status in [
        ({"action": "relabel", "defect_type": "smudge"}, 422),
        ({"action": "box", "box": [0.5, 0.5, 0.4, 0.9]}, 422),
        ({"action": "comment", "note": "  "}, 422),
        ({"action": "approve"}, 422),
    ]:
        answer = client.post(
            f"/api/inspections/{inspection}/reviews",
            headers={"X-CSRF-Token": token},
            json={"request_id": str(uuid.uuid4()), **body},
        )
        assert answer.status_code == status, (body, answer.text)
    missing = client.post(
        "/api/inspections/999999/reviews",
        headers={"X-CSRF-Token": token},
        json={"action": "confirm", "request_id": str(uuid.uuid4())},
    )
    assert missing.status_code == 404
    assert _rows(env, inspection) == []


def test_inspection_page_shows_numbered_zooms_crops_and_steps(env: Env, client: TestClient) -> None:
    env.add_user("looker")
    sign_in(client, "looker")
    # seed 1 draws a wrong zoom first (random.Random(1).random() < 0.35), so there are two zooms
    inspection = env.inspection(defect="stain", product="pcb", seed=1)
    page = client.get(f"/inspections/{inspection}")
    assert page.status_code == 200
    zooms = re.findall(r'data-zoom="(\d+)"><span>(\d+)</span>', page.text)
    assert zooms == [("1", "1"), ("2", "2")]
    assert "Now I will zoom in" in page.text and "\\boxed{stain}" in page.text
    crops = re.findall(r'src="/media/crops/(\d+)"', page.text)
    assert len(crops) == 2
    for crop in crops:
        image = client.get(f"/media/crops/{crop}")
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    frame = client.get(f"/media/frames/{inspection}")
    assert frame.status_code == 200 and frame.content[:4] == b"\x89PNG"
    assert client.get("/media/crops/999999").status_code == 404


def test_inspection_page_names_the_registered_model_and_its_parent(env: Env, client: TestClient) -> None:
    env.add_user("lineage")
    sign_in(client, "lineage")
    with env.sessions() as session, session.begin():
        parent = ModelVersion(name="foveal-vl", version="9-tight", stage="sft", checkpoint_uri="file:///p")
        session.add(parent)
        session.flush()
        session.add(ModelVersion(name="foveal-vl", version="9-tight+rt.ab12", stage="retrain",
                                 checkpoint_uri="file:///r", parent_id=parent.id,
                                 served_model="foveal_vl", served_version="41"))
    page = client.get(f"/inspections/{env.inspection(seed=3, model_version='41')}")
    assert "foveal_vl/41" in page.text
    assert "foveal-vl 9-tight+rt.ab12 (retrain, from foveal-vl 9-tight)" in page.text
    plain = client.get(f"/inspections/{env.inspection(seed=4, model_version='42')}")  # first seen: `served`
    assert "foveal_vl/42" in plain.text and "(served" not in plain.text


def test_statistics_from_reviews(env: Env, client: TestClient) -> None:
    env.add_user("stat")
    token = sign_in(client, "stat")
    defects = [
        env.inspection(defect="pit", product="cast_part", seed=40 + k, line="line-s") for k in range(4)
    ]
    for inspection in defects[:3]:
        _post(client, token, inspection, "confirm")
    _post(client, token, defects[3], "reject")
    with env.sessions() as session:
        data = figures.compute(session, figures.Window.around(session, None, None))
    assert data.confusion[("pit", "none")] >= 1 and data.confusion[("pit", "pit")] >= 3
    assert 0 < data.totals["false_reject_rate"] < 1
    assert data.defect_rate_by_line.values["line-s"]
    page = client.get("/stats")
    assert page.status_code == 200 and page.text.count('<svg class="chart"') == 6
    assert "Confusion matrix" in page.text

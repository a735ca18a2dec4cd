"""The schema's guarantees, checked on a real PostgreSQL through the ORM and raw SQL.

One inspection per frame, idempotent writes keyed on `frame_id` (a frame's blob keys, one per
image in order, written once by the insert that wins) and on a review's `request_id`, CHECK
constraints on verdicts, confidences and boxes, server defaults for raw inserts, cascades from
inspections to steps and crops and from frames to their blob keys, and a full ORM round trip.
Run: `.venv/bin/python -m pytest tests/storage -q`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from foveal.domain import FrameMeta
from foveal.storage import migrate
from foveal.storage import repository as repo
from foveal.storage.database import make_engine, session_factory
from foveal.storage.models import EvidenceCrop, Frame, FrameBlob, Inspection, ModelVersion, Review, Step

CAPTURED_AT = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


@pytest.fixture
def engine(fresh_database_url: str) -> Iterator[Engine]:
    migrate.upgrade(fresh_database_url)
    engine = make_engine(fresh_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def frame_row(frame_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "frame_id": frame_id or uuid.uuid4(), "line": "L1", "station": "S3", "camera": "top",
        "part_serial": "P-0001", "product": "bracket", "captured_at": CAPTURED_AT,
        "mime_type": "image/png", "width": 1024, "height": 768,
    }


def inspection_row(frame_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "frame_id": frame_id, "verdict": "defect", "defect_type": "scratch", "confidence": 0.9,
        "box_x1": 0.1, "box_y1": 0.2, "box_x2": 0.3, "box_y2": 0.4,
        "model_name": "foveal-compact", "model_version": "1", "operations": 1, "latency_ms": 120.0,
    }
    return {**row, **overrides}


def add_frame(sessions: sessionmaker[Session]) -> uuid.UUID:
    frame_id = uuid.uuid4()
    with sessions() as session, session.begin():
        session.add(Frame(**frame_row(frame_id)))
    return frame_id


def test_inspection_is_unique_per_frame(sessions: sessionmaker[Session]) -> None:
    frame_id = add_frame(sessions)
    with sessions() as session, session.begin():
        session.add(Inspection(**inspection_row(frame_id)))

    with pytest.raises(IntegrityError, match="uq_inspections_frame_id"):
        with sessions() as session, session.begin():
            session.add(Inspection(**inspection_row(frame_id, verdict="ok", defect_type="none")))

    # The redelivered-frame path: a second write of the same frame is a no-op, not an error.
    again = (
        insert(Inspection)
        .values(**inspection_row(frame_id, confidence=0.5))
        .on_conflict_do_nothing(index_elements=["frame_id"])
        .returning(Inspection.id)
    )
    with sessions() as session, session.begin():
        assert session.execute(again).first() is None
    with sessions() as session:
        confidences = session.scalars(select(Inspection.confidence)).all()
    assert confidences == [0.9]


def test_frame_insert_is_idempotent_on_frame_id(sessions: sessionmaker[Session]) -> None:
    row = frame_row()
    statement = insert(Frame).values(**row).on_conflict_do_nothing(index_elements=["frame_id"])
    with sessions() as session, session.begin():
        session.execute(statement)
        session.execute(statement)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Frame)) == 1


def _new_frame(keys: list[str]) -> repo.NewFrame:
    meta = FrameMeta(uuid.uuid4(), "L1", "S3", "top", "P-0001", "bracket", CAPTURED_AT)
    kept = tuple(repo.NewBlob(key, "image/png", 640, 480) for key in keys)
    return repo.NewFrame(meta, "image/png", 640, 480, keys[0], len(keys), None, kept)


def _blob_rows(sessions: sessionmaker[Session], frame_id: uuid.UUID) -> list[tuple[int, str]]:
    with sessions() as session:
        rows = session.execute(select(FrameBlob.position, FrameBlob.blob_key)
                               .where(FrameBlob.frame_id == frame_id).order_by(FrameBlob.position))
        return [(position, key) for position, key in rows]


def _served_inspection(version: str) -> repo.NewInspection:
    return repo.NewInspection(verdict="ok", defect_type="none", confidence=0.9, box=None,
                              model_name="foveal_vl", model_version=version, operations=1,
                              latency_ms=100.0, timings={})


def test_each_inspection_links_to_the_row_of_the_model_that_served_it(
        sessions: sessionmaker[Session]) -> None:
    frames = [_new_frame([f"k{n}"]) for n in range(3)]
    with sessions() as session, session.begin():
        ids = []
        for frame, version in zip(frames, ["1", "1", "2"], strict=True):
            repo.insert_frame(session, frame)
            ids.append(repo.insert_inspection(session, frame.meta.frame_id, _served_inspection(version)))
        # a replay of the first frame writes nothing and registers nothing more
        assert repo.insert_inspection(session, frames[0].meta.frame_id, _served_inspection("1")) is None
    with sessions() as session:
        links = [session.get(Inspection, i).model_version_id for i in ids]  # type: ignore[union-attr]
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    assert links[0] == links[1] != links[2] and None not in links
    assert [(r.id, r.name, r.version, r.stage, r.checkpoint_uri, r.served_model, r.served_version)
            for r in rows] == [
        (links[0], "foveal_vl", "1", "served", "triton://foveal_vl/1", "foveal_vl", "1"),
        (links[2], "foveal_vl", "2", "served", "triton://foveal_vl/2", "foveal_vl", "2")]


def test_an_inspection_links_to_a_registered_model_by_what_triton_serves_it_as(
        sessions: sessionmaker[Session]) -> None:
    frame = _new_frame(["k"])
    with sessions() as session, session.begin():
        session.add(ModelVersion(name="foveal-vl", version="9+rt.1", stage="retrain", checkpoint_uri="file:///m",
                                 served_model="foveal_vl", served_version="3"))
    with sessions() as session, session.begin():
        repo.insert_frame(session, frame)
        inspection_id = repo.insert_inspection(session, frame.meta.frame_id, _served_inspection("3"))
    with sessions() as session:
        inspection = session.get(Inspection, inspection_id)
        assert inspection is not None and inspection.registered_model is not None
        assert inspection.registered_model.version == "9+rt.1"
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
    with sessions() as session, session.begin(), pytest.raises(IntegrityError, match="served_pair"):
        session.add(ModelVersion(name="x", version="1", stage="served", checkpoint_uri="-", served_model="x"))
        session.flush()


def test_a_sequence_keeps_every_blob_key_once_in_order(sessions: sessionmaker[Session]) -> None:
    keys = [f"file:///blobs/{k}{k}/frame-{k}.png" for k in "3172"]  # not in sorted order
    frame = _new_frame(keys)
    with sessions() as session, session.begin():
        assert repo.insert_frame(session, frame) is True
    # Written again (a replay, a second worker that lost the race): nothing changes, even when
    # the second writer names other keys.
    with sessions() as session, session.begin():
        assert repo.insert_frame(session, frame) is False
        assert repo.insert_frame(session, replace(frame, blobs=frame.blobs[::-1])) is False
    assert _blob_rows(sessions, frame.frame_id) == list(enumerate(keys))
    with sessions() as session:
        stored = session.get(Frame, frame.frame_id)
        assert stored is not None and stored.blob_key == keys[0] and stored.sequence_length == 4
        assert [b.blob_key for b in stored.blobs] == keys
    # The rows belong to the frame: deleting it (plain SQL, as a retention job would) takes them.
    with sessions() as session, session.begin():
        session.execute(text("DELETE FROM frames WHERE frame_id = :id"), {"id": frame.frame_id})
    assert _blob_rows(sessions, frame.frame_id) == []


def test_a_frame_given_only_its_blob_key_keeps_it_at_position_0(sessions: sessionmaker[Session]) -> None:
    frame = replace(_new_frame(["file:///blobs/ab/one.png"]), blobs=())
    with sessions() as session, session.begin():
        repo.insert_frame(session, frame)
    assert _blob_rows(sessions, frame.frame_id) == [(0, "file:///blobs/ab/one.png")]


@pytest.mark.parametrize("verdict", ["maybe", "OK", ""])
def test_check_constraints_reject_bad_verdict(sessions: sessionmaker[Session], verdict: str) -> None:
    frame_id = add_frame(sessions)
    with pytest.raises(IntegrityError, match="ck_inspections_verdict"):
        with sessions() as session, session.begin():
            session.add(Inspection(**inspection_row(frame_id, verdict=verdict)))


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"confidence": 1.5}, "ck_inspections_confidence_unit"),
        ({"confidence": -0.1}, "ck_inspections_confidence_unit"),
        ({"confidence": float("nan")}, "ck_inspections_confidence_unit"),
        ({"box_y2": None}, "ck_inspections_box_complete"),
        ({"box_x2": 1.2}, "ck_inspections_box_in_frame"),
        ({"box_x1": 0.3, "box_x2": 0.1}, "ck_inspections_box_in_frame"),
        ({"verdict": "ok", "defect_type": "scratch"}, "ck_inspections_verdict_matches_type"),
        ({"verdict": "defect", "defect_type": "none"}, "ck_inspections_verdict_matches_type"),
        ({"operations": -1}, "ck_inspections_operations_non_negative"),
    ],
)
def test_check_constraints_reject_inconsistent_inspections(
    sessions: sessionmaker[Session], overrides: dict[str, Any], constraint: str
) -> None:
    frame_id = add_frame(sessions)
    with pytest.raises(IntegrityError, match=constraint):
        with sessions() as session, session.begin():
            session.add(Inspection(**inspection_row(frame_id, **overrides)))


def test_check_constraints_accept_uncertain_and_boxless_inspections(
    sessions: sessionmaker[Session],
) -> None:
    rows = [
        inspection_row(add_frame(sessions), verdict="uncertain", defect_type="pit"),
        inspection_row(add_frame(sessions), verdict="uncertain", defect_type="none"),
        inspection_row(add_frame(sessions), verdict="ok", defect_type="none",
                       box_x1=None, box_y1=None, box_x2=None, box_y2=None, operations=0),
    ]
    with sessions() as session, session.begin():
        session.add_all(Inspection(**row) for row in rows)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Inspection)) == 3


def test_raw_sql_insert_gets_server_defaults(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO frames (frame_id, line, station, camera, part_serial, product, "
                "captured_at, mime_type) VALUES (:id, 'L1', 'S1', 'c', 'p', 'x', now(), 'image/png')"
            ),
            {"id": uuid.uuid4()},
        )
        row = conn.execute(
            text("SELECT received_at, sequence_length, attributes FROM frames")
        ).one()
    assert row.received_at is not None and row.received_at.tzinfo is not None
    assert row.sequence_length == 1
    assert row.attributes == {}


def test_resubmitted_review_with_the_same_request_id_adds_no_row(
    sessions: sessionmaker[Session],
) -> None:
    frame_id = add_frame(sessions)
    with sessions() as session, session.begin():
        inspection = Inspection(**inspection_row(frame_id))
        session.add(inspection)
    review = {"inspection_id": inspection.id, "reviewer": "qa1", "decision": "confirm",
              "action": "confirm", "request_id": uuid.uuid4()}
    statement = insert(Review).values(**review).on_conflict_do_nothing(index_elements=["request_id"])
    with sessions() as session, session.begin():
        session.execute(statement)
        session.execute(statement)
    with pytest.raises(IntegrityError, match="uq_reviews_request_id"):
        with sessions() as session, session.begin():
            session.add(Review(**review))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 1


def test_deleting_an_inspection_deletes_its_steps_and_crops(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    frame_id = add_frame(sessions)
    with sessions() as session, session.begin():
        step = Step(index=0, operation="crop_image_normalized", text="zoom", duration_ms=3.0)
        step.crops.append(EvidenceCrop(ordinal=0, image=b"png", mime_type="image/png", width=64,
                                       height=64, box_x1=0.0, box_y1=0.0, box_x2=0.5, box_y2=0.5))
        session.add(Inspection(**inspection_row(frame_id), steps=[step]))
    # Plain SQL, as a retention job would do it: the database cascades, not the ORM.
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM inspections"))
        counts = conn.execute(
            text("SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM evidence_crops)")
        ).one()
    assert tuple(counts) == (0, 0)


def test_frame_inspection_steps_crops_and_reviews_round_trip(
    sessions: sessionmaker[Session],
) -> None:
    crop_bytes = bytes(range(256)) * 4  # every byte value, NUL included
    frame_id = uuid.uuid4()
    request_id = uuid.uuid4()
    with sessions() as session, session.begin():
        frame = Frame(**frame_row(frame_id), blob_key="sha256/ab/cd", kafka_topic="foveal.frames",
                      kafka_partition=2, kafka_offset=2**40, attributes={"lot": "42"})
        inspection = Inspection(**inspection_row(frame_id), timings={"total_ms": 120.0})
        inspection.steps = [
            Step(index=0, operation="crop_image_normalized",
                 arguments={"bbox_2d": [0.1, 0.2, 0.3, 0.4], "target_image": 1},
                 text="Now I will zoom in.", duration_ms=40.5),
            Step(index=1, operation="answer", text="\\boxed{scratch}", duration_ms=10.0),
        ]
        inspection.steps[0].crops.append(
            EvidenceCrop(ordinal=0, image=crop_bytes, mime_type="image/png", width=256, height=192,
                         box_x1=0.0, box_y1=0.1, box_x2=0.4, box_y2=0.5)
        )
        inspection.reviews.append(Review(reviewer="qa1", decision="correct", action="relabel",
                                         corrected_verdict="defect", corrected_type="crack",
                                         corrected_box_x1=0.1, corrected_box_y1=0.1,
                                         corrected_box_x2=0.2, corrected_box_y2=0.2,
                                         note="it is a crack", request_id=request_id))
        frame.inspection = inspection
        session.add(frame)

    with sessions() as session:
        loaded = session.get(Frame, frame_id)
        assert loaded is not None
        assert loaded.captured_at == CAPTURED_AT
        assert loaded.received_at.tzinfo is not None
        assert (loaded.kafka_offset, loaded.attributes, loaded.sequence_length) == (2**40, {"lot": "42"}, 1)
        result = loaded.inspection
        assert result is not None
        assert (result.verdict, result.defect_type, result.confidence) == ("defect", "scratch", 0.9)
        assert (result.box_x1, result.box_y1, result.box_x2, result.box_y2) == (0.1, 0.2, 0.3, 0.4)
        assert result.timings == {"total_ms": 120.0}
        assert [s.operation for s in result.steps] == ["crop_image_normalized", "answer"]
        assert result.steps[0].arguments["bbox_2d"] == [0.1, 0.2, 0.3, 0.4]
        assert result.steps[1].arguments == {} and result.steps[1].error is None
        [crop] = result.steps[0].crops
        assert crop.image == crop_bytes
        assert (crop.width, crop.height, crop.frame_index) == (256, 192, -1)
        [review] = result.reviews
        assert (review.decision, review.corrected_type, review.request_id) == ("correct", "crack", request_id)
        assert review.reviewed_at.tzinfo is not None

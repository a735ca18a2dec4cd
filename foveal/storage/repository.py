"""Writes and reads of inspection results: the functions the ingest worker (and later the dashboard)
call inside a transaction the caller owns (`with factory() as s, s.begin(): ...`); nothing here
commits.

Every write is idempotent on the frame's `frame_id`: the frame and its inspection are inserted
with `ON CONFLICT DO NOTHING`, the frame's blob keys (one per image, in order) only by the
transaction whose frame insert won, and the steps and evidence crops only by the one whose
inspection insert won, so a replayed frame adds no rows. Each inspection is linked to the
`model_versions` row of the model Triton answered for it (`served_model_id`), which a model seen
for the first time gets as a row of stage `served`. `notify_inspection`
queues a PostgreSQL `NOTIFY` that is delivered when (and only if) the transaction commits.
Arguments are plain dataclasses; converting protobuf messages to them is the caller's job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from foveal.domain import FrameMeta
from foveal.storage.models import EvidenceCrop, Frame, FrameBlob, Inspection, ModelVersion, Step

# The channel the dashboard LISTENs on; the payload is the inspected frame's id.
INSPECTIONS_CHANNEL = "foveal_inspections"

Box4 = tuple[float, float, float, float]  # x1, y1, x2, y2 normalized to the original frame


@dataclass(frozen=True)
class KafkaSource:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class NewBlob:
    """One image of a frame as kept in the blob store."""

    blob_key: str
    mime_type: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class NewFrame:
    meta: FrameMeta  # who made it, where, when
    mime_type: str
    width: int | None
    height: int | None
    blob_key: str | None  # the first image's, as `blobs[0]`
    sequence_length: int
    source: KafkaSource | None
    blobs: tuple[NewBlob, ...] = ()  # every image in order: one, or each frame of a sequence

    @property
    def frame_id(self) -> uuid.UUID:
        return self.meta.frame_id


@dataclass(frozen=True)
class NewCrop:
    image: bytes
    mime_type: str
    width: int
    height: int
    box: Box4
    frame_index: int = -1


@dataclass(frozen=True)
class NewStep:
    index: int
    operation: str
    arguments: dict[str, Any]
    text: str
    error: str | None
    duration_ms: float
    crops: tuple[NewCrop, ...] = ()


@dataclass(frozen=True)
class NewInspection:
    verdict: str  # "ok" | "defect" | "uncertain"
    defect_type: str
    confidence: float
    box: Box4 | None
    model_name: str
    model_version: str
    operations: int
    latency_ms: float
    timings: dict[str, float]
    steps: tuple[NewStep, ...] = ()


def find_inspection(session: Session, frame_id: uuid.UUID) -> Inspection | None:
    """The inspection of `frame_id`, with its frame loaded, or None when there is none yet."""
    return session.scalars(select(Inspection).where(Inspection.frame_id == frame_id)).one_or_none()


def insert_frame(session: Session, frame: NewFrame) -> bool:
    """Insert the frame row and its blob rows; False when a row for its `frame_id` already exists
    (then it and its blob rows are left as they are)."""
    source, meta = frame.source, frame.meta
    values: dict[str, Any] = dict(
        frame_id=meta.frame_id, line=meta.line, station=meta.station, camera=meta.camera,
        part_serial=meta.part_serial, product=meta.product, captured_at=meta.captured_at,
        mime_type=frame.mime_type, width=frame.width, height=frame.height, blob_key=frame.blob_key,
        sequence_length=frame.sequence_length, attributes=dict(meta.attributes),
        kafka_topic=source.topic if source else None,
        kafka_partition=source.partition if source else None,
        kafka_offset=source.offset if source else None,
    )
    statement = insert(Frame).values(values).on_conflict_do_nothing(index_elements=[Frame.frame_id])
    if session.execute(statement.returning(Frame.frame_id)).first() is None:
        return False
    kept = frame.blobs
    if not kept and frame.blob_key is not None:  # position 0 is always the frame's own key
        kept = (NewBlob(frame.blob_key, frame.mime_type, frame.width, frame.height),)
    if kept:
        rows = [dict(frame_id=meta.frame_id, position=position, blob_key=b.blob_key, mime_type=b.mime_type,
                     width=b.width, height=b.height) for position, b in enumerate(kept)]
        session.execute(insert(FrameBlob).on_conflict_do_nothing(), rows)
    return True


def served_model_id(session: Session, model: str, version: str) -> int | None:
    """The `model_versions` row of the model Triton serves as `model` version `version`.

    A pair seen for the first time is registered as stage `served` with the checkpoint
    `triton://<model>/<version>` (`foveal retrain` registers the models it promotes, with their
    lineage, before they serve). None only when a row of that name and version exists that is
    not the served one; the inspection is then written unlinked rather than wrongly linked.
    """
    def find() -> int | None:
        return session.scalar(select(ModelVersion.id).where(ModelVersion.served_model == model,
                                                            ModelVersion.served_version == version))

    found = find()
    if found is None:
        session.execute(insert(ModelVersion).values(
            name=model, version=version, stage="served", checkpoint_uri=f"triton://{model}/{version}",
            served_model=model, served_version=version).on_conflict_do_nothing())
        found = find()
    return found


def insert_inspection(session: Session, frame_id: uuid.UUID, inspection: NewInspection) -> int | None:
    """Insert the inspection of `frame_id` with its steps and crops; return its id, or None when
    the frame already had one (then nothing is written)."""
    box = inspection.box
    values: dict[str, Any] = dict(
        frame_id=frame_id, verdict=inspection.verdict, defect_type=inspection.defect_type,
        confidence=inspection.confidence, model_name=inspection.model_name,
        model_version=inspection.model_version,
        model_version_id=served_model_id(session, inspection.model_name, inspection.model_version),
        operations=inspection.operations,
        latency_ms=inspection.latency_ms, timings=dict(inspection.timings),
        box_x1=box[0] if box else None, box_y1=box[1] if box else None,
        box_x2=box[2] if box else None, box_y2=box[3] if box else None,
    )
    statement = (insert(Inspection).values(values)
                 .on_conflict_do_nothing(index_elements=[Inspection.frame_id]).returning(Inspection.id))
    inspection_id = session.execute(statement).scalar_one_or_none()
    if inspection_id is None:
        return None
    _insert_steps(session, inspection_id, inspection.steps)
    return int(inspection_id)


def _insert_steps(session: Session, inspection_id: int, steps: tuple[NewStep, ...]) -> None:
    if not steps:
        return
    rows = [dict(inspection_id=inspection_id, index=s.index, operation=s.operation, arguments=s.arguments,
                 text=s.text, error=s.error, duration_ms=s.duration_ms) for s in steps]
    statement = insert(Step).on_conflict_do_nothing().returning(Step.id, Step.index,
                                                                sort_by_parameter_order=True)
    step_ids = {index: step_id for step_id, index in session.execute(statement, rows)}
    crops = [dict(step_id=step_ids[s.index], ordinal=ordinal, image=c.image, mime_type=c.mime_type,
                  width=c.width, height=c.height, box_x1=c.box[0], box_y1=c.box[1], box_x2=c.box[2],
                  box_y2=c.box[3], frame_index=c.frame_index)
             for s in steps if s.index in step_ids for ordinal, c in enumerate(s.crops)]
    if crops:
        session.execute(insert(EvidenceCrop).on_conflict_do_nothing(), crops)


def notify_inspection(session: Session, frame_id: uuid.UUID, channel: str = INSPECTIONS_CHANNEL) -> None:
    """Queue a NOTIFY on `channel` with the frame id; PostgreSQL delivers it at commit."""
    session.execute(text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": channel, "payload": str(frame_id)})

"""The PostgreSQL schema of foveal as SQLAlchemy 2 typed declarative models.

Frames (and where each of their images is kept), the one inspection per frame with its steps
and evidence crops, QA reviews, model
versions and dataset snapshots, and the review dashboard's users, sign-in sessions and per-line
thresholds (DESIGN.md, "Contracts" → "Database"). Columns, constraints and
indexes only: no business logic, no I/O. Every constraint and index has a deterministic name
(the naming convention on `Base.metadata`), so Alembic migrations can name what they change;
`migrations/versions/` must create exactly this schema, which `tests/storage` checks. Targets
PostgreSQL >= 15 only (JSONB, identity columns). Change it with a new Alembic revision.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERDICTS: tuple[str, ...] = ("ok", "defect", "uncertain")  # domain.Verdict values
DECISIONS: tuple[str, ...] = ("confirm", "correct", "comment")
# What a reviewer did; `decision` is what it means for the label (reject/relabel/box correct it).
REVIEW_ACTIONS: tuple[str, ...] = ("confirm", "reject", "relabel", "box", "comment")
ROLES: tuple[str, ...] = ("reviewer", "admin")

EMPTY_JSON = text("'{}'::jsonb")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Text, not VARCHAR(n): PostgreSQL stores both alike and a length limit is a business rule.
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        str: Text(),
        float: Double(),
        bytes: LargeBinary(),
        datetime: DateTime(timezone=True),
        uuid.UUID: Uuid(),
        dict[str, Any]: JSONB(),
    }


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _box_checks(prefix: str, *, nullable: bool) -> list[CheckConstraint]:
    """CHECKs for four box columns: normalized, non-empty (domain.Box), all set or all NULL.

    A CHECK passes when its expression is NULL, so completeness is spelled out with IS NULL.
    PostgreSQL orders NaN above every number, so `<= 1` also rejects NaN.
    """
    x1, y1, x2, y2 = (f"{prefix}{c}" for c in ("x1", "y1", "x2", "y2"))
    in_frame = f"0 <= {x1} AND {x1} < {x2} AND {x2} <= 1 AND 0 <= {y1} AND {y1} < {y2} AND {y2} <= 1"
    if not nullable:
        return [CheckConstraint(in_frame, name=f"{prefix}in_frame")]
    return [
        CheckConstraint(
            f"({x1} IS NULL AND {y1} IS NULL AND {x2} IS NULL AND {y2} IS NULL) OR "
            f"({x1} IS NOT NULL AND {y1} IS NOT NULL AND {x2} IS NOT NULL AND {y2} IS NOT NULL)",
            name=f"{prefix}complete",
        ),
        CheckConstraint(f"{x1} IS NULL OR ({in_frame})", name=f"{prefix}in_frame"),
    ]


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, Identity(), primary_key=True)


def _created_at() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


class Frame(Base):
    """A frame as a line produced it; the row exists once per producer `frame_id`."""

    __tablename__ = "frames"
    __table_args__ = (
        CheckConstraint("width IS NULL OR width > 0", name="width_positive"),
        CheckConstraint("height IS NULL OR height > 0", name="height_positive"),
        CheckConstraint("sequence_length >= 1", name="sequence_length_positive"),
        CheckConstraint(
            "(kafka_topic IS NULL AND kafka_partition IS NULL AND kafka_offset IS NULL) OR "
            "(kafka_topic IS NOT NULL AND kafka_partition IS NOT NULL AND kafka_offset IS NOT NULL)",
            name="kafka_source_complete",
        ),
    )

    frame_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    line: Mapped[str] = mapped_column(index=True)
    station: Mapped[str] = mapped_column(index=True)
    camera: Mapped[str]
    part_serial: Mapped[str]
    product: Mapped[str] = mapped_column(index=True)
    captured_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    mime_type: Mapped[str]
    # NULL when the producer did not know the size (the wire format's 0).
    width: Mapped[int | None]
    height: Mapped[int | None]
    blob_key: Mapped[str | None]
    sequence_length: Mapped[int] = mapped_column(server_default=text("1"))
    kafka_topic: Mapped[str | None]
    kafka_partition: Mapped[int | None]
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger)
    attributes: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)

    inspection: Mapped[Inspection | None] = relationship(back_populates="frame")
    blobs: Mapped[list[FrameBlob]] = relationship(
        back_populates="frame", order_by="FrameBlob.position",
        cascade="all, delete-orphan", passive_deletes=True,
    )


class FrameBlob(Base):
    """Where image `position` (0-based) of a frame is kept in the blob store: one row for a single
    image, one per frame of a sequence. `frames.blob_key` stays the first image's key."""

    __tablename__ = "frame_blobs"
    __table_args__ = (
        CheckConstraint("position >= 0", name="position_non_negative"),
        CheckConstraint("width IS NULL OR width > 0", name="width_positive"),
        CheckConstraint("height IS NULL OR height > 0", name="height_positive"),
    )

    frame_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("frames.frame_id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(primary_key=True)
    blob_key: Mapped[str]
    mime_type: Mapped[str]
    # NULL when the producer did not know the size (the wire format's 0), as on frames.
    width: Mapped[int | None]
    height: Mapped[int | None]

    frame: Mapped[Frame] = relationship(back_populates="blobs")


class Inspection(Base):
    """What the model concluded about one frame, and how long it took."""

    __tablename__ = "inspections"
    __table_args__ = (
        CheckConstraint(_in("verdict", VERDICTS), name="verdict"),
        # The contract: type "none" exactly when ok; an uncertain verdict may name a best guess.
        CheckConstraint(
            "verdict = 'uncertain' OR (verdict = 'ok') = (defect_type = 'none')",
            name="verdict_matches_type",
        ),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_unit"),
        CheckConstraint("operations >= 0", name="operations_non_negative"),
        CheckConstraint("latency_ms >= 0", name="latency_non_negative"),
        *_box_checks("box_", nullable=True),
        # The review queue: one keyset scan per verdict, least confident first, id breaks ties.
        Index("ix_inspections_verdict_confidence_id", "verdict", "confidence", "id"),
        Index("ix_inspections_model_name_model_version", "model_name", "model_version"),
    )

    id: Mapped[int] = _id()
    frame_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("frames.frame_id"), unique=True)
    verdict: Mapped[str]
    # Free text, not an enum: each product line configures its own taxonomy.
    defect_type: Mapped[str]
    confidence: Mapped[float]
    box_x1: Mapped[float | None]
    box_y1: Mapped[float | None]
    box_x2: Mapped[float | None]
    box_y2: Mapped[float | None]
    model_name: Mapped[str]
    model_version: Mapped[str]
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    operations: Mapped[int]
    latency_ms: Mapped[float]
    timings: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)  # review queue order

    frame: Mapped[Frame] = relationship(back_populates="inspection")
    steps: Mapped[list[Step]] = relationship(
        back_populates="inspection", order_by="Step.index",
        cascade="all, delete-orphan", passive_deletes=True,
    )
    reviews: Mapped[list[Review]] = relationship(
        back_populates="inspection", order_by="[Review.reviewed_at, Review.id]"
    )
    registered_model: Mapped[ModelVersion | None] = relationship()


class Step(Base):
    """One turn of the reasoning loop: the operation called, its arguments, the model's text."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("inspection_id", "index"),
        CheckConstraint('"index" >= 0', name="index_non_negative"),
        CheckConstraint("duration_ms >= 0", name="duration_non_negative"),
    )

    id: Mapped[int] = _id()
    inspection_id: Mapped[int] = mapped_column(
        ForeignKey("inspections.id", ondelete="CASCADE")
    )
    index: Mapped[int]
    # "crop_image_normalized", "select_frames", "answer", "error" (proto Step.operation).
    operation: Mapped[str]
    arguments: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    text: Mapped[str]
    error: Mapped[str | None]
    duration_ms: Mapped[float]

    inspection: Mapped[Inspection] = relationship(back_populates="steps")
    crops: Mapped[list[EvidenceCrop]] = relationship(
        back_populates="step", order_by="EvidenceCrop.ordinal",
        cascade="all, delete-orphan", passive_deletes=True,
    )


class EvidenceCrop(Base):
    """An image a step returned to the model: a crop of, or a frame selected from, the original."""

    __tablename__ = "evidence_crops"
    __table_args__ = (
        UniqueConstraint("step_id", "ordinal"),
        CheckConstraint("ordinal >= 0", name="ordinal_non_negative"),
        CheckConstraint("width > 0 AND height > 0", name="size_positive"),
        CheckConstraint("frame_index >= -1", name="frame_index_valid"),
        *_box_checks("box_", nullable=False),
    )

    id: Mapped[int] = _id()
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    image: Mapped[bytes]
    mime_type: Mapped[str]
    width: Mapped[int]
    height: Mapped[int]
    box_x1: Mapped[float]
    box_y1: Mapped[float]
    box_x2: Mapped[float]
    box_y2: Mapped[float]
    # Index into the frame's sequence; -1 for the single image (proto EvidenceImage.frame_index).
    frame_index: Mapped[int] = mapped_column(server_default=text("-1"))

    step: Mapped[Step] = relationship(back_populates="crops")


class Review(Base):
    """A QA decision on an inspection; rows are history, the latest per inspection wins."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(_in("decision", DECISIONS), name="decision"),
        CheckConstraint(_in("action", REVIEW_ACTIONS), name="action"),
        CheckConstraint(_in("corrected_verdict", VERDICTS), name="corrected_verdict"),
        *_box_checks("corrected_box_", nullable=True),
        # Serves the foreign key and "latest review of this inspection".
        Index("ix_reviews_inspection_id_reviewed_at", "inspection_id", "reviewed_at"),
    )

    id: Mapped[int] = _id()
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"))
    reviewer: Mapped[str]
    reviewed_at: Mapped[datetime] = mapped_column(server_default=func.now())
    decision: Mapped[str]
    # A correction carries the whole label after it (verdict, type, box), not only what changed.
    corrected_verdict: Mapped[str | None]
    corrected_type: Mapped[str | None]
    corrected_box_x1: Mapped[float | None]
    corrected_box_y1: Mapped[float | None]
    corrected_box_x2: Mapped[float | None]
    corrected_box_y2: Mapped[float | None]
    note: Mapped[str | None]
    # Idempotency key of the review form: a resubmission conflicts instead of adding a row.
    request_id: Mapped[uuid.UUID | None] = mapped_column(unique=True)
    # Last column: added by revision 0002 (ALTER TABLE appends).
    action: Mapped[str]

    inspection: Mapped[Inspection] = relationship(back_populates="reviews")


class ModelVersion(Base):
    """A registered model checkpoint with its lineage: parent model and training data."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        # What Triton answers for this model (its model name and version folder), so that every
        # inspection can name the row of the model that made it.
        UniqueConstraint("served_model", "served_version"),
        CheckConstraint("(served_model IS NULL) = (served_version IS NULL)", name="served_pair"),
    )

    id: Mapped[int] = _id()
    name: Mapped[str]
    version: Mapped[str]
    # "pretrain", "sft", "rl", "imported": open-ended, so no CHECK.
    stage: Mapped[str]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    dataset_snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    checkpoint_uri: Mapped[str]
    config: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    created_at: Mapped[datetime] = _created_at()
    # Last columns: added by revision 0004 (ALTER TABLE appends).
    served_model: Mapped[str | None]
    served_version: Mapped[str | None]

    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])
    dataset_snapshot: Mapped[DatasetSnapshot | None] = relationship()


class DatasetSnapshot(Base):
    """A frozen, hashed set of training or evaluation items and where its manifest lives."""

    __tablename__ = "dataset_snapshots"
    __table_args__ = (
        CheckConstraint("n_items >= 0", name="n_items_non_negative"),
        CheckConstraint("content_sha256 ~ '^[0-9a-f]{64}$'", name="content_sha256_hex"),
    )

    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(unique=True)
    created_at: Mapped[datetime] = _created_at()
    # "reviews", "fovealbench", "import:mvtec", ...
    source: Mapped[str]
    filters: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    n_items: Mapped[int]
    content_sha256: Mapped[str]
    manifest_uri: Mapped[str]


class User(Base):
    """Someone who signs in to the review dashboard; `reviews.reviewer` holds the username."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint("username ~ '^[A-Za-z0-9_.@-]{1,64}$'", name="username_format"),
    )

    id: Mapped[int] = _id()
    username: Mapped[str] = mapped_column(unique=True)
    password_hash: Mapped[str]  # argon2id, in its PHC string form
    role: Mapped[str]
    # Disabled, never deleted: their reviews keep naming them.
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = _created_at()
    last_login_at: Mapped[datetime | None]


class UserSession(Base):
    """A signed-in browser: the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "user_sessions"
    __table_args__ = (CheckConstraint("token_sha256 ~ '^[0-9a-f]{64}$'", name="token_sha256_hex"),)

    id: Mapped[int] = _id()
    token_sha256: Mapped[str] = mapped_column(unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _created_at()
    expires_at: Mapped[datetime]

    user: Mapped[User] = relationship()


class LineThreshold(Base):
    """Per production line: `ok` verdicts less confident than `review_below` join the review queue."""

    __tablename__ = "line_thresholds"
    __table_args__ = (CheckConstraint("review_below >= 0 AND review_below <= 1", name="review_below_unit"),)

    line: Mapped[str] = mapped_column(primary_key=True)
    review_below: Mapped[float]
    updated_by: Mapped[str]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

"""Initial schema: frames, inspections, steps, evidence crops, reviews, model versions, snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

A frozen copy of `foveal/storage/models.py` as first released: it spells out every column,
constraint and index itself (it never imports the models, which will move on), and
`tests/storage` checks that upgrading an empty database yields exactly the models' schema.
Downgrade drops everything upgrade created, children before parents.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY_JSON = sa.text("'{}'::jsonb")
NOW = sa.text("now()")


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False)


def _json(name: str) -> sa.Column[dict[str, object]]:
    return sa.Column(name, postgresql.JSONB(), server_default=EMPTY_JSON, nullable=False)


def _box(prefix: str, *, nullable: bool) -> list[sa.Column[float]]:
    return [sa.Column(f"{prefix}{c}", sa.Double(), nullable=nullable) for c in ("x1", "y1", "x2", "y2")]


def upgrade() -> None:
    op.create_table(
        "dataset_snapshots",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        _json("filters"),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.Text(), nullable=False),
        sa.Column("manifest_uri", sa.Text(), nullable=False),
        sa.CheckConstraint("n_items >= 0", name=op.f("ck_dataset_snapshots_n_items_non_negative")),
        sa.CheckConstraint(
            "content_sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_dataset_snapshots_content_sha256_hex")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_snapshots")),
        sa.UniqueConstraint("name", name=op.f("uq_dataset_snapshots_name")),
    )

    op.create_table(
        "frames",
        sa.Column("frame_id", sa.Uuid(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("station", sa.Text(), nullable=False),
        sa.Column("camera", sa.Text(), nullable=False),
        sa.Column("part_serial", sa.Text(), nullable=False),
        sa.Column("product", sa.Text(), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("mime_type", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("blob_key", sa.Text(), nullable=True),
        sa.Column("sequence_length", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("kafka_topic", sa.Text(), nullable=True),
        sa.Column("kafka_partition", sa.Integer(), nullable=True),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=True),
        _json("attributes"),
        sa.CheckConstraint("width IS NULL OR width > 0", name=op.f("ck_frames_width_positive")),
        sa.CheckConstraint("height IS NULL OR height > 0", name=op.f("ck_frames_height_positive")),
        sa.CheckConstraint("sequence_length >= 1", name=op.f("ck_frames_sequence_length_positive")),
        sa.CheckConstraint(
            "(kafka_topic IS NULL AND kafka_partition IS NULL AND kafka_offset IS NULL) OR "
            "(kafka_topic IS NOT NULL AND kafka_partition IS NOT NULL AND kafka_offset IS NOT NULL)",
            name=op.f("ck_frames_kafka_source_complete"),
        ),
        sa.PrimaryKeyConstraint("frame_id", name=op.f("pk_frames")),
    )
    op.create_index(op.f("ix_frames_line"), "frames", ["line"])
    op.create_index(op.f("ix_frames_station"), "frames", ["station"])
    op.create_index(op.f("ix_frames_product"), "frames", ["product"])

    op.create_table(
        "model_versions",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("dataset_snapshot_id", sa.BigInteger(), nullable=True),
        sa.Column("checkpoint_uri", sa.Text(), nullable=False),
        _json("config"),
        _json("metrics"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"],
            name=op.f("fk_model_versions_parent_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_snapshot_id"], ["dataset_snapshots.id"],
            name=op.f("fk_model_versions_dataset_snapshot_id_dataset_snapshots"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_versions_name_version")),
    )

    op.create_table(
        "inspections",
        _id(),
        sa.Column("frame_id", sa.Uuid(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("defect_type", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        *_box("box_", nullable=True),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("model_version_id", sa.BigInteger(), nullable=True),
        sa.Column("operations", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        _json("timings"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "verdict IN ('ok', 'defect', 'uncertain')", name=op.f("ck_inspections_verdict")
        ),
        sa.CheckConstraint(
            "verdict = 'uncertain' OR (verdict = 'ok') = (defect_type = 'none')",
            name=op.f("ck_inspections_verdict_matches_type"),
        ),
        sa.CheckConstraint(
            "confidence >= 0 AND confidence <= 1", name=op.f("ck_inspections_confidence_unit")
        ),
        sa.CheckConstraint("operations >= 0", name=op.f("ck_inspections_operations_non_negative")),
        sa.CheckConstraint("latency_ms >= 0", name=op.f("ck_inspections_latency_non_negative")),
        sa.CheckConstraint(
            "(box_x1 IS NULL AND box_y1 IS NULL AND box_x2 IS NULL AND box_y2 IS NULL) OR "
            "(box_x1 IS NOT NULL AND box_y1 IS NOT NULL AND box_x2 IS NOT NULL AND box_y2 IS NOT NULL)",
            name=op.f("ck_inspections_box_complete"),
        ),
        sa.CheckConstraint(
            "box_x1 IS NULL OR (0 <= box_x1 AND box_x1 < box_x2 AND box_x2 <= 1 "
            "AND 0 <= box_y1 AND box_y1 < box_y2 AND box_y2 <= 1)",
            name=op.f("ck_inspections_box_in_frame"),
        ),
        sa.ForeignKeyConstraint(
            ["frame_id"], ["frames.frame_id"], name=op.f("fk_inspections_frame_id_frames")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"],
            name=op.f("fk_inspections_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspections")),
        sa.UniqueConstraint("frame_id", name=op.f("uq_inspections_frame_id")),
    )
    op.create_index(
        op.f("ix_inspections_verdict_confidence"), "inspections", ["verdict", "confidence"]
    )
    op.create_index(op.f("ix_inspections_created_at"), "inspections", ["created_at"])
    op.create_index(
        op.f("ix_inspections_model_name_model_version"), "inspections",
        ["model_name", "model_version"],
    )

    op.create_table(
        "steps",
        _id(),
        sa.Column("inspection_id", sa.BigInteger(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        _json("arguments"),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.CheckConstraint('"index" >= 0', name=op.f("ck_steps_index_non_negative")),
        sa.CheckConstraint("duration_ms >= 0", name=op.f("ck_steps_duration_non_negative")),
        sa.ForeignKeyConstraint(
            ["inspection_id"], ["inspections.id"], ondelete="CASCADE",
            name=op.f("fk_steps_inspection_id_inspections"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
        sa.UniqueConstraint("inspection_id", "index", name=op.f("uq_steps_inspection_id_index")),
    )

    op.create_table(
        "evidence_crops",
        _id(),
        sa.Column("step_id", sa.BigInteger(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.Column("mime_type", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        *_box("box_", nullable=False),
        sa.Column("frame_index", sa.Integer(), server_default=sa.text("-1"), nullable=False),
        sa.CheckConstraint("ordinal >= 0", name=op.f("ck_evidence_crops_ordinal_non_negative")),
        sa.CheckConstraint("width > 0 AND height > 0", name=op.f("ck_evidence_crops_size_positive")),
        sa.CheckConstraint("frame_index >= -1", name=op.f("ck_evidence_crops_frame_index_valid")),
        sa.CheckConstraint(
            "0 <= box_x1 AND box_x1 < box_x2 AND box_x2 <= 1 "
            "AND 0 <= box_y1 AND box_y1 < box_y2 AND box_y2 <= 1",
            name=op.f("ck_evidence_crops_box_in_frame"),
        ),
        sa.ForeignKeyConstraint(
            ["step_id"], ["steps.id"], ondelete="CASCADE",
            name=op.f("fk_evidence_crops_step_id_steps"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evidence_crops")),
        sa.UniqueConstraint("step_id", "ordinal", name=op.f("uq_evidence_crops_step_id_ordinal")),
    )

    op.create_table(
        "reviews",
        _id(),
        sa.Column("inspection_id", sa.BigInteger(), nullable=False),
        sa.Column("reviewer", sa.Text(), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("corrected_verdict", sa.Text(), nullable=True),
        sa.Column("corrected_type", sa.Text(), nullable=True),
        *_box("corrected_box_", nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.CheckConstraint("decision IN ('confirm', 'correct')", name=op.f("ck_reviews_decision")),
        sa.CheckConstraint(
            "corrected_verdict IN ('ok', 'defect', 'uncertain')",
            name=op.f("ck_reviews_corrected_verdict"),
        ),
        sa.CheckConstraint(
            "(corrected_box_x1 IS NULL AND corrected_box_y1 IS NULL "
            "AND corrected_box_x2 IS NULL AND corrected_box_y2 IS NULL) OR "
            "(corrected_box_x1 IS NOT NULL AND corrected_box_y1 IS NOT NULL "
            "AND corrected_box_x2 IS NOT NULL AND corrected_box_y2 IS NOT NULL)",
            name=op.f("ck_reviews_corrected_box_complete"),
        ),
        sa.CheckConstraint(
            "corrected_box_x1 IS NULL OR (0 <= corrected_box_x1 "
            "AND corrected_box_x1 < corrected_box_x2 AND corrected_box_x2 <= 1 "
            "AND 0 <= corrected_box_y1 AND corrected_box_y1 < corrected_box_y2 "
            "AND corrected_box_y2 <= 1)",
            name=op.f("ck_reviews_corrected_box_in_frame"),
        ),
        sa.ForeignKeyConstraint(
            ["inspection_id"], ["inspections.id"], name=op.f("fk_reviews_inspection_id_inspections")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
        sa.UniqueConstraint("request_id", name=op.f("uq_reviews_request_id")),
    )
    op.create_index(
        op.f("ix_reviews_inspection_id_reviewed_at"), "reviews", ["inspection_id", "reviewed_at"]
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    op.drop_table("reviews")
    op.drop_table("evidence_crops")
    op.drop_table("steps")
    op.drop_table("inspections")
    op.drop_table("model_versions")
    op.drop_table("frames")
    op.drop_table("dataset_snapshots")

"""Frame blobs: where every image of a frame is kept, in order, so a sequence keeps all its frames.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Adds `frame_blobs` (frame_id, position, blob_key, mime_type, width, height; primary key
(frame_id, position)), one row per image of a frame: one for a single image, one per frame of a
sequence. `frames.blob_key` stays as it was, the first image's key. Upgrade copies every existing
`frames.blob_key` into position 0 (older sequences only ever kept their first frame, so that is
all there is to copy); downgrade drops the table, and `frames.blob_key` still names the first
image. Like 0001 it spells everything out and never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "frame_blobs",
        sa.Column("frame_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.Text(), nullable=False),
        sa.Column("mime_type", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.CheckConstraint("position >= 0", name=op.f("ck_frame_blobs_position_non_negative")),
        sa.CheckConstraint("width IS NULL OR width > 0", name=op.f("ck_frame_blobs_width_positive")),
        sa.CheckConstraint("height IS NULL OR height > 0", name=op.f("ck_frame_blobs_height_positive")),
        sa.ForeignKeyConstraint(["frame_id"], ["frames.frame_id"],
                                name=op.f("fk_frame_blobs_frame_id_frames"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("frame_id", "position", name=op.f("pk_frame_blobs")),
    )
    op.execute("INSERT INTO frame_blobs (frame_id, position, blob_key, mime_type, width, height) "
               "SELECT frame_id, 0, blob_key, mime_type, width, height FROM frames "
               "WHERE blob_key IS NOT NULL")


def downgrade() -> None:
    op.drop_table("frame_blobs")

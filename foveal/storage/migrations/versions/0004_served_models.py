"""Served models: which `model_versions` row made each inspection.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

Adds `model_versions.served_model` and `served_version`: the model name and version Triton
answers for a registered model (its folder in the model repository), unique as a pair and set
together or not at all. Every inspection names the Triton model and version that made it, so
with them `inspections.model_version_id` can be filled in. Upgrade registers each pair the
inspections already name as a model of stage `served` (checkpoint `triton://<model>/<version>`)
and links those inspections to it; downgrade unlinks what it linked, drops those rows and the
columns. Like 0001 it spells everything out and never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("served_model", sa.Text(), nullable=True))
    op.add_column("model_versions", sa.Column("served_version", sa.Text(), nullable=True))
    op.create_unique_constraint(op.f("uq_model_versions_served_model_served_version"), "model_versions",
                                ["served_model", "served_version"])
    op.create_check_constraint(op.f("ck_model_versions_served_pair"), "model_versions",
                               "(served_model IS NULL) = (served_version IS NULL)")
    op.execute("INSERT INTO model_versions (name, version, stage, checkpoint_uri, served_model,"
               " served_version) SELECT DISTINCT model_name, model_version, 'served', "
               "'triton://' || model_name || '/' || model_version, model_name, model_version "
               "FROM inspections ON CONFLICT DO NOTHING")
    op.execute("UPDATE inspections SET model_version_id = m.id FROM model_versions m "
               "WHERE inspections.model_version_id IS NULL AND m.served_model = inspections.model_name "
               "AND m.served_version = inspections.model_version")


def downgrade() -> None:
    op.execute("UPDATE inspections SET model_version_id = NULL FROM model_versions m "
               "WHERE inspections.model_version_id = m.id AND m.stage = 'served' "
               "AND NOT EXISTS (SELECT 1 FROM model_versions c WHERE c.parent_id = m.id)")
    op.execute("DELETE FROM model_versions m WHERE m.stage = 'served' AND NOT EXISTS "
               "(SELECT 1 FROM model_versions c WHERE c.parent_id = m.id) AND NOT EXISTS "
               "(SELECT 1 FROM inspections i WHERE i.model_version_id = m.id)")
    op.drop_constraint(op.f("ck_model_versions_served_pair"), "model_versions", type_="check")
    op.drop_constraint(op.f("uq_model_versions_served_model_served_version"), "model_versions",
                       type_="unique")
    op.drop_column("model_versions", "served_version")
    op.drop_column("model_versions", "served_model")

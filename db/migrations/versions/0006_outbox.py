"""The outbox: when a job's dispatch was handed to the broker, when an item was last claimed

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    # jobs committed before this migration were published (or are found by `atelier reconcile`)
    op.execute("UPDATE jobs SET published_at = created_at")
    # what the reconciler reads every 30 s: jobs not yet expanded into fetches
    op.create_index(
        "ix_jobs_undispatched", "jobs", ["created_at"], postgresql_where=sa.text("dispatched_at IS NULL")
    )
    op.add_column("items", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_model_results_pending",
        "model_results",
        ["model_name"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_model_results_pending", table_name="model_results")
    op.drop_column("items", "claimed_at")
    op.drop_index("ix_jobs_undispatched", table_name="jobs")
    op.drop_column("jobs", "published_at")

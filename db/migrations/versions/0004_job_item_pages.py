"""job item pages: items indexed by (job_id, position) and (job_id, status, position)

A job's items are read a page at a time in submission order (``db.jobs.job_items``, keyset on the
position), all of them or those in one state; the progress read counts the items that are not done from
the second index. It replaces (job_id, status), whose every use it serves.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_job_position", "items", ["job_id", "position"])
    op.create_index("ix_items_job_status_position", "items", ["job_id", "status", "position"])
    op.drop_index("ix_items_job_status", table_name="items")


def downgrade() -> None:
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
    op.drop_index("ix_items_job_status_position", table_name="items")
    op.drop_index("ix_items_job_position", table_name="items")

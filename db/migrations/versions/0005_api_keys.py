"""api_keys: the gateway's API keys, stored as SHA-256 hashes with a display prefix

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", ARRAY(sa.String(16)), nullable=False),
        sa.Column("rate_limit", sa.String(64)),
        sa.Column("items_per_day", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
        sa.CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY['submit', 'read', 'admin']::varchar[]",
            name="ck_api_keys_scopes",
        ),
        sa.CheckConstraint("items_per_day IS NULL OR items_per_day >= 0", name="ck_api_keys_items_per_day"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")

"""The migrations are the schema: they match the models, apply, and roll back cleanly."""

from __future__ import annotations

import uuid

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from db.migrate import downgrade, upgrade
from db.models import Base
from tests.support.infra import Infra


def _scratch_database(infra: Infra) -> str:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    admin = infra.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    path, _, query = infra.database_url.partition("?")
    return f"{path.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def test_models_and_migrations_agree(infra: Infra) -> None:
    engine = create_engine(infra.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_downgrade_upgrade(infra: Infra) -> None:
    url = _scratch_database(infra)
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("embeddings")}
        assert "ix_embeddings_hnsw" in indexes
        method = conn.execute(
            text(
                "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam"
                " WHERE c.relname = 'ix_embeddings_hnsw'"
            )
        ).scalar_one()
        assert method == "hnsw"
    downgrade(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    upgrade(url)
    with engine.connect() as conn:
        assert {"jobs", "items", "images", "model_results", "embeddings", "image_records"} <= set(
            inspect(conn).get_table_names()
        )
    engine.dispose()

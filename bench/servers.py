"""A throw-away home with fresh embedded PostgreSQL and Valkey servers, owned by the benchmark.

The benchmark starts the servers itself (with the Stack's own ``start_postgres`` / ``start_redis``) and
exports their URLs, so every ``Stack`` it opens reuses them and only starts worker or gateway processes;
it also knows the postmaster's pid, which the CPU meter needs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.settings import get_settings
from db.session import reset_engine
from worker.settings import get_worker_settings


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str
    postmaster_pid: int


@contextmanager
def bench_home() -> Iterator[Path]:
    """A temporary directory, removed afterwards; kept, with its logs, when the benchmark failed."""
    home = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    try:
        yield home
    except BaseException:
        print(f"benchmark failed; its logs are kept in {home / 'logs'}", file=sys.stderr)
        raise
    shutil.rmtree(home, ignore_errors=True)


@contextmanager
def embedded_servers(home: Path) -> Iterator[Servers]:
    """Start PostgreSQL+pgvector and Valkey under ``home``; both are stopped on exit, also on error."""
    from atelier.stack import start_postgres, start_redis

    with ExitStack() as stack:
        postgres, database_url = start_postgres(home / "pg")
        stack.callback(postgres.cleanup)
        valkey, redis_url = start_redis(home / "valkey")
        stack.callback(valkey.stop)
        pid = postgres.get_pid()
        if pid is None:
            raise RuntimeError(f"embedded PostgreSQL in {home / 'pg'} reports no postmaster pid")
        yield Servers(database_url, redis_url, pid)


def configure(home: Path, servers: Servers, allow_hosts: list[str]) -> None:
    """Point this process and every process it starts at ``servers``; ``allow_hosts`` ("host:port") are
    exempt from the fetcher's address checks (the local image server)."""
    os.environ.update(
        {
            "ATELIER_DATABASE_URL": servers.database_url,
            "ATELIER_REDIS_URL": servers.redis_url,
            "ATELIER_BLOB_DIR": str(home / "blobs"),
            "ATELIER_MODEL_REPOSITORY": str(home / "models"),
            "ATELIER_FETCH__ALLOW_HOSTS": json.dumps(allow_hosts),
        }
    )
    get_settings.cache_clear()
    get_worker_settings.cache_clear()
    reset_engine()

"""Progress reads at size: p50 latency and bytes of ``GET /v1/jobs/{id}`` and of one items page, for a job of
N items inserted directly with SQL (no pipeline: only the read is measured), half of them done.

    PYTHONPATH=$PWD python -m bench.progress --items 10000 1000000

Starts its own PostgreSQL (``atelier.stack.start_postgres``) unless ATELIER_DATABASE_URL names one.
``--items-limit 10000`` measures the read as the old default was (every item listed, up to 10,000).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

log = logging.getLogger("bench.progress")

READS = 50


def _insert_job(items: int) -> str:
    from db.models import uuid7
    from db.session import get_engine

    job_id = str(uuid7())
    done = items // 2
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, models, item_count, pending_items, options) "
                "VALUES (:id, ARRAY['properties'], :n, :pending, '{}')"
            ),
            {"id": job_id, "n": items, "pending": items - done},
        )
        conn.execute(
            text(
                "INSERT INTO items (id, job_id, position, url, status, expected, skipped, attempts) "
                "SELECT gen_random_uuid(), :id, i, 'http://example.com/' || i, "
                "CASE WHEN i < :done THEN 'done'::item_status ELSE 'queued'::item_status END, "
                "'{}', '{}', 0 FROM generate_series(0, :n - 1) AS i"
            ),
            {"id": job_id, "n": items, "done": done},
        )
        conn.execute(text("ANALYZE items"))
    return job_id


def _p50(client: object, url: str) -> tuple[float, int]:
    timings, size = [], 0
    for _ in range(READS):
        began = time.perf_counter()
        response = client.get(url)  # type: ignore[attr-defined]
        timings.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
        size = len(response.content)
    return statistics.median(timings), size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[10_000])
    parser.add_argument("--items-limit", type=int, default=None, help="ask the job read for this many items")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    server = None
    if "ATELIER_DATABASE_URL" not in os.environ:
        from atelier.stack import start_postgres

        home = Path(tempfile.mkdtemp(prefix="atelier-bench-pg-"))
        server, url = start_postgres(home / "pg", database="atelier_bench")
        os.environ["ATELIER_DATABASE_URL"] = url
    try:
        from db.migrate import upgrade

        upgrade()
        from fastapi.testclient import TestClient

        from gateway.app import app

        with TestClient(app) as client:
            for n in args.items:
                job_id = _insert_job(n)
                query = f"?items_limit={args.items_limit}" if args.items_limit is not None else ""
                job_ms, job_bytes = _p50(client, f"/v1/jobs/{job_id}{query}")
                page_ms, page_bytes = _p50(client, f"/v1/jobs/{job_id}/items?after={n // 2}&limit=100")
                log.info(
                    "%9d items: job read p50 %.1f ms, %d bytes; items page (100) p50 %.1f ms, %d bytes",
                    n,
                    job_ms,
                    job_bytes,
                    page_ms,
                    page_bytes,
                )
    finally:
        if server is not None:
            server.stop() if hasattr(server, "stop") else server.cleanup()


if __name__ == "__main__":
    main()

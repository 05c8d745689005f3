"""Soak: 10,000 URLs through the embedded stack, a share of them failing in each transient and
permanent way, with a worker SIGKILLed at random twice. Every item must end, and the counts must
reconcile exactly with what each URL was made to do. Production settings throughout (retries,
backoff, timeouts, visibility timeouts); ``atelier up``'s supervision restarts the killed workers.

    .venv/bin/python -m bench.soak                 # 10,000 URLs, ~15-25 min on 2 cores
    .venv/bin/python -m bench.soak --urls 1000     # a quick look

Prints a report and writes it as JSON to ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.servers import bench_home
from synthetic.imageserver import Response, serve

# what each URL is made to do: (share of the URLs, the item's expected end, its error code(s))
KINDS: dict[str, tuple[float, str, str | None | frozenset[str]]] = {
    "ok": (0.84, "done", None),
    "flaky_503_twice": (0.03, "done", None),  # transient, recovers on the third attempt
    "http_503": (0.03, "failed", "http_error"),  # transient for good: ends after the retries
    "http_429": (0.01, "failed", "http_error"),
    "http_404": (0.03, "failed", "http_error"),  # permanent
    "not_an_image": (0.02, "failed", "not_an_image"),
    "invalid_url": (0.015, "failed", "invalid_url"),
    "private": (0.015, "failed", "blocked_private"),
    # connects, never answers: each attempt waits out the read timeout, or, past SLOW_AFTER_S with the slow
    # lane's slots taken by its like, gives up as slow_host
    "silent": (0.002, "failed", frozenset({"fetch_timeout", "slow_host", "deadline_exceeded"})),
}


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((96, 96), Image.Resampling.BILINEAR).save(buffer, "PNG")
    return buffer.getvalue()


def _flaky(body: bytes, failures: int) -> Callable[[], Response]:
    seen = [0]

    def respond() -> Response:
        seen[0] += 1
        if seen[0] <= failures:
            return 503, {}, b"busy"
        return 200, {"Content-Type": "image/png"}, body

    return respond


@contextmanager
def _silent() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _plan(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    return [rng.choices(kinds, weights)[0] for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args(argv)
    report = run(args.urls, args.kills, args.seed)
    text = json.dumps(report, indent=2)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")


def run(n: int, kills: int, seed: int) -> dict[str, Any]:
    from atelier.stack import DEFAULT_WORKERS, Stack

    plan = _plan(n, seed)
    with bench_home() as home, serve() as images, _silent() as silent_port:
        for name in ("ATELIER_DATABASE_URL", "ATELIER_REDIS_URL"):
            os.environ.pop(name, None)
        os.environ["ATELIER_FETCH__ALLOW_HOSTS"] = json.dumps([images.authority, f"127.0.0.1:{silent_port}"])
        os.environ["ATELIER_BLOB_DIR"] = str(home / "blobs")
        urls = []
        for i, kind in enumerate(plan):
            path = f"/{kind}/{i}.png"
            if kind == "ok":
                images.routes[path] = (200, {"Content-Type": "image/png"}, _png(seed * 1_000_003 + i))
            elif kind == "flaky_503_twice":
                images.routes[path] = _flaky(_png(seed * 1_000_003 + i), 2)
            elif kind.startswith("http_"):
                images.routes[path] = (int(kind[5:]), {}, b"no")
            elif kind == "not_an_image":
                images.routes[path] = (200, {"Content-Type": "image/png"}, b"<html>not an image</html>")
            urls.append(
                {
                    "invalid_url": f"http://{'x' * 70}.example/{i}.png",
                    "private": f"http://10.{i % 250}.0.1/{i}.png",
                    "silent": f"http://127.0.0.1:{silent_port}/{i}.png",
                }.get(kind, images.url(path))
            )
        with Stack(home, workers=DEFAULT_WORKERS) as stack:
            from common.schemas import ItemIn
            from db.session import session_factory
            from worker.broker import submit_job

            started = time.monotonic()
            job_ids = []
            for chunk in range(0, n, 1000):  # ten requests of 1,000, as a client would send them
                with session_factory()() as session:  # submit_job commits, as the gateway's does
                    created = submit_job(
                        session,
                        items=[
                            ItemIn(url=url, external_id=str(chunk + j))
                            for j, url in enumerate(urls[chunk : chunk + 1000])
                        ],
                        models=["properties"],
                    )
                job_ids.append(created.job_id)
            kill_at = sorted(random.Random(seed).uniform(20, 120) for _ in range(kills))
            killed: list[dict[str, Any]] = []
            while True:
                stack.supervise()
                elapsed = time.monotonic() - started
                if kill_at and elapsed >= kill_at[0]:
                    kill_at.pop(0)
                    victim = random.Random(seed + len(killed)).choice(stack._processes)
                    assert victim.process is not None
                    os.kill(victim.process.pid, signal.SIGKILL)
                    killed.append({"worker": victim.name, "at_s": round(elapsed, 1), "counts": _counts()})
                if _unfinished(job_ids) == 0:
                    break
                if elapsed > 3600:
                    raise RuntimeError(f"not finished after an hour: {_counts()}")
                time.sleep(1.0)
            took = time.monotonic() - started
            restarts = {child.name: child.restarts for child in stack._processes}
            return _reconcile(plan, job_ids, took, killed, restarts)


def _counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from db.models import Item
    from db.session import transaction

    with transaction() as session:
        rows = session.execute(select(Item.status, func.count()).group_by(Item.status)).all()
    return {status.value: n for status, n in rows}


def _unfinished(job_ids: list[uuid.UUID]) -> int:
    from sqlalchemy import func, select

    from db.models import Job
    from db.session import transaction

    with transaction() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Job).where(Job.id.in_(job_ids), Job.finished_at.is_(None))
            )
            or 0
        )


def _reconcile(
    plan: list[str],
    job_ids: list[uuid.UUID],
    took: float,
    killed: list[dict[str, Any]],
    restarts: dict[str, int],
) -> dict[str, Any]:
    from sqlalchemy import func, select

    from db.models import Item, Job, ModelResult
    from db.session import transaction

    with transaction() as session:
        rows = session.execute(
            select(Item.external_id, Item.status, Item.error_code).where(Item.job_id.in_(job_ids))
        ).all()
        pending = session.scalar(select(func.sum(Job.pending_items)).where(Job.id.in_(job_ids)))
        duplicates = session.execute(
            select(ModelResult.image_id, ModelResult.model_name, ModelResult.model_version)
            .group_by(ModelResult.image_id, ModelResult.model_name, ModelResult.model_version)
            .having(func.count() > 1)
        ).all()
    got = {int(r.external_id): (r.status.value, r.error_code) for r in rows}
    mismatched: Counter[str] = Counter()
    for i, kind in enumerate(plan):
        _, status, code = KINDS[kind]
        ended = got.get(i)
        codes = code if isinstance(code, frozenset) else {code}
        if ended is None or ended[0] != status or ended[1] not in codes:
            mismatched[f"{kind}: expected {status}/{code}, got {got.get(i)}"] += 1
    return {
        "urls": len(plan),
        "seconds": round(took, 1),
        "items_per_s": round(len(plan) / took, 1),
        "planned": dict(Counter(plan)),
        "ended": dict(Counter(f"{s}/{c}" if c else s for s, c in got.values())),
        "not_terminal": sum(1 for s, _ in got.values() if s not in ("done", "failed")),
        "pending_items_left": int(pending or 0),
        "duplicate_results": len(duplicates),
        "mismatched": dict(mismatched),
        "killed": killed,
        "restarts": restarts,
        "exact": not mismatched and not duplicates and len(got) == len(plan) and not pending,
    }


if __name__ == "__main__":
    main()

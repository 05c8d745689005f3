"""Scaling one queue: a backlog of analyses drained by one and by two worker processes, side by side.

The embedded stack (what ``atelier up`` runs) with the orchestrator; then, per run, K fresh ``properties``
workers (the command of ``atelier up`` and of the worker image) start, answer a control ping, and stop
consuming (``cancel_consumer``). A job of N distinct images is fetched into the ``properties`` queue; when
all N messages wait there, the workers consume again (``add_consumer``) and the clock runs until the
job is finished. Runs alternate 1, 2, 2, 1, ... so that drift on a noisy machine falls on both.

    .venv/bin/python -m bench.scaling                    # 2 rounds of 200 images, ~3 min
    .venv/bin/python -m bench.scaling --images 50 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path
from statistics import median
from typing import Any

from atelier.stack import DEFAULT_WORKERS, Stack, WorkerPlan, worker_command
from bench.orchestration import _wait_finished, serve_images
from bench.pipeline import _interrupt, _machine, _progress, emit
from bench.servers import bench_home, configure, embedded_servers
from bench.synthetic import garment_jpegs
from common.metrics import queue_keys
from common.settings import get_settings
from synthetic.imageserver import serve

DEFAULT_JSON = Path(__file__).with_name("results") / "scaling.json"
QUEUE_WAIT_S = 300.0
SERVICE = "properties"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="analyses in each backlog")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (1 then 2 workers, reversed)")
    parser.add_argument("--max-workers", type=int, default=2, help="compare 1 with this many workers")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    emit(args, _machine(), measure(args.images, args.rounds, args.max_workers), format_report)


def measure(images: int, rounds: int, max_workers: int) -> dict[str, Any]:
    order = [k for r in range(rounds) for k in ((1, max_workers) if r % 2 == 0 else (max_workers, 1))]
    runs: dict[int, list[float]] = {1: [], max_workers: []}
    with bench_home() as home, serve() as image_server, embedded_servers(home) as servers:
        configure(home, servers, allow_hosts=[image_server.authority])
        with Stack(home, workers=DEFAULT_WORKERS[:1]) as stack:  # the orchestrator only
            for i, workers in enumerate(order):
                jpegs = garment_jpegs(images, seed=1000 + i)  # distinct images: nothing is reused
                urls = serve_images(image_server, jpegs, prefix=f"run{i}")
                seconds = drain(stack, home, urls, workers)
                runs[workers].append(seconds)
                _progress(f"run {i + 1}/{len(order)}: {workers} worker(s), {images} images, {seconds:.1f} s")
    one, many = median(runs[1]), median(runs[max_workers])
    return {
        "images": images,
        "runs_s": {str(k): v for k, v in runs.items()},
        "images_per_s": {"1": images / one, str(max_workers): images / many},
        "speedup": one / many,
        "per_round_speedup": [a / b for a, b in zip(runs[1], runs[max_workers], strict=True)],
    }


def drain(stack: Stack, home: Path, urls: list[str], workers: int) -> float:
    """Seconds K ``properties`` workers take to drain a backlog of ``len(urls)`` analyses."""
    from common.schemas import ItemIn
    from db.session import session_factory
    from worker.broker import submit_job
    from worker.celery_app import app

    queue = get_settings().queues.properties
    processes = [_start_worker(home, n) for n in range(workers)]
    try:
        names = _wait_for_workers(app, processes, workers)
        app.control.cancel_consumer(queue, destination=names, reply=True, timeout=10)
        with session_factory()() as session:
            created = submit_job(session, items=[ItemIn(url=u) for u in urls], models=[SERVICE])
        _wait_for_backlog(queue, len(urls))
        started = time.perf_counter()
        app.control.add_consumer(queue, destination=names, reply=True, timeout=10)
        _wait_finished(stack, created.job_id)
        return time.perf_counter() - started
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def _start_worker(home: Path, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ATELIER_WORKER_METRICS_PORT": "0"}
    with (home / "logs" / f"bench-{SERVICE}-{n}.log").open("ab") as log:
        return subprocess.Popen(
            worker_command(WorkerPlan(SERVICE)), stdout=log, stderr=subprocess.STDOUT, env=env
        )


def _wait_for_workers(app: Any, processes: list[subprocess.Popen[bytes]], count: int) -> list[str]:
    """The node names of the ``count`` properties workers, once each answers a ping."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a {SERVICE} worker exited with {process.returncode}")
        answers = app.control.ping(timeout=1.0)
        names = sorted(name for answer in answers for name in answer if name.startswith(f"{SERVICE}-"))
        if len(names) == count:
            return names
    raise TimeoutError(f"{count} {SERVICE} workers did not answer within 120 s")


def _wait_for_backlog(queue: str, expected: int) -> None:
    import redis

    client = redis.Redis.from_url(get_settings().redis_url)
    deadline = time.monotonic() + QUEUE_WAIT_S
    while sum(client.llen(key) for key in queue_keys(queue)) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {queue} queue did not reach {expected} messages")
        time.sleep(0.2)


def format_report(result: dict[str, Any]) -> str:
    rates = result["images_per_s"]
    lines = [
        f"Draining a backlog of {result['images']} {SERVICE} analyses "
        f"({result['machine']['cpu_cores']} cores)",
        "",
        "workers  runs (s)                images/s (median)",
    ]
    for k, runs in result["runs_s"].items():
        lines.append(f"{k:>7}  {', '.join(f'{s:.1f}' for s in runs):<22}  {rates[k]:.1f}")
    per_round = ", ".join(f"{s:.2f}" for s in result["per_round_speedup"])
    lines += ["", f"speedup: {result['speedup']:.2f}x (per round: {per_round})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

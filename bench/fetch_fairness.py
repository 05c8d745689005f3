"""Whether endless image hosts starve ordinary ones: ordinary items' latency beside N never-ending URLs.

    python -m bench.fetch_fairness [--hostile N] [--ordinary M] [--json PATH]

Three runs, each on a fresh embedded stack with the default workers (the orchestrator's 8 fetch threads
and ``properties``): (1) M ordinary URLs alone; (2) N never-ending URLs, then the M ordinary ones, with
the slow lane off (``ATELIER_FETCH__SLOW_AFTER_S`` = the deadline: every fetch may run to its deadline,
as before the lane); (3) the same with the default settings. An ordinary item's latency is its row's
``fetched_at - created_at`` (waiting for a fetch thread, plus the fetch) and ``finished_at - created_at``.
The numbers that matter are the ratios of (2) and (3) to (1), taken in one run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.pipeline import _interrupt, _machine, emit
from bench.servers import bench_home, configure, embedded_servers
from bench.synthetic import garment_jpegs
from common.settings import FetchSettings
from synthetic.imageserver import ImageServer, serve

DEFAULT_JSON = Path(__file__).with_name("results") / "fetch_fairness.json"
MODELS = ["properties"]
# a second loopback address: the endless host is another host than the ordinary one, as in production
HOSTILE_HOST = "127.0.0.2"
DRIP_INTERVAL_S = 0.5  # one byte this often: far inside the read timeout, so only a deadline stops it
JOB_TIMEOUT_S = 300.0
WARMUP_IMAGES = 4
POLL_S = 0.1


RUNS = {"alone": (False, False), "lane_off": (True, True), "lane_on": (True, False)}  # hostile, lane off


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.only is not None:
        hostile, lane_off = RUNS[args.only]
        images = garment_jpegs(WARMUP_IMAGES + args.ordinary, seed=7, size=256)
        run = _run(images, hostile=args.hostile if hostile else 0, lane_off=lane_off)
        args.json.write_text(json.dumps(run))
        return
    emit(args, _machine(), _measure(args), format_report)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fetch_fairness", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--hostile", type=int, default=8, help="never-ending URLs submitted first")
    parser.add_argument("--ordinary", type=int, default=20, help="ordinary image URLs submitted after them")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--only", choices=RUNS, help=argparse.SUPPRESS)  # one run, in a process of its own
    return parser.parse_args(argv)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    deadline_s = FetchSettings().deadline_s
    runs = {name: _run_apart(args, name) for name in RUNS}
    base = runs["alone"]
    ratios = {
        name: {key: run[key] / base[key] for key in ("fetched_p50_s", "fetched_max_s", "finished_max_s")}
        for name, run in runs.items()
        if name != "alone"
    }
    return {
        "fetch_defaults": FetchSettings().model_dump(),
        "deadline_s": deadline_s,
        "runs": runs,
        "ratios": ratios,
    }


def _run_apart(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One run in a fresh process: Celery's broker connection and the settings belong to one stack."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / f"{name}.json"
        command = [sys.executable, "-m", "bench.fetch_fairness", "--only", name, "--json", str(out)]
        command += ["--hostile", str(args.hostile), "--ordinary", str(args.ordinary)]
        subprocess.run(command, check=True)
        run: dict[str, Any] = json.loads(out.read_text())
        return run


def _run(images: list[bytes], *, hostile: int, lane_off: bool) -> dict[str, Any]:
    from atelier.stack import DEFAULT_WORKERS, Stack

    name = "alone" if not hostile else ("lane off" if lane_off else "lane on")
    _progress(f"{name}: {hostile} never-ending URLs, then {len(images) - WARMUP_IMAGES} ordinary ones")
    overrides = {"ATELIER_FETCH__SLOW_AFTER_S": str(FetchSettings().deadline_s)} if lane_off else {}
    with (
        bench_home() as home,
        serve() as ordinary,
        endless_host() as endless,
        embedded_servers(home) as servers,
        _environment(overrides),
    ):
        configure(home, servers, allow_hosts=[ordinary.authority, endless.authority])
        urls = [_publish(ordinary, i, data) for i, data in enumerate(images)]
        measured = urls[WARMUP_IMAGES:]
        with Stack(home, workers=DEFAULT_WORKERS) as stack:
            # a warm-up job first, so no run counts the workers' first-task costs
            _wait_finished(stack, _submit(urls[:WARMUP_IMAGES]))
            if hostile:
                _submit([endless.url(f"/endless-{i}.jpg") for i in range(hostile)])
                _wait_until(lambda: endless.started >= min(hostile, 8), "the endless fetches to start")
            job_id = _submit(measured)
            _wait_finished(stack, job_id)
            return {"hostile": hostile, "lane_off": lane_off, **_latencies(job_id)}


def _publish(server: ImageServer, i: int, data: bytes) -> str:
    server.routes[f"/ordinary-{i}.jpg"] = (200, {"Content-Type": "image/jpeg"}, data)
    return server.url(f"/ordinary-{i}.jpg")


class _Endless:
    def __init__(self, port: int) -> None:
        self.port = port
        self.started = 0

    @property
    def authority(self) -> str:
        return f"{HOSTILE_HOST}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.authority}{path}"


@contextmanager
def endless_host() -> Iterator[_Endless]:
    """A host whose every image declares 10 MB and sends one byte every ``DRIP_INTERVAL_S``, forever."""
    state = _Endless(0)
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state.started += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            try:
                self.wfile.write(b"\xff\xd8\xff")
                while not stop.wait(DRIP_INTERVAL_S):
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
            except OSError:
                pass  # the fetcher gave up and hung up

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((HOSTILE_HOST, 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def _environment(overrides: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _submit(urls: list[str]) -> uuid.UUID:
    from common.schemas import ItemIn
    from db.session import session_factory
    from worker.broker import submit_job

    with session_factory()() as session:
        return submit_job(session, items=[ItemIn(url=u) for u in urls], models=MODELS).job_id


def _wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(POLL_S)


def _wait_finished(stack: Any, job_id: uuid.UUID) -> None:
    from db import jobs
    from db.session import session_factory

    def finished() -> bool:
        stack.check_processes()
        with session_factory()() as session:
            return jobs.finished_at(session, job_id) is not None

    _wait_until(finished, f"job {job_id} to finish")


def _latencies(job_id: uuid.UUID) -> dict[str, Any]:
    from sqlalchemy import select

    from db.models import Item
    from db.session import session_factory

    query = select(Item.status, Item.created_at, Item.fetched_at, Item.finished_at).where(
        Item.job_id == job_id
    )
    with session_factory()() as session:
        rows = session.execute(query).all()
    statuses = sorted({str(r.status) for r in rows})
    if statuses != ["done"]:
        raise RuntimeError(f"ordinary job {job_id} ended with statuses {statuses}")
    fetched = sorted((r.fetched_at - r.created_at).total_seconds() for r in rows)
    done = sorted((r.finished_at - r.created_at).total_seconds() for r in rows)
    return {
        "items": len(rows),
        "fetched_p50_s": statistics.median(fetched),
        "fetched_max_s": fetched[-1],
        "finished_max_s": done[-1],
    }


def _progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def format_report(result: dict[str, Any]) -> str:
    runs, ratios = result["runs"], result["ratios"]
    lines = [
        f"{result['machine']['cpu_cores']} CPU cores; ordinary items' latency (s) and its ratio to 'alone'",
        f"{'run':<10} {'hostile':>7} {'fetched p50':>12} {'fetched max':>12} {'finished max':>13}",
    ]
    for name, run in runs.items():
        ratio = ratios.get(name)
        cells = [
            f"{run[key]:.2f}" + (f" ({ratio[key]:.1f}×)" if ratio else "")
            for key in ("fetched_p50_s", "fetched_max_s", "finished_max_s")
        ]
        lines.append(f"{name:<10} {run['hostile']:>7} {cells[0]:>12} {cells[1]:>12} {cells[2]:>13}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

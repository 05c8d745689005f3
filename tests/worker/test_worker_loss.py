"""A model worker SIGKILLed in the middle of a task: after a restart exactly one result exists."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from tests.support.infra import Infra
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.e2e


def _slow_image() -> bytes:
    """A 6000×5000 smooth gradient: small on the wire, ~1 s to decode and analyse, a wide kill window."""
    y = np.linspace(0, 255, 5000, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, 6000, dtype=np.float32)[None, :]
    rgb = np.stack([(y + 0 * x), (x + 0 * y), (255 - (x + y) / 2)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _wait_started(result_query: object, timeout: float = 60.0) -> None:
    from db.session import session_factory

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_factory()() as session:
            row = session.execute(result_query).one_or_none()  # type: ignore[call-overload]
            if row is not None and row.started_at is not None:
                return
        time.sleep(0.01)
    raise AssertionError("the analysis never started")


def test_sigkilled_worker_leaves_exactly_one_result(
    infra: Infra, clean_db: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atelier.stack import Stack, WorkerPlan, worker_command
    from db.models import ModelResult
    from db.session import session_factory
    from gateway.app import app

    infra.images.routes["/slow.png"] = (200, {}, _slow_image())
    # the dead worker's message comes back after 4 s, not the derived 150 s (a setting production honours)
    monkeypatch.setenv("ATELIER_WORKER_VISIBILITY_TIMEOUT_S", "4")
    with Stack(
        infra.home / "stack-loss", workers=(WorkerPlan(None, concurrency=4, pool="threads"),)
    ) as stack:
        victim = subprocess.Popen(worker_command(WorkerPlan("properties")))
        try:
            with TestClient(app) as client:
                # given: the properties worker has started the analysis
                created = client.post(
                    "/v1/jobs",
                    json={"items": [{"url": infra.images.url("/slow.png")}], "models": ["properties"]},
                ).json()
                query = select(ModelResult.started_at, ModelResult.status)
                _wait_started(query)

                # when: it is killed mid-task, then a fresh worker starts
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                with session_factory()() as session:
                    assert session.execute(query).one().status.value == "pending", "killed too late to test"
                victim = subprocess.Popen(worker_command(WorkerPlan("properties")))
                job = wait_for_job(client, created["job_id"], timeout=120)

            # then: the redelivered task ran again, and one result row exists
            assert job["counts"]["done"] == 1
            with session_factory()() as session:
                rows = session.scalars(select(ModelResult)).all()
            assert len(rows) == 1
            assert rows[0].status.value == "done"
            assert rows[0].attempts == 2
            stack.check_processes()
        finally:
            victim.kill()
            victim.wait()

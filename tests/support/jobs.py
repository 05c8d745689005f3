"""Shared steps of the end-to-end tests: submit through the gateway, wait on Postgres-backed state."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient


def wait_for_job(client: TestClient, job_id: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["finished_at"] is not None:
            return job
        assert time.monotonic() < deadline, f"job {job_id} not finished after {timeout} s: {job['counts']}"
        time.sleep(0.2)

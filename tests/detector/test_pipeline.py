"""The trained detector behind the real pipeline: its Celery worker, several images per forward pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Infra
from tests.detector.conftest import TrainedDetector
from tests.e2e_support import wait_for_job

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(trained_detector: TrainedDetector, infra: Infra, clean_db: Infra) -> Iterator[TestClient]:
    from atelier.stack import Stack, WorkerPlan
    from gateway.app import app

    workers = (WorkerPlan(None, concurrency=4, pool="threads"), WorkerPlan("detector"))
    with Stack(infra.home / "stack-detector", workers=workers), TestClient(app) as test_client:
        yield test_client


def test_served_detections_equal_evaluation_time_detections(
    trained_detector: TrainedDetector, client: TestClient
) -> None:
    expected: dict[str, Any] = json.loads(
        (trained_detector.version_dir / "predictions_test.json").read_text()
    )
    names = sorted(expected)[:16]
    files = [
        ("files", (name, (trained_detector.test_images / name).read_bytes(), "image/jpeg")) for name in names
    ]

    response = client.post(
        "/v1/jobs/upload", files=files, data={"models": ["detector"], "external_ids": names}
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"], timeout=300)

    assert job["counts"]["done"] == len(names)
    for ref in response.json()["items"]:
        view = client.get(f"/v1/images/{ref['id']}").json()
        stored, wanted = view["record"]["detector"]["garments"], expected[view["external_id"]]["garments"]
        assert [g["category"] for g in stored] == [g["category"] for g in wanted], view["external_id"]
        for got, want in zip(stored, wanted, strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-3)
            assert got["box"] == pytest.approx(want["box"], abs=0.5)

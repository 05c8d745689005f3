"""The trained classifier behind the real pipeline: Celery classifier worker, Postgres, pgvector."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.services.classifier.support import Trained
from tests.support.infra import Infra
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(trained: Trained, infra: Infra, clean_db: Infra) -> Iterator[TestClient]:
    from atelier.stack import Stack, WorkerPlan
    from gateway.app import app

    workers = (WorkerPlan(None, concurrency=4, pool="threads"), WorkerPlan("classifier"))
    with Stack(infra.home / "stack-classifier", workers=workers), TestClient(app) as test_client:
        yield test_client


def test_stored_predictions_equal_evaluation_time_predictions(trained: Trained, client: TestClient) -> None:
    # given: the held-out test split, with the predictions the training run made at evaluation time
    expected: dict[str, dict[str, Any]] = json.loads(
        (trained.version_dir / "predictions_test.json").read_text()
    )
    ids = sorted(expected)
    files = [
        ("files", (f"{i}.jpg", (trained.data_dir / "images" / f"{i}.jpg").read_bytes(), "image/jpeg"))
        for i in ids
    ]

    # when: they go through the gateway, the orchestrator and the classifier worker
    response = client.post(
        "/v1/jobs/upload", files=files, data={"models": ["classifier"], "external_ids": ids}
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"], timeout=300)

    # then: every stored prediction is the evaluation-time one
    assert job["counts"]["done"] == len(ids)
    for ref in response.json()["items"]:
        view = client.get(f"/v1/images/{ref['id']}").json()
        stored, wanted = view["record"]["classifier"], expected[view["external_id"]]
        assert view["models"]["classifier"] == {
            **view["models"]["classifier"],
            "status": "done",
            "version": trained.version_dir.name,
        }
        for head, answer in wanted.items():
            assert stored[head]["label"] == answer["label"], (view["external_id"], head)
            assert stored[head]["score"] == pytest.approx(answer["score"], abs=1e-4)


def test_embeddings_land_in_pgvector_and_find_their_own_image(trained: Trained, client: TestClient) -> None:
    from db.session import get_engine

    ids = sorted(json.loads((trained.version_dir / "predictions_test.json").read_text()))[:12]
    files = [
        ("files", (f"{i}.jpg", (trained.data_dir / "images" / f"{i}.jpg").read_bytes(), "image/jpeg"))
        for i in ids
    ]
    created = client.post("/v1/jobs/upload", files=files, data={"models": ["classifier"]}).json()
    wait_for_job(client, created["job_id"], timeout=300)

    with get_engine().connect() as conn:
        rows = conn.execute(text("SELECT image_id, model_version FROM embeddings")).all()
        assert len(rows) == len(ids) and {r.model_version for r in rows} == {trained.version_dir.name}
        for image_id, _ in rows:
            nearest = conn.execute(
                text(
                    "SELECT image_id FROM embeddings ORDER BY embedding <=> "
                    "(SELECT embedding FROM embeddings WHERE image_id = :id) LIMIT 1"
                ),
                {"id": image_id},
            ).scalar_one()
            assert nearest == image_id
        batches = conn.execute(text("SELECT max(batch_size) FROM model_results")).scalar_one()
    assert batches >= 1


def test_explanations_on_request_rerun_a_plain_analysis_and_are_served(
    trained: Trained, client: TestClient
) -> None:
    import io

    from PIL import Image

    image_id = sorted(json.loads((trained.version_dir / "predictions_test.json").read_text()))[0]
    image = (trained.data_dir / "images" / f"{image_id}.jpg").read_bytes()
    files = [("files", (f"{image_id}.jpg", image, "image/jpeg"))]

    # given: the image analysed once without explanations
    plain = client.post("/v1/jobs/upload", files=files, data={"models": ["classifier"]}).json()
    wait_for_job(client, plain["job_id"], timeout=300)
    assert (
        "explanations"
        not in client.get(f"/v1/images/{plain['items'][0]['id']}").json()["record"]["classifier"]
    )

    # when: a job asks for explanations of the same bytes
    explained = client.post(
        "/v1/jobs/upload", files=files, data={"models": ["classifier"], "explain": "true"}
    ).json()
    wait_for_job(client, explained["job_id"], timeout=300)

    # then: the analysis ran again with Grad-CAM overlays, one PNG per head, served by the gateway
    item_id = explained["items"][0]["id"]
    record = client.get(f"/v1/images/{item_id}").json()["record"]["classifier"]
    assert set(record["explanations"]) == set(
        json.loads((trained.version_dir / "manifest.json").read_text())["heads"]
    )
    response = client.get(f"/v1/images/{item_id}/explanations/classifier/articleType")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == Image.open(io.BytesIO(image)).size
    assert client.get(f"/v1/images/{item_id}/explanations/classifier/sleeves").status_code == 404

"""The whole pipeline with real processes: gateway → Valkey → Celery workers → PostgreSQL."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from synthetic.imageserver import garment_photo, jpeg_bytes, png_bytes
from tests.support.infra import Infra
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.e2e

RED = jpeg_bytes(garment_photo((200, 20, 30)))
NAVY = png_bytes(garment_photo((20, 30, 90)))


METRICS_PORT = 19310  # and 19311: the orchestrator's and the properties worker's metrics


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[Infra]:
    from atelier.stack import Stack

    # the workers log JSON here, as they do in containers
    os.environ["ATELIER_LOG_FORMAT"] = "json"
    try:
        with Stack(infra.home / "stack-e2e", metrics_port=METRICS_PORT):
            os.environ.pop("ATELIER_LOG_FORMAT")
            yield infra
    finally:
        os.environ.pop("ATELIER_LOG_FORMAT", None)


@pytest.fixture
def client(stack: Infra, clean_db: Infra) -> Iterator[TestClient]:
    from gateway.app import app

    with TestClient(app) as test_client:
        yield test_client


def _view(client: TestClient, item_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/images/{item_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def test_urls_and_uploads_are_analysed_once_per_distinct_image(client: TestClient, stack: Infra) -> None:
    from db.models import Image as ImageRow
    from db.models import ModelResult

    # given: two distinct images, one of them served under two URLs
    routes = stack.images.routes
    routes["/red.jpg"] = (200, {"Content-Type": "image/jpeg"}, RED)
    routes["/red-again.jpg"] = (200, {"Content-Type": "application/octet-stream"}, RED)
    routes["/navy.png"] = (200, {"Content-Type": "text/plain"}, NAVY)  # sniffed, not trusted

    # when
    response = client.post(
        "/v1/jobs",
        json={
            "items": [
                {"url": stack.images.url("/red.jpg"), "external_id": "sku-red", "metadata": {"shop": "a"}},
                {"url": stack.images.url("/red-again.jpg"), "external_id": "sku-red-2"},
                {"url": stack.images.url("/navy.png"), "external_id": "sku-navy"},
            ]
        },
    )
    assert response.status_code == 202, response.text
    created = response.json()
    job = wait_for_job(client, created["job_id"])

    # then
    assert job["counts"] == {"queued": 0, "fetching": 0, "analysing": 0, "done": 3, "failed": 0}
    red, red_again, navy = (_view(client, ref["id"]) for ref in created["items"])
    assert red["sha256"] == red_again["sha256"] != navy["sha256"]
    assert red["metadata"] == {"shop": "a"}
    assert any(c["name"] == "Red" for c in red["record"]["properties"]["colours"])
    assert any(c["name"] == "Navy Blue" for c in navy["record"]["properties"]["colours"])
    assert red["record"]["properties"]["background"]["plain"] is True
    assert red["models"]["properties"]["status"] == "done"
    for name in ("classifier", "detector", "segmenter"):
        assert red["models"][name]["status"] == "skipped"
        assert "no model artifact" in red["models"][name]["reason"]
    assert all(red["timestamps"][k] is not None for k in ("created_at", "fetched_at", "finished_at"))

    # and the same bytes uploaded in a second job are not analysed again
    upload = client.post(
        "/v1/jobs/upload",
        files=[("files", ("red.jpg", io.BytesIO(RED), "image/jpeg"))],
        data={"models": ["properties"]},
    )
    assert upload.status_code == 202, upload.text
    wait_for_job(client, upload.json()["job_id"])
    uploaded = _view(client, upload.json()["items"][0]["id"])
    assert uploaded["status"] == "done"
    assert uploaded["sha256"] == red["sha256"]
    assert uploaded["record"] == red["record"]

    from db.session import session_factory

    with session_factory()() as session:
        assert session.scalar(select(func.count()).select_from(ImageRow)) == 2
        results = session.scalars(select(ModelResult)).all()
        assert sorted(r.model_name for r in results) == ["properties", "properties"]
        assert all(r.attempts == 1 and r.status.value == "done" for r in results)


def test_stored_record_equals_the_analyser_called_directly(client: TestClient, stack: Infra) -> None:
    from common.images import decode_image
    from services.properties.model import PropertiesModel

    stack.images.routes["/navy-direct.png"] = (200, {}, NAVY)
    created = client.post(
        "/v1/jobs", json={"items": [{"url": stack.images.url("/navy-direct.png")}], "models": ["properties"]}
    ).json()
    wait_for_job(client, created["job_id"])
    stored = _view(client, created["items"][0]["id"])["record"]["properties"]

    model = PropertiesModel()
    model.load()
    [direct] = model.predict([decode_image(NAVY, 40_000_000)])
    assert stored == direct.output


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buffer, "PNG")  # 49 Mpx > the 40 Mpx test limit, ~10 kB on the wire
    return buffer.getvalue()


def test_every_bad_input_ends_failed_with_its_code(client: TestClient, stack: Infra) -> None:
    routes = stack.images.routes
    routes["/html"] = (200, {"Content-Type": "image/jpeg"}, b"<html><body>not an image</body></html>")
    routes["/truncated.jpg"] = (200, {}, RED[: len(RED) // 2])
    routes["/bomb.png"] = (200, {}, _bomb())
    routes["/huge.jpg"] = (200, {}, b"\xff\xd8\xff\xe0" + b"\0" * (3 * 1024 * 1024))
    routes["/to-loopback"] = (302, {"Location": "http://127.0.0.1:6379/"}, b"")
    cases = {
        stack.images.url("/missing.jpg"): "http_error",
        stack.images.url("/html"): "not_an_image",
        stack.images.url("/truncated.jpg"): "truncated_image",
        stack.images.url("/bomb.png"): "decompression_bomb",
        stack.images.url("/huge.jpg"): "too_large",
        stack.images.url("/to-loopback"): "blocked_loopback",
        "http://169.254.169.254/latest/meta-data/": "blocked_metadata",
        "http://[::1]/": "blocked_loopback",
        "file:///etc/passwd": "unsupported_scheme",
        f"http://127.0.0.1:{stack.silent_port}/never": "fetch_timeout",
        "not a url": "invalid_url",
    }
    response = client.post(
        "/v1/jobs", json={"items": [{"url": url} for url in cases], "models": ["properties"]}
    )
    assert response.status_code == 202, response.text
    created = response.json()

    job = wait_for_job(client, created["job_id"], timeout=120)

    assert job["counts"]["failed"] == len(cases)
    got = {ref["url"]: _view(client, ref["id"]) for ref in created["items"]}
    assert {url: view["error"]["code"] for url, view in got.items()} == cases
    assert "404" in got[stack.images.url("/missing.jpg")]["error"]["detail"]
    assert all(view["timestamps"]["finished_at"] is not None for view in got.values())


def test_the_production_retry_budget_ends_every_transient_failure_recorded(
    client: TestClient, stack: Infra
) -> None:
    from db.models import Item
    from db.session import session_factory
    from worker.settings import WorkerSettings, get_worker_settings

    # given: the production retry count (the suite shortens only the backoff's base delay)
    budget = WorkerSettings.model_fields["max_retries"].default
    assert get_worker_settings().max_retries == budget == 5
    served = {"/flaky.png": 0}

    def flaky() -> tuple[int, dict[str, str], bytes]:  # fails twice, then serves the image
        served["/flaky.png"] += 1
        return (503, {}, b"busy") if served["/flaky.png"] <= 2 else (200, {}, NAVY)

    routes = stack.images.routes
    routes["/always-503"] = (503, {}, b"busy")
    routes["/always-500"] = (500, {}, b"oops")
    routes["/always-429"] = (429, {"Retry-After": "1"}, b"slow down")
    routes["/flaky.png"] = flaky
    cases = {
        stack.images.url("/always-503"): ("failed", "http_error"),
        stack.images.url("/always-500"): ("failed", "http_error"),
        stack.images.url("/always-429"): ("failed", "http_error"),
        f"http://127.0.0.1:{stack.silent_port}/slow": ("failed", "fetch_timeout"),
        stack.images.url("/flaky.png"): ("done", None),
    }

    # when
    created = client.post(
        "/v1/jobs", json={"items": [{"url": url} for url in cases], "models": ["properties"]}
    ).json()
    wait_for_job(client, created["job_id"], timeout=300)

    # then: every item ended with its code, the failed ones after exactly the budget's deliveries
    with session_factory()() as session:
        rows = {row.url: row for row in session.scalars(select(Item))}
    assert {url: (rows[url].status.value, rows[url].error_code) for url in cases} == cases
    assert {rows[url].attempts for url, (status, _) in cases.items() if status == "failed"} == {budget + 1}
    assert rows[stack.images.url("/flaky.png")].attempts == 3


def test_api_refuses_bad_requests_with_the_field_named(client: TestClient) -> None:
    empty = client.post("/v1/jobs", json={"items": []})
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["loc"] == ["body", "items"]
    unknown = client.post("/v1/jobs", json={"items": [{"url": "http://x/"}], "models": ["colourizer"]})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "models"]
    too_many = client.post("/v1/jobs", json={"items": [{"url": "http://x/"}] * 10_001})
    assert too_many.status_code == 422
    assert client.get("/v1/jobs/00000000-0000-7000-8000-000000000000").status_code == 404
    assert client.get("/v1/images/00000000-0000-7000-8000-000000000000").status_code == 404
    assert client.get("/v1/images/not-a-uuid").status_code == 422
    assert client.get("/v1/images?cursor=@@@").status_code == 422
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/v1/jobs",
        "/v1/images",
        "/v1/images/{item_id}",
    }


def test_listing_pages_through_every_item_once(client: TestClient, stack: Infra) -> None:
    stack.images.routes["/page.png"] = (200, {}, NAVY)
    items = [{"url": stack.images.url("/page.png"), "external_id": f"sku-{i}"} for i in range(7)]
    created = client.post("/v1/jobs", json={"items": items, "models": ["properties"]}).json()
    wait_for_job(client, created["job_id"])

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {
            "job_id": created["job_id"],
            "limit": 3,
            **({"cursor": cursor} if cursor else {}),
        }
        page = client.get("/v1/images", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [ref["id"] for ref in created["items"]]
    only = client.get("/v1/images", params={"external_id": "sku-3"}).json()["items"]
    assert [item["external_id"] for item in only] == ["sku-3"]
    assert (
        client.get("/v1/images", params={"status": "failed", "job_id": created["job_id"]}).json()["items"]
        == []
    )


def test_readiness_reports_database_broker_and_services(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["ready"] is True
    assert body["database"] == "ok" and body["broker"] == "ok"
    assert body["services"]["properties"]["available"] is True
    assert body["services"]["classifier"]["available"] is False
    assert client.get("/healthz").json() == {"status": "ok"}


def test_reconcile_republishes_work_whose_messages_were_lost(client: TestClient, stack: Infra) -> None:
    from sqlalchemy import update

    from common.schemas import ItemIn
    from db import jobs
    from db.models import Job
    from db.session import session_factory
    from worker.reconciler import republish_stale

    # given: one job never dispatched and one whose fetch messages vanished (committed, never published)
    stack.images.routes["/lost.png"] = (200, {}, NAVY)
    with session_factory()() as session:
        never = jobs.create_job(
            session, items=[ItemIn(url=stack.images.url("/lost.png"))], models=["properties"]
        )
        lost = jobs.create_job(
            session, items=[ItemIn(url=stack.images.url("/lost.png"))], models=["properties"]
        )
        session.execute(
            update(Job).where(Job.id == lost.job_id).values(published_at=func.now(), dispatched_at=func.now())
        )
        session.commit()

    # when
    stale = republish_stale(older_than_s=0)

    # then
    assert (stale.jobs, stale.items) == ([never.job_id], [lost.items[0].id])
    for created in (never, lost):
        assert wait_for_job(client, str(created.job_id))["counts"]["done"] == 1


def _samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition → {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_and_json_logs_follow_a_job(client: TestClient, stack: Infra) -> None:
    import httpx

    def worker_metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        deadline = time.monotonic() + 60  # the worker may still be starting
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert response.status_code == 200
        return _samples(response.text)

    # given: the metrics before, two good URLs and one that answers 404
    stack.images.routes["/m-red.jpg"] = (200, {"Content-Type": "image/jpeg"}, RED)
    stack.images.routes["/m-navy.png"] = (200, {"Content-Type": "image/png"}, NAVY)
    urls = [stack.images.url(p) for p in ("/m-red.jpg", "/m-navy.png", "/m-missing.jpg")]
    gateway_before = _samples(client.get("/metrics").text)
    orchestrator_before, properties_before = worker_metrics(METRICS_PORT), worker_metrics(METRICS_PORT + 1)

    # when
    response = client.post("/v1/jobs", json={"items": [{"url": u} for u in urls], "models": ["properties"]})
    assert response.status_code == 202, response.text
    created = response.json()
    wait_for_job(client, created["job_id"])

    # then: the gateway counted the request, its latency and the items
    gateway = _samples(client.get("/metrics").text)
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")

    def grew(after: dict, before: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
        return _value(after, name, **labels) - _value(before, name, **labels)

    post = {"method": "POST", "route": "/v1/jobs"}
    assert grew(gateway, gateway_before, "atelier_http_requests_total", **post, status="202") == 1
    assert grew(gateway, gateway_before, "atelier_http_request_duration_seconds_count", **post) == 1
    assert grew(gateway, gateway_before, "atelier_items_submitted_total", source="url") == 3
    assert grew(gateway, gateway_before, "atelier_jobs_submitted_total") == 1
    job_route = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "200"}  # the template, not the id
    assert _value(gateway, "atelier_http_requests_total", **job_route) >= 1

    # the orchestrator: one dispatch and three fetches started and ended well (the 404 is recorded, not
    # raised), and the depth of every queue
    orchestrator = worker_metrics(METRICS_PORT)
    fetch = "atelier.fetch_task"
    assert grew(orchestrator, orchestrator_before, "atelier_tasks_total", task=fetch, state="started") == 3
    assert grew(orchestrator, orchestrator_before, "atelier_tasks_total", task=fetch, state="succeeded") == 3
    assert grew(orchestrator, orchestrator_before, "atelier_task_duration_seconds_count", task=fetch) == 3
    dispatched = {"task": "atelier.dispatch_job_task", "state": "succeeded"}
    assert grew(orchestrator, orchestrator_before, "atelier_tasks_total", **dispatched) == 1
    for queue in ("orchestrator", "properties", "classifier", "detector", "segmenter"):
        assert ("atelier_queue_depth", frozenset({("queue", queue)})) in orchestrator
    assert _value(orchestrator, "atelier_queue_depth", queue="properties") == 0  # drained

    # the properties worker: predict calls covering both images, their batch sizes, the model it loaded
    properties = worker_metrics(METRICS_PORT + 1)
    service = {"service": "properties"}
    calls = grew(properties, properties_before, "atelier_inference_seconds_count", **service)
    assert 1 <= calls <= 2
    assert grew(properties, properties_before, "atelier_batch_size_sum", **service) == 2
    from services.properties.config import PROPERTIES_VERSION

    assert _value(properties, "atelier_model_info", service="properties", version=PROPERTIES_VERSION) == 1
    assert ("atelier_queue_depth", frozenset({("queue", "properties")})) in properties

    # JSON log lines of the orchestrator carry each item's id: the failed one with its error
    log_path = stack.home / "stack-e2e" / "logs" / "worker-orchestrator.log"
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    by_item = {r["item_id"]: r for r in records if "item_id" in r and r["logger"] == "worker.tasks"}
    red, navy, missing = (ref["id"] for ref in created["items"])
    assert "stored" in by_item[red]["message"] and "stored" in by_item[navy]["message"]
    assert by_item[missing]["level"] == "WARNING" and "404" in by_item[missing]["message"]
    assert any(r.get("job_id") == created["job_id"] and "dispatched 3" in r["message"] for r in records)

"""The gateway's edges, against real PostgreSQL and Valkey: body caps, streamed uploads that leave no blob
behind, text that cannot be stored, server errors, documented status codes, headers, metrics, readiness."""

from __future__ import annotations

import io
import select
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.support.infra import Infra

JOB = "00000000-0000-7000-8000-000000000000"


def _upload_blobs(infra: Infra) -> list[Path]:
    """Every file under the blob store's uploads/, temporary ones included."""
    root = infra.home / "blobs" / "uploads"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def new_blobs(clean_db: Infra) -> Any:
    """The upload blobs (and temporary files) written since the test began."""
    before = set(_upload_blobs(clean_db))
    return lambda: sorted(set(_upload_blobs(clean_db)) - before)


def _loc(response: httpx.Response) -> list[Any]:
    assert response.status_code == 422, response.text
    loc: list[Any] = response.json()["detail"][0]["loc"]
    return loc


@pytest.fixture
def gateway_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set ``ATELIER_GATEWAY_*`` for one test (the settings are read per request)."""
    from gateway.settings import get_gateway_settings

    get_gateway_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_gateway_settings.cache_clear()


# --- body limits ---------------------------------------------------------------------------------------


def test_a_json_body_over_the_cap_is_refused_declared_or_streamed(
    client: TestClient, gateway_settings: pytest.MonkeyPatch
) -> None:
    gateway_settings.setenv("ATELIER_GATEWAY_MAX_JSON_BODY_BYTES", "1000")
    body = b'{"items": [{"url": "http://example.com/' + b"a" * 2000 + b'"}]}'

    declared = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    streamed = client.post(
        "/v1/jobs", content=iter([body[:600], body[600:]]), headers={"Content-Type": "application/json"}
    )

    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.headers["connection"] == "close"
        assert response.json() == {"detail": "request body larger than 1000 bytes"}


def _chunked_upload(base_url: str, part_head: bytes, total: int, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """POST a multipart upload of ``total`` file bytes with chunked transfer encoding (no Content-Length),
    stopping as soon as the server answers; the answer's head and how many bytes were sent."""
    address = urlsplit(base_url)
    boundary = b"b0undary"
    with socket.create_connection((address.hostname, address.port)) as conn:
        conn.sendall(
            b"POST /v1/jobs/upload HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n"
        )
        head = b"--" + boundary + b"\r\n" + part_head + b"\r\n\r\n"
        conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        sent, block = 0, b"\xff" * chunk
        while sent < total:
            if select.select([conn], [], [], 0)[0]:
                break  # the server answered before the body ended
            try:
                conn.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(block)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    return answer, sent


def test_a_1_gib_upload_is_refused_after_its_cap_without_landing_anywhere(
    live_gateway: str, new_blobs: Any
) -> None:
    # given: a file part of 1 GiB, no Content-Length (only counting the stream can stop it)
    part = b'Content-Disposition: form-data; name="files"; filename="huge.jpg"\r\nContent-Type: image/jpeg'

    # when
    answer, sent = _chunked_upload(live_gateway, part, total=1 << 30)

    # then: 413 once the 25 MiB file cap is passed, long before the gigabyte; no blob, no temporary file
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < 200 * (1 << 20), f"{sent} bytes were sent before the answer"
    assert new_blobs() == []


def test_the_whole_upload_request_is_capped_too(
    client: TestClient, new_blobs: Any, gateway_settings: pytest.MonkeyPatch
) -> None:
    gateway_settings.setenv("ATELIER_GATEWAY_MAX_UPLOAD_REQUEST_BYTES", str(300_000))
    files = [("files", (f"{i}.jpg", io.BytesIO(b"\xff" * 100_000), "image/jpeg")) for i in range(4)]

    response = client.post("/v1/jobs/upload", files=files)

    assert response.status_code == 413, response.text
    assert new_blobs() == []


# --- uploads streamed to the blob store -----------------------------------------------------------------


def test_an_upload_is_stored_under_its_item(client: TestClient, clean_db: Infra) -> None:
    from db.models import Item
    from db.session import session_factory

    response = client.post(
        "/v1/jobs/upload",
        files=[("files", ("a.jpg", io.BytesIO(b"first"), "image/jpeg")), ("files", ("b.png", b"second"))],
        data={"external_ids": ["sku-a", "sku-b"], "models": ["properties"], "explain": "true"},
    )

    assert response.status_code == 202, response.text
    created = response.json()
    assert [(i["filename"], i["external_id"]) for i in created["items"]] == [
        ("a.jpg", "sku-a"),
        ("b.png", "sku-b"),
    ]
    with session_factory()() as session:
        keys = [session.get(Item, ref["id"]).upload_key for ref in created["items"]]  # type: ignore[union-attr]
    root = clean_db.home / "blobs"
    assert {key: (root / str(key)).read_bytes() for key in keys} == {keys[0]: b"first", keys[1]: b"second"}


@pytest.mark.parametrize(
    ("files", "data", "loc"),
    [
        (2, {"external_ids": ["only-one"]}, ["body", "external_ids"]),
        (1, {"models": ["colourizer"]}, ["body", "models"]),
        (1, {"explain": "perhaps"}, ["body", "explain"]),
        (1, {"external_ids": ["x" * 257]}, ["body", "external_ids", 0]),
        (3, {}, ["body", "files"]),  # over the test's limit of 2 files
        (0, {"models": ["properties"]}, ["body", "files"]),
    ],
)
def test_a_refused_upload_leaves_no_blob(
    client: TestClient,
    new_blobs: Any,
    gateway_settings: pytest.MonkeyPatch,
    files: int,
    data: dict[str, Any],
    loc: list[Any],
) -> None:
    gateway_settings.setenv("ATELIER_GATEWAY_MAX_UPLOAD_FILES", "2")
    parts: list[tuple[str, Any]] = [
        ("files", (f"{i}.jpg", io.BytesIO(b"image bytes"), "image/jpeg")) for i in range(files)
    ]
    # fields as parts of their own: a form without files would otherwise be sent url-encoded
    parts += [
        (name, (None, v))
        for name, values in data.items()
        for v in ([values] if isinstance(values, str) else values)
    ]

    response = client.post("/v1/jobs/upload", files=parts)

    assert _loc(response) == loc
    assert new_blobs() == []


def test_an_upload_that_is_not_multipart_is_refused(client: TestClient) -> None:
    response = client.post("/v1/jobs/upload", json={"files": []})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


@pytest.fixture
def failing_insert(clean_db: Infra) -> Iterator[str]:
    """A real database error on inserting an item named ``boom.jpg`` (a CHECK constraint)."""
    from db.session import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("ALTER TABLE items ADD CONSTRAINT test_boom CHECK (filename <> 'boom.jpg')"))
    yield "boom.jpg"
    with get_engine().begin() as conn:
        conn.execute(text("ALTER TABLE items DROP CONSTRAINT test_boom"))


def test_a_database_error_answers_500_that_closes_and_leaves_no_blob(
    live_gateway: str, failing_insert: str, new_blobs: Any
) -> None:
    with httpx.Client(base_url=live_gateway) as http:
        # when
        response = http.post("/v1/jobs/upload", files=[("files", (failing_insert, b"bytes", "image/jpeg"))])

        # then: a 500 that says nothing of the error and closes the connection, and no blob left
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error"}
        assert response.headers["connection"] == "close"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert new_blobs() == []
        # the client's next request opens a new connection and is answered
        assert http.get("/healthz").status_code == 200


@pytest.fixture
def unreachable_database() -> Iterator[None]:
    """The gateway's sessions from a database nobody listens on (what it meets while Postgres restarts)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from gateway.app import app, get_session

    engine = create_engine("postgresql+psycopg://atelier@127.0.0.1:1/atelier", pool_pre_ping=True)

    def away() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    app.dependency_overrides[get_session] = away
    yield
    del app.dependency_overrides[get_session]
    engine.dispose()


def test_a_database_that_is_away_answers_503_with_retry_after(
    client: TestClient, unreachable_database: None
) -> None:
    # when
    response = client.get(f"/v1/jobs/{JOB}")

    # then: try again later, not an error of ours
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the database is unavailable; try again shortly"}


# --- text that cannot be stored -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "loc"),
    [
        ('{"url": "http://x/\\u0000"}', ["body", "items", 0, "url"]),
        ('{"url": "http://x/\\ud800"}', ["body", "items", 0, "url"]),
        ('{"url": "http://x/", "external_id": "a\\udfffb"}', ["body", "items", 0, "external_id"]),
        ('{"url": "http://x/", "metadata": {"k\\u0000": 1}}', ["body", "items", 0, "metadata"]),
        ('{"url": "http://x/", "metadata": {"a": [{"b": "\\ud83d"}]}}', ["body", "items", 0, "metadata"]),
    ],
)
def test_nul_and_lone_surrogates_in_a_job_are_refused_naming_the_field(
    client: TestClient, item: str, loc: list[Any]
) -> None:
    response = client.post(
        "/v1/jobs", content=f'{{"items": [{item}]}}', headers={"Content-Type": "application/json"}
    )
    assert _loc(response) == loc


def test_a_nul_model_name_is_refused(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"items": [{"url": "http://x/"}], "models": ["prop\x00"]})
    assert _loc(response) == ["body", "models"]


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/v1/images?external_id=a%00b", ["query", "external_id"]),
        ("/v1/images?cursor=%00", ["query", "cursor"]),
        (f"/v1/images/{JOB}/files/segmenter/a%00.png", ["path"]),
    ],
)
def test_nul_in_query_and_path_is_refused_naming_it(client: TestClient, path: str, loc: list[Any]) -> None:
    assert _loc(client.get(path)) == loc


def test_a_nul_in_a_file_name_is_refused(client: TestClient, new_blobs: Any) -> None:
    # written by hand: HTTP clients percent-encode a NUL in a file name, a hostile one need not
    body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a\x00.jpg"\r\n\r\nxx\r\n--b--\r\n'
    response = client.post(
        "/v1/jobs/upload", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert _loc(response) == ["body", "files", "filename"]
    assert new_blobs() == []


@pytest.mark.parametrize(
    ("part", "loc"),
    [
        (("external_ids", (None, "sku\x00")), ["body", "external_ids"]),
        (("external_ids", (None, b"sku\xed\xa0\x80")), ["body", "external_ids"]),  # a UTF-8 surrogate
        (("models", (None, b"\xff")), ["body", "models"]),
    ],
)
def test_nul_and_bad_utf8_in_upload_fields_are_refused(
    client: TestClient, new_blobs: Any, part: tuple[str, Any], loc: list[Any]
) -> None:
    parts = [("files", ("a.jpg", b"x", "image/jpeg")), part]
    assert _loc(client.post("/v1/jobs/upload", files=parts)) == loc
    assert new_blobs() == []


def test_metadata_over_its_cap_is_refused(client: TestClient, gateway_settings: pytest.MonkeyPatch) -> None:
    gateway_settings.setenv("ATELIER_GATEWAY_MAX_METADATA_BYTES", "100")
    items = [{"url": "http://x/", "metadata": {"a": "b"}}, {"url": "http://x/", "metadata": {"a": "é" * 60}}]

    response = client.post("/v1/jobs", json={"items": items})

    assert _loc(response) == ["body", "items", 1, "metadata"]
    assert "at most 100" in response.json()["detail"][0]["msg"]


# --- progress reads -------------------------------------------------------------------------------------


def _job_with_states(n: int, done: int, failed: int, fetching: int) -> str:
    """A job of ``n`` queued items, then some moved on as the pipeline moves them (counted off the job)."""
    from common.schemas import ItemIn
    from db import jobs
    from db.session import session_factory

    with session_factory()() as session:
        created = jobs.create_job(
            session, items=[ItemIn(url=f"http://x/{i}") for i in range(n)], models=["properties"]
        )
        job_id = str(created.job_id)
        moves = [
            ("done", 0, done),
            ("failed", done, done + failed),
            ("fetching", done + failed, done + failed + fetching),
        ]
        for state, start, end in moves:
            session.execute(
                text("UPDATE items SET status = :s WHERE job_id = :j AND position >= :a AND position < :b"),
                {"s": state, "j": job_id, "a": start, "b": end},
            )
        session.execute(
            text("UPDATE jobs SET pending_items = pending_items - :n WHERE id = :j"),
            {"n": done + failed, "j": job_id},
        )
        session.commit()
    return job_id


def test_a_job_read_counts_states_and_lists_no_items_by_default(client: TestClient) -> None:
    job_id = _job_with_states(10, done=4, failed=2, fetching=1)

    view = client.get(f"/v1/jobs/{job_id}").json()
    first = client.get(f"/v1/jobs/{job_id}", params={"items_limit": 3}).json()

    assert view["counts"] == {"queued": 3, "fetching": 1, "analysing": 0, "done": 4, "failed": 2}
    assert view["items"] == []
    assert [i["position"] for i in first["items"]] == [0, 1, 2]
    assert client.get(f"/v1/jobs/{JOB}").status_code == 404


def test_a_jobs_items_page_through_in_order(client: TestClient) -> None:
    job_id = _job_with_states(7, done=0, failed=2, fetching=0)

    positions, after = [], -1
    while after is not None:
        page = client.get(f"/v1/jobs/{job_id}/items", params={"after": after, "limit": 3}).json()
        positions += [i["position"] for i in page["items"]]
        after = page["next_after"]
    failed = client.get(f"/v1/jobs/{job_id}/items", params={"status": "failed"}).json()

    assert positions == list(range(7))
    assert [(i["position"], i["status"]) for i in failed["items"]] == [(0, "failed"), (1, "failed")]
    assert failed["next_after"] is None
    assert client.get(f"/v1/jobs/{JOB}/items").status_code == 404


def test_100_concurrent_readers_are_all_answered(live_gateway: str, clean_db: Infra) -> None:
    job_id = _job_with_states(2000, done=1500, failed=100, fetching=10)

    def read(_: int) -> int:
        with httpx.Client(base_url=live_gateway, timeout=120) as http:
            return http.get(f"/v1/jobs/{job_id}").status_code

    with ThreadPoolExecutor(max_workers=100) as pool:
        codes = list(pool.map(read, range(300)))

    assert codes == [200] * 300


# --- headers, metrics, readiness, documentation ---------------------------------------------------------


def test_api_answers_carry_security_headers(client: TestClient) -> None:
    for response in (client.get("/healthz"), client.get(f"/v1/jobs/{JOB}"), client.get("/nowhere")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "default-src 'none'" in response.headers["content-security-policy"]


def test_made_up_methods_share_one_metric_label(client: TestClient) -> None:
    for i in range(5):
        client.request(f"MADEUP{i}", "/healthz")
    metrics = client.get("/metrics").text
    assert "MADEUP" not in metrics
    assert 'method="other"' in metrics


def test_readiness_names_what_is_down_without_paths_or_errors(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.settings import get_settings

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == ready.json()["broker"] == "ok"

    # given: a broker that does not answer
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("ATELIER_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    get_settings.cache_clear()
    try:
        response = client.get("/readyz")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    body = response.json()
    assert response.status_code == 503
    assert (body["ready"], body["database"], body["broker"]) == (False, "ok", "down")
    assert "broker" in body["down"] and "classifier" in body["down"] and "properties" not in body["down"]
    assert "/" not in response.text.replace("\\/", "") and "Error" not in response.text


def test_docs_load_nothing_from_another_host(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert "http://" not in html.text and "https://" not in html.text.replace("https://fastapi", "")
        assert "'self'" in html.headers["content-security-policy"]
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static-offline-docs/redoc.standalone.js").status_code == 200


def test_every_operation_documents_its_error_codes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    codes = {
        (path, method): set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()
    }
    assert all("500" in documented for documented in codes.values())
    assert {"202", "413", "422"} <= codes[("/v1/jobs", "post")]
    assert {"202", "413", "415", "422"} <= codes[("/v1/jobs/upload", "post")]
    assert {"200", "404", "422"} <= codes[("/v1/jobs/{job_id}/items", "get")]
    assert {"200", "503"} <= codes[("/readyz", "get")]

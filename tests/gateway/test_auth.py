"""Who may do what: API keys on every route, stored hashed, revocable; rate limits and item quotas in
Valkey. Real Postgres and Valkey (``infra``), the ASGI app through the test client."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from tests.support.infra import Infra

# the routes FastAPI adds for its documents (Starlette routes, not API routes): open by design
# the docs and their assets (Swagger UI and ReDoc from the installed fastapi-offline package)
DOCUMENT_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static-offline-docs"}
GENEROUS = "100000/second"  # keys whose refusals are tested are not also rate limited


def _set_env(**values: str | None) -> None:
    from gateway.settings import get_gateway_settings

    for name, value in values.items():
        variable = f"ATELIER_GATEWAY_{name.upper()}"
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    get_gateway_settings.cache_clear()


@pytest.fixture
def client(infra: Infra) -> Iterator[TestClient]:
    from gateway.app import app

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def keys_required(infra: Infra) -> Iterator[None]:
    _set_env(require_keys="true")
    yield
    _set_env(require_keys=None)


def _key(*scopes: str, rate_limit: str | None = GENEROUS, items_per_day: int | None = None) -> str:
    from db import keys
    from db.session import transaction

    with transaction() as session:
        _, secret = keys.create_key(
            session, scopes, name="test", rate_limit=rate_limit, items_per_day=items_per_day
        )
    return secret


def _revoke(secret: str) -> None:
    from db import keys
    from db.session import transaction

    with transaction() as session:
        assert keys.revoke(session, secret[: keys.PREFIX_CHARS]) is not None


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _guarded_routes() -> list[tuple[str, str, Any]]:
    """(method, a concrete path, scope) of every route that needs a key."""
    from gateway.app import app
    from gateway.auth import ProtectedRoute

    found = []
    for route in app.routes:
        if isinstance(route, ProtectedRoute) and route.required_scope is not None:
            path = re.sub(
                r"{(\w+)(:\w+)?}",
                lambda m: str(uuid.uuid4()) if m.group(1).endswith("id") else "x",
                route.path,
            )
            found += [(method, path, route.required_scope) for method in sorted(route.methods or ())]
    return found


def test_every_route_is_an_api_route_that_declares_its_scope(infra: Infra) -> None:
    """A route added another way (``app.add_route``, a mount, a router with its own route class)
    would bypass the guard: only FastAPI's own document routes may."""
    from gateway.app import app
    from gateway.auth import PUBLIC_PATHS, ProtectedRoute

    others = {getattr(r, "path", repr(r)) for r in app.routes if not isinstance(r, APIRoute)}
    assert others <= DOCUMENT_PATHS
    # fastapi-offline adds its document routes as plain API routes when the app is made: open anyway
    api_routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path not in DOCUMENT_PATHS]
    assert all(isinstance(r, ProtectedRoute) for r in api_routes), [
        r.path for r in api_routes if not isinstance(r, ProtectedRoute)
    ]
    open_routes = {r.path for r in api_routes if isinstance(r, ProtectedRoute) and r.required_scope is None}
    assert open_routes <= PUBLIC_PATHS
    assert {"/healthz", "/readyz", "/metrics"} <= open_routes
    assert {(m, p) for m, p, _ in _guarded_routes()} >= {("POST", "/v1/jobs"), ("POST", "/v1/jobs/upload")}


def test_scopes_follow_path_and_method() -> None:
    from db.keys import Scope
    from gateway.auth import required_scope

    assert required_scope("/v1/jobs", ["POST"]) is Scope.submit
    assert required_scope("/v1/jobs/{job_id}", ["GET"]) is Scope.read
    assert required_scope("/v1/admin/keys", ["GET"]) is Scope.admin
    assert required_scope("/v1/admin", ["DELETE"]) is Scope.admin
    assert required_scope("/v1/administrators", ["GET"]) is Scope.read
    assert required_scope("/healthz", ["GET"]) is None


def test_every_guarded_route_refuses_missing_wrong_revoked_and_underscoped_keys(
    client: TestClient, keys_required: None
) -> None:
    from db.keys import Scope

    # given: a revoked key with every scope, and for each scope a key with all the others but admin
    revoked = _key("admin")
    _revoke(revoked)
    lacking = {Scope.read: _key("submit"), Scope.submit: _key("read"), Scope.admin: _key("submit", "read")}
    right = {scope: _key(scope) for scope in Scope}
    wrong = "atk_" + uuid.uuid4().hex
    failures = []
    routes = _guarded_routes()
    assert routes
    for method, path, scope in routes:
        # when / then
        for label, headers, expected in (
            ("no key", {}, 401),
            ("a malformed header", {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
            ("a wrong key", _bearer(wrong), 401),
            ("a wrong X-API-Key", {"X-API-Key": wrong}, 401),
            ("a revoked key", _bearer(revoked), 401),
            ("an under-scoped key", _bearer(lacking[scope]), 403),
        ):
            response = client.request(method, path, headers=headers)
            if response.status_code != expected:
                failures.append(f"{method} {path} with {label}: {response.status_code}, not {expected}")
            elif expected == 401 and not response.headers.get("WWW-Authenticate", "").startswith("Bearer"):
                failures.append(f"{method} {path} with {label}: no WWW-Authenticate: Bearer")
            elif method != "HEAD" and "detail" not in response.json():  # HEAD answers have no body
                failures.append(f"{method} {path} with {label}: no JSON detail")
        for label, headers in (
            ("its scope (Bearer)", _bearer(right[scope])),
            ("its scope (X-API-Key)", {"X-API-Key": right[scope]}),
            ("admin", _bearer(right[Scope.admin])),
        ):
            # no body, random ids: 404 or 422, but past the guard
            status = client.request(method, path, headers=headers).status_code
            if status in (401, 403, 429):
                failures.append(f"{method} {path} with a key of {label}: {status}")
    assert failures == []


def test_open_routes_answer_without_a_key(client: TestClient, keys_required: None) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code in (200, 503), path


def test_openapi_documents_the_refusals_and_the_security_schemes(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(document["components"]["securitySchemes"])
    for method, path, _ in _guarded_routes():
        template = next(p for p in document["paths"] if re.fullmatch(re.sub(r"{\w+}", "[^/]+", p), path))
        operation = document["paths"][template].get(method.lower())
        if operation is None:  # a route left out of the schema (the 405s of /v1/jobs/upload)
            continue
        assert {"401", "403", "429"} <= set(operation["responses"]), (method, template)
        assert "Retry-After" in operation["responses"]["429"]["headers"]
        assert operation["security"], (method, template)
    assert "security" not in document["paths"]["/healthz"]["get"]
    assert "401" not in document["paths"]["/healthz"]["get"]["responses"]


def test_without_required_keys_anonymous_requests_pass_and_given_keys_are_still_checked(
    client: TestClient,
) -> None:
    assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    wrong = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=_bearer("atk_nothing"))
    assert wrong.status_code == 401
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=_bearer(_key("read"))).status_code == 404


def test_keys_are_required_outside_development_unless_the_setting_says_otherwise(infra: Infra) -> None:
    from gateway.settings import GatewaySettings

    assert GatewaySettings().keys_required("development") is False
    assert GatewaySettings().keys_required("production") is True
    assert GatewaySettings(require_keys=False).keys_required("production") is False
    assert GatewaySettings(require_keys=True).keys_required("development") is True
    with pytest.raises(ValueError, match="'fast'"):
        GatewaySettings(key_rate_limit="fast")


def test_rate_limit_answers_429_with_retry_after_per_key(client: TestClient, keys_required: None) -> None:
    # given: two keys allowed two requests an hour each
    limited, other = _key("read", rate_limit="2/hour"), _key("read", rate_limit="2/hour")
    path = f"/v1/jobs/{uuid.uuid4()}"

    # when
    statuses = [client.get(path, headers=_bearer(limited)).status_code for _ in range(2)]
    refused = client.get(path, headers=_bearer(limited))

    # then: the third is refused with when to come back; the other key is untouched
    assert statuses == [404, 404]
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert "rate limit of 2 per 1 hour" in refused.json()["detail"]
    assert client.get(path, headers=_bearer(other)).status_code == 404


def test_anonymous_requests_are_rate_limited_per_client_address(client: TestClient) -> None:
    _set_env(anonymous_rate_limit="3/hour")
    try:
        statuses = [client.get("/v1/images?limit=1").status_code for _ in range(4)]
    finally:
        _set_env(anonymous_rate_limit=None)
    assert statuses == [200, 200, 200, 429]


def test_item_quota_counts_items_not_requests_and_a_refused_job_spends_none(
    client: TestClient, keys_required: None, infra: Infra
) -> None:
    from db.models import Job
    from db.session import transaction

    def submit(count: int) -> Any:
        items = [{"url": infra.images.url(f"/quota-{i}.jpg")} for i in range(count)]
        return client.post("/v1/jobs", json={"items": items}, headers=_bearer(secret))

    def jobs() -> int:
        with transaction() as session:
            return int(session.scalar(select(func.count()).select_from(Job)) or 0)

    # given: a key that may submit 3 items a day
    secret = _key("submit", items_per_day=3)

    # when / then: 2 items pass; 2 more would make 4 and are refused whole, with nothing created
    assert submit(2).status_code == 202
    before = jobs()
    refused = submit(2)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert "quota of 3 items" in refused.json()["detail"]
    assert jobs() == before
    # the refused job spent nothing: one item still fits, and then none
    assert submit(1).status_code == 202
    assert submit(1).status_code == 429
    # uploads count against the same quota
    upload = client.post(
        "/v1/jobs/upload", files=[("files", ("a.jpg", b"not checked here"))], headers=_bearer(secret)
    )
    assert upload.status_code == 429, upload.text


def test_uploaded_files_count_one_item_each(client: TestClient, keys_required: None) -> None:
    secret = _key("submit", items_per_day=2)
    files = [("files", (f"{i}.jpg", b"bytes")) for i in range(2)]
    assert client.post("/v1/jobs/upload", files=files, headers=_bearer(secret)).status_code == 202
    one = [("files", ("c.jpg", b"bytes"))]
    assert client.post("/v1/jobs/upload", files=one, headers=_bearer(secret)).status_code == 429


def test_cli_creates_lists_and_revokes_keys_and_never_stores_the_secret(
    client: TestClient, keys_required: None
) -> None:
    from atelier.cli import app
    from db.session import get_engine

    runner = CliRunner()
    # when: a key is created on the command line
    created = runner.invoke(app, ["keys", "create", "--scope", "read", "--name", "[bold]ci"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert re.fullmatch(r"atk_[A-Za-z0-9_-]{43}", secret), created.stdout

    # then: the row holds its hash and prefix, and the secret nowhere
    with get_engine().connect() as conn:
        row = (
            conn.execute(
                text(
                    "SELECT id, prefix, secret_hash, row_to_json(k)::text AS whole FROM api_keys k"
                    " WHERE secret_hash = :h"
                ),
                {"h": hashlib.sha256(secret.encode()).hexdigest()},
            )
            .mappings()
            .one()
        )
        dump = "\n".join(conn.execute(text("SELECT row_to_json(k)::text FROM api_keys k")).scalars())
    assert secret.startswith(row["prefix"]) and len(row["prefix"]) < 16
    assert secret not in dump and secret[len(row["prefix"]) :] not in dump
    # and the key works, for reading only
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=_bearer(secret)).status_code == 404
    assert client.post("/v1/jobs", json={}, headers=_bearer(secret)).status_code == 403

    # the listing shows the prefix and name (as typed, not as markup), never the secret
    listed = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    assert row["prefix"] in listed.stdout and "[bold]ci" in listed.stdout and secret not in listed.stdout

    # revoked by id: refused from the next request on, and listed as revoked
    revoked = runner.invoke(app, ["keys", "revoke", str(row["id"])])
    assert revoked.exit_code == 0, revoked.output
    refused = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=_bearer(secret))
    assert refused.status_code == 401 and refused.json()["detail"] == "API key revoked"
    with get_engine().connect() as conn:
        revoked_at, last_used_at = conn.execute(
            text("SELECT revoked_at, last_used_at FROM api_keys WHERE id = :id"), {"id": row["id"]}
        ).one()
    assert revoked_at is not None and last_used_at is not None


def test_cli_refuses_bad_input_clearly(infra: Infra) -> None:
    from atelier.cli import app

    runner = CliRunner()
    bad_scope = runner.invoke(app, ["keys", "create", "--scope", "write"])
    assert bad_scope.exit_code == 2 and "'write'" in bad_scope.output
    bad_rate = runner.invoke(app, ["keys", "create", "--scope", "read", "--rate-limit", "lots"])
    assert bad_rate.exit_code == 2 and "'lots'" in bad_rate.output
    unknown = runner.invoke(app, ["keys", "revoke", str(uuid.uuid4())])
    assert unknown.exit_code == 1 and "no key" in unknown.output


def test_an_unreachable_valkey_lets_requests_through_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.ratelimit import Limiter, parse_rate

    # given: nothing listens on port 1
    limiter = Limiter("redis://127.0.0.1:1/0", timeout_s=0.5)

    # when
    with caplog.at_level("WARNING", logger="gateway.ratelimit"):
        verdict = limiter.hit(parse_rate("1/hour"), "requests", "key", "k")

    # then
    assert verdict.allowed
    assert "not counted" in caplog.text

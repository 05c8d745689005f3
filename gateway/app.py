"""The HTTP API: submit images, follow jobs, read merged records. It publishes; it never fetches or infers."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import anyio
import redis
from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics, schemas
from common.blobstore import blob_store
from common.logs import log_context
from common.schemas import (
    MAX_EXTERNAL_ID_CHARS,
    ImagePage,
    ImageView,
    ItemStatus,
    JobCreated,
    JobItemPage,
    JobView,
    Problem,
    RefusedInput,
)
from common.settings import get_settings
from db import jobs, versions
from db.session import ping, session_factory
from gateway import edges
from gateway.auth import ProtectedRoute, QuotaDep
from gateway.settings import get_gateway_settings
from gateway.uploads import FILES_FIELD, UploadReader, unprocessable
from services.registry import SERVICES, check_models
from worker import broker

log = logging.getLogger(__name__)

app = FastAPIOffline(
    title="Atelier",
    version="0.1.0",
    summary="Fashion image analysis: submit image URLs or files, read merged model attributes.",
)
app.add_exception_handler(StarletteHTTPException, edges.http_error)
app.add_exception_handler(RequestValidationError, edges.validation_error)
app.add_exception_handler(SQLAlchemyError, edges.database_error)
app.add_exception_handler(Exception, edges.server_error)
# every route below needs an API key of the scope its path and method call for (gateway/auth.py)
app.router.route_class = ProtectedRoute

UPLOAD_PATH = "/v1/jobs/upload"


def _body_limit(scope: Scope) -> int:
    settings = get_gateway_settings()
    return settings.max_upload_request_bytes if scope["path"] == UPLOAD_PATH else settings.max_json_body_bytes


# methods a client may send; anything else is counted as "other", so made-up methods cannot grow the
# label set without bound
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Measure:
    """``atelier_http_requests_total`` and ``atelier_http_request_duration_seconds`` by method, route
    template (``/v1/jobs/{job_id}``, not each id) and status: bounded label values. Unmatched paths count
    as "unmatched", unknown methods as "other". Outermost, so refusals by the other middlewares count."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status_code = time.perf_counter(), 500

        async def watched(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(method, route, str(status_code)).inc()
            metrics.HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - began)


# added innermost first: _Measure sees every answer, the body cap sits next to the routes
app.add_middleware(edges.BodyLimit, limit_for=_body_limit)
app.add_middleware(edges.StorableText)
app.add_middleware(edges.SecurityHeaders)
app.add_middleware(_Measure)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route (422 FastAPI documents itself where a route has input)."""
    described = {
        400: "The body could not be parsed (not UTF-8).",
        404: "No such job or image.",
        413: "The request body, or one uploaded file, is larger than the gateway accepts.",
        415: "The upload is not multipart/form-data.",
        422: "The request was refused; ``detail`` lists each refused field and why.",
        500: "An unexpected error; the connection is closed after this answer.",
        503: "The database is unavailable (restarting); nothing was committed. Try again after "
        "``Retry-After`` seconds.",
    }
    return {
        code: {"model": RefusedInput if code == 422 else Problem, "description": described[code]}
        for code in (*codes, 500, 503)
    }


@app.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """The gateway's Prometheus metrics (text exposition format)."""
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def get_session() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _submit(session: Session, field: list[str | int], **job: Any) -> JobCreated:
    """Create the rows, commit, and only then publish: a worker never sees an item that is not there."""
    try:
        created = broker.submit_job(session, **job)
    except ValueError as exc:  # unknown model names
        raise unprocessable(field, str(exc)) from exc
    with log_context(job_id=created.job_id):
        log.info("job accepted: %d items", len(created.items))
    metrics.JOBS_SUBMITTED.inc()
    return created


class JobIn(schemas.JobIn):  # same name: the OpenAPI document keeps calling the body JobIn
    """The wire ``JobIn`` with its model names checked against the service registry while the body is
    validated, so an unknown model is a 422 beside any other error of the body."""

    models: list[Annotated[str, Field(json_schema_extra={"enum": list(SERVICES)})]] | None = Field(
        default=None, min_length=1, description="subset of the model services; all by default"
    )

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str] | None) -> list[str] | None:
        for name in models or ():
            schemas.check_text(name)
        return check_models(models)


@app.post(
    "/v1/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    responses=_errors(400, 413),
)
def create_job(body: JobIn, session: SessionDep, quota: QuotaDep) -> JobCreated:
    limit = get_gateway_settings().max_metadata_bytes
    for i, item in enumerate(body.items):
        size = _json_size(item.metadata)
        if size > limit:
            raise unprocessable(
                ["body", "items", i, "metadata"], f"metadata of {size} bytes as JSON; at most {limit}"
            )
    quota.spend(len(body.items))
    created = _submit(session, ["body", "models"], items=body.items, models=body.models, explain=body.explain)
    metrics.ITEMS_SUBMITTED.labels("url").inc(len(body.items))
    return created


def _json_size(value: Any) -> int:
    if value is None:
        return 0
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILES_FIELD],
                    "properties": {
                        FILES_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "description": "image files, each streamed to storage as it arrives",
                        },
                        "models": {
                            "type": "array",
                            "items": {"type": "string", "enum": list(SERVICES)},
                            "minItems": 1,
                        },
                        "external_ids": {
                            "type": "array",
                            "items": {"type": "string", "maxLength": MAX_EXTERNAL_ID_CHARS},
                            "description": "one per file, in order",
                        },
                        "explain": {
                            "type": "boolean",
                            "default": False,
                            "description": "Grad-CAM overlays per classifier head",
                        },
                    },
                }
            }
        },
    }
}


@app.post(
    UPLOAD_PATH,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    responses=_errors(413, 415, 422),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_job(request: Request, quota: QuotaDep) -> JobCreated:
    """Files are read as they arrive and written to the blob store, each capped while it streams
    (``max_upload_bytes``), the request too (``max_upload_request_bytes``); a request refused or failed
    at any point deletes what it wrote."""
    settings = get_gateway_settings()
    store = blob_store(get_settings().blob_dir)
    reader = UploadReader(
        store,
        request.headers.get("content-type", ""),
        max_files=settings.max_upload_files,
        max_file_bytes=settings.max_upload_bytes,
        max_field_bytes=settings.max_form_field_bytes,
    )
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(reader.feed, chunk)
        reader.finish()
        uploads, models, explain = _upload_form(reader)
        quota.spend(len(uploads))
        created = await run_in_threadpool(_submit_uploads, uploads, models, explain)
    except BaseException:
        with anyio.CancelScope(shield=True):  # a client gone mid-upload still has its blobs deleted
            await run_in_threadpool(_discard, reader)
        raise
    metrics.ITEMS_SUBMITTED.labels("upload").inc(len(uploads))
    return created


@app.api_route(
    UPLOAD_PATH, methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False
)
def upload_other_methods() -> None:
    """405 for ``/v1/jobs/upload`` with another method than POST; without this route the path would
    match ``/v1/jobs/{job_id}`` and answer 422 for the id "upload"."""
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, headers={"Allow": "POST"})


def _upload_form(reader: UploadReader) -> tuple[list[jobs.Upload], list[str] | None, bool]:
    files, fields = reader.files, reader.fields
    if not files:
        raise unprocessable(["body", FILES_FIELD], "at least one file is required")
    external_ids = fields.get("external_ids")
    if external_ids is not None and len(external_ids) != len(files):
        raise unprocessable(
            ["body", "external_ids"], f"{len(external_ids)} external_ids for {len(files)} files"
        )
    for i, external_id in enumerate(external_ids or ()):
        if len(external_id) > MAX_EXTERNAL_ID_CHARS:
            raise unprocessable(
                ["body", "external_ids", i],
                f"external_id of {len(external_id)} characters; at most {MAX_EXTERNAL_ID_CHARS}",
            )
    models = fields.get("models")
    try:
        check_models(models)
    except ValueError as exc:
        raise unprocessable(["body", "models"], str(exc)) from exc
    explain_values = fields.get("explain", ["false"])
    try:
        if len(explain_values) != 1:
            raise ValueError("one value expected")
        explain = TypeAdapter(bool).validate_python(explain_values[0])
    except (ValueError, ValidationError) as exc:
        raise unprocessable(["body", "explain"], f"not a boolean: {explain_values!r}") from exc
    uploads = [
        jobs.Upload(f.filename, external_id=external_ids[i] if external_ids else None, key=f.key)
        for i, f in enumerate(files)
    ]
    return uploads, models, explain


def _submit_uploads(uploads: list[jobs.Upload], models: list[str] | None, explain: bool) -> JobCreated:
    with session_factory()() as session:
        return _submit(session, ["body", "models"], uploads=uploads, models=models, explain=explain)


def _discard(reader: UploadReader) -> None:
    """Delete what a failed upload wrote, except blobs whose rows did commit (the publish after the
    commit failed: the items exist and will be fetched from them)."""
    keys = [f.key for f in reader.files]
    try:
        with session_factory()() as session:
            kept = jobs.referenced_upload_keys(session, keys) if keys else set()
    except SQLAlchemyError:
        kept = set()  # the database is not answering: the commit it would take did not happen either
    reader.files[:] = [f for f in reader.files if f.key not in kept]
    reader.discard()


@app.get("/v1/jobs/{job_id}", response_model=JobView, responses=_errors(404))
def get_job(
    job_id: uuid.UUID,
    session: SessionDep,
    items_limit: Annotated[
        int, Query(ge=0, le=10_000, description="also list the first N items (page with /items)")
    ] = 0,
) -> JobView:
    """The job and how many of its items are in each state: cheap at any job size."""
    view = jobs.job_view(session, job_id, items_limit)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return view


@app.get("/v1/jobs/{job_id}/items", response_model=JobItemPage, responses=_errors(404))
def get_job_items(
    job_id: uuid.UUID,
    session: SessionDep,
    status_: Annotated[ItemStatus | None, Query(alias="status")] = None,
    after: Annotated[int, Query(ge=-1, le=2**31 - 1, description="the previous page's next_after")] = -1,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> JobItemPage:
    """The job's items in submission order, a page at a time (keyset on the position)."""
    settings = get_gateway_settings()
    size = min(limit or settings.page_size, settings.max_page_size)
    page = jobs.job_items(session, job_id, limit=size, after=after, status=status_)
    if page is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return page


@app.get("/v1/images/{item_id}", response_model=ImageView, responses=_errors(404))
def get_image(item_id: uuid.UUID, session: SessionDep) -> ImageView:
    view = jobs.image_view(session, item_id, order=tuple(SERVICES))
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {item_id}")
    return view


@app.get("/v1/images", response_model=ImagePage, responses=_errors())
def list_images(
    session: SessionDep,
    external_id: str | None = None,
    status_: Annotated[ItemStatus | None, Query(alias="status")] = None,
    job_id: uuid.UUID | None = None,
    sha256: Annotated[str | None, Query(pattern="^[0-9a-fA-F]{64}$")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: Annotated[
        str | None, Query(pattern="^[A-Za-z0-9_-]{22}$", description="a page's next_cursor")
    ] = None,
) -> ImagePage:
    settings = get_gateway_settings()
    size = min(limit or settings.page_size, settings.max_page_size)
    try:
        return jobs.image_page(
            session,
            limit=size,
            cursor=cursor,
            external_id=external_id,
            status=status_,
            job_id=job_id,
            sha256=sha256,
            order=tuple(SERVICES),
        )
    except ValueError as exc:
        raise unprocessable(["query", "cursor"], str(exc)) from exc


@app.get(
    "/v1/images/{item_id}/explanations/{model}/{head}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_errors(404)},
)
def get_explanation(item_id: uuid.UUID, model: str, head: str, session: SessionDep) -> Response:
    """The Grad-CAM overlay of one head, for an image submitted with ``explain``."""
    key = _record_blob(session, item_id, model, "explanations", head)
    if key is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no {model} explanation of {head!r} for image {item_id}"
        )
    return Response(blob_store(get_settings().blob_dir).get(key), media_type="image/png")


@app.get(
    "/v1/images/{item_id}/files/{model}/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_errors(404)},
)
def get_result_file(item_id: uuid.UUID, model: str, name: str, session: SessionDep) -> Response:
    """A picture a model made for the image (the segmenter's cut-outs, region map and overlay)."""
    key = _record_blob(session, item_id, model, "files", name)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {model} file {name!r} for image {item_id}")
    media_type = "image/png" if name.endswith(".png") else "application/octet-stream"
    return Response(blob_store(get_settings().blob_dir).get(key), media_type=media_type)


def _record_blob(session: Any, item_id: uuid.UUID, model: str, group: str, name: str) -> str | None:
    """The blob key the merged record keeps at ``record[model][group][name]``, if any."""
    view = jobs.image_view(session, item_id)
    if view is None:
        return None
    key = (((view.record or {}).get(model) or {}).get(group) or {}).get(name)
    return str(key) if key is not None else None


@app.get("/healthz", responses=_errors())
def healthz() -> dict[str, str]:
    return {"status": "ok"}


class ServiceReadiness(BaseModel):
    available: bool
    version: str | None
    reason: str | None = None


class Readiness(BaseModel):
    """What answers and what does not: ``down`` names each dependency that is down (``database``,
    ``broker``) and each model service that cannot analyse now; never a path or an error's text."""

    ready: bool
    database: Literal["ok", "down"]
    broker: Literal["ok", "down"]
    services: dict[str, ServiceReadiness]
    down: list[str]


@app.get(
    "/readyz",
    response_model=Readiness,
    responses={**_errors(), 503: {"model": Readiness, "description": "The database or the broker is down."}},
)
def readyz(session: SessionDep) -> JSONResponse:
    """Ready when the database and the broker answer; model services report whether they can serve.
    Why a check failed goes to the log, not to whoever asks."""
    settings, timeout = get_settings(), get_gateway_settings().readiness_timeout_s
    database = _check_database(session)
    broker_state = _check_broker(settings.redis_url, timeout)
    services = _services(session) if database == "ok" else {}
    down = [name for name, state in (("database", database), ("broker", broker_state)) if state != "ok"]
    down += [name for name in SERVICES if name not in services or not services[name].available]
    ready = database == "ok" and broker_state == "ok"
    body = Readiness(ready=ready, database=database, broker=broker_state, services=services, down=down)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _services(session: Session) -> dict[str, ServiceReadiness]:
    """What each model service serves, as its workers reported it (the gateway reads no model files)."""
    try:
        return {
            name: ServiceReadiness(
                **vars(
                    versions.Availability(True, spec.builtin_version)
                    if spec.builtin_version is not None
                    else versions.availability(session, name)
                )
            )
            for name, spec in SERVICES.items()
        }
    except SQLAlchemyError:
        log.warning("readiness: reading the served versions failed", exc_info=True)
        session.rollback()
        return {}


def _check_database(session: Session) -> Literal["ok", "down"]:
    try:
        ping(session)
    except SQLAlchemyError:
        log.warning("readiness: the database does not answer", exc_info=True)
        session.rollback()
        return "down"
    return "ok"


def _check_broker(url: str, timeout: float) -> Literal["ok", "down"]:
    try:
        redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping()
    except redis.RedisError:
        log.warning("readiness: the broker does not answer", exc_info=True)
        return "down"
    return "ok"

"""The HTTP API: submit images, follow jobs, read merged records. It publishes; it never fetches or infers."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common import metrics, schemas
from common.blobstore import blob_store
from common.logs import log_context
from common.schemas import ImagePage, ImageView, ItemStatus, JobCreated, JobView
from common.settings import get_settings
from db import jobs, versions
from db.session import ping, session_factory
from gateway.auth import ProtectedRoute, QuotaDep
from gateway.settings import get_gateway_settings
from services.registry import SERVICES, check_models
from worker import broker

log = logging.getLogger(__name__)

app = FastAPI(
    title="Atelier",
    version="0.1.0",
    summary="Fashion image analysis: submit image URLs or files, read merged model attributes.",
)
# every route below needs an API key of the scope its path and method call for (gateway/auth.py)
app.router.route_class = ProtectedRoute


@app.middleware("http")
async def _measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """``atelier_http_requests_total`` and ``atelier_http_request_duration_seconds`` by route template
    (``/v1/jobs/{job_id}``, not each id: bounded label values); unmatched paths count as "unmatched"."""
    began = time.perf_counter()
    status_code = 500
    try:
        response = await call_next(request)
        status_code = response.status_code
        return response
    finally:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.HTTP_REQUESTS.labels(request.method, route, str(status_code)).inc()
        metrics.HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - began)


@app.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """The gateway's Prometheus metrics (text exposition format)."""
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def get_session() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _submit(session: Session, field: list[str], **job: Any) -> JobCreated:
    """Create the rows, commit, and only then publish: a worker never sees an item that is not there."""
    try:
        created = broker.submit_job(session, **job)
    except ValueError as exc:  # unknown model names
        _unprocessable(field, str(exc))
    with log_context(job_id=created.job_id):
        log.info("job accepted: %d items", len(created.items))
    metrics.JOBS_SUBMITTED.inc()
    return created


class JobIn(schemas.JobIn):  # same name: the OpenAPI document keeps calling the body JobIn
    """The wire ``JobIn`` with its model names checked against the service registry while the body is
    validated, so an unknown model is a 422 beside any other error of the body."""

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str] | None) -> list[str] | None:
        return check_models(models)


@app.post("/v1/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def create_job(body: JobIn, session: SessionDep, quota: QuotaDep) -> JobCreated:
    quota.spend(len(body.items))
    created = _submit(session, ["body", "models"], items=body.items, models=body.models, explain=body.explain)
    metrics.ITEMS_SUBMITTED.labels("url").inc(len(body.items))
    return created


@app.post("/v1/jobs/upload", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def upload_job(
    session: SessionDep,
    quota: QuotaDep,
    files: Annotated[list[UploadFile], File(description="image files")],
    models: Annotated[list[str] | None, Form()] = None,
    external_ids: Annotated[list[str] | None, Form(description="one per file, in order")] = None,
    explain: Annotated[bool, Form(description="Grad-CAM overlays per classifier head")] = False,
) -> JobCreated:
    settings = get_gateway_settings()
    if len(files) > settings.max_upload_files:
        _unprocessable(
            ["body", "files"], f"at most {settings.max_upload_files} files per request, got {len(files)}"
        )
    if external_ids is not None and len(external_ids) != len(files):
        _unprocessable(["body", "external_ids"], f"{len(external_ids)} external_ids for {len(files)} files")
    try:
        check_models(models)
    except ValueError as exc:
        _unprocessable(["body", "models"], str(exc))
    quota.spend(len(files))
    uploads = [
        jobs.Upload(
            f.filename or f"upload-{i}",
            _read_capped(f, settings.max_upload_bytes),
            external_ids[i] if external_ids else None,
        )
        for i, f in enumerate(files)
    ]
    store = blob_store(get_settings().blob_dir)
    created = _submit(
        session, ["body", "models"], uploads=uploads, models=models, store=store, explain=explain
    )
    metrics.ITEMS_SUBMITTED.labels("upload").inc(len(uploads))
    return created


def _read_capped(upload: UploadFile, cap: int) -> bytes:
    data = upload.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"file {upload.filename!r} is larger than {cap} bytes"
        )
    return data


def _unprocessable(loc: list[str], msg: str) -> None:
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": loc, "msg": msg, "type": "value_error"}]
    )


@app.get("/v1/jobs/{job_id}", response_model=JobView)
def get_job(
    job_id: uuid.UUID, session: SessionDep, items_limit: Annotated[int, Query(ge=0, le=10_000)] = 10_000
) -> JobView:
    view = jobs.job_view(session, job_id, items_limit)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return view


@app.get("/v1/images/{item_id}", response_model=ImageView)
def get_image(item_id: uuid.UUID, session: SessionDep) -> ImageView:
    view = jobs.image_view(session, item_id, order=tuple(SERVICES))
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {item_id}")
    return view


@app.get("/v1/images", response_model=ImagePage)
def list_images(
    session: SessionDep,
    external_id: str | None = None,
    status_: Annotated[ItemStatus | None, Query(alias="status")] = None,
    job_id: uuid.UUID | None = None,
    sha256: Annotated[str | None, Query(pattern="^[0-9a-fA-F]{64}$")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: str | None = None,
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
        _unprocessable(["query", "cursor"], str(exc))
        raise  # unreachable: _unprocessable raises


@app.get(
    "/v1/images/{item_id}/explanations/{model}/{head}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
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
    responses={200: {"content": {"image/png": {}}}},
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


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/readyz")
def readyz(session: SessionDep) -> JSONResponse:
    """Ready when the database and the broker answer; model services report whether they can serve."""
    settings, timeout = get_settings(), get_gateway_settings().readiness_timeout_s
    checks: dict[str, Any] = {
        "database": _check_database(session),
        "broker": _check_broker(settings.redis_url, timeout),
    }
    checks["services"] = _services(session)
    ready = checks["database"] == "ok" and checks["broker"] == "ok"
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


def _services(session: Session) -> dict[str, Any]:
    """What each model service serves, as its workers reported it (the gateway reads no model files)."""
    try:
        return {
            name: vars(
                versions.Availability(True, spec.builtin_version)
                if spec.builtin_version is not None
                else versions.availability(session, name)
            )
            for name, spec in SERVICES.items()
        }
    except SQLAlchemyError as exc:
        session.rollback()
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def _check_database(session: Session) -> str:
    try:
        ping(session)
    except SQLAlchemyError as exc:
        return f"error: {exc.__class__.__name__}: {exc}"
    return "ok"


def _check_broker(url: str, timeout: float) -> str:
    try:
        redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping()
    except redis.RedisError as exc:
        return f"error: {exc.__class__.__name__}: {exc}"
    return "ok"

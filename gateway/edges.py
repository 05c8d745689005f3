"""What every request meets before and after its route: the body cap, text that cannot be stored,
security headers, and the answers for errors (422 that never echo unencodable text, 500 that close).

Pure ASGI middlewares: they see the body as it streams, which ``@app.middleware("http")`` cannot do
without reading it whole."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.schemas import Problem, unstorable_text
from db.session import database_unavailable

log = logging.getLogger(__name__)


class SafeJSONResponse(JSONResponse):
    """JSON escaped to ASCII: a client's lone surrogate quoted back in an error cannot fail to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        # the rest of the body stays unread: the connection cannot carry another request
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body larger than {limit} bytes",
            headers={"Connection": "close"},
        )


class BodyLimit:
    """Refuses a body over ``limit_for(scope)`` bytes with 413: at once when Content-Length says so,
    else at the first chunk past the cap while the route reads it (so an upload never lands whole)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(scope, send, BodyTooLarge(limit))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await _answer(scope, send, exc)


class StorableText:
    """Refuses a path or query parameter holding NUL (``%00``) with 422 naming it, before any route:
    PostgreSQL text cannot hold it. (Percent-decoding replaces invalid UTF-8, so no lone surrogate can
    arrive this way.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _unstorable_parameter(scope)
            if problem is not None:
                loc, msg = problem
                await _answer(
                    scope, send, HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])
                )
                return
        await self.app(scope, receive, send)


def _unstorable_parameter(scope: Scope) -> tuple[list[str], str] | None:
    path = unquote(scope.get("raw_path", b"").decode("latin-1")) if scope.get("raw_path") else scope["path"]
    if (problem := unstorable_text(path)) is not None:
        return ["path"], f"path {problem}"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        if (problem := unstorable_text(name)) is not None:
            return ["query"], f"a query parameter name {problem}"
        if (problem := unstorable_text(value)) is not None:
            return ["query", name], f"query parameter {name!r} {problem}"
    return None


API_CSP = "default-src 'none'; frame-ancestors 'none'"
# the offline Swagger UI and ReDoc pages: their own scripts and styles (served by this app, from the
# installed fastapi-offline package), the inline script that starts them, ReDoc's blob: worker
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc", "/static-offline-docs/")


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    csp = DOCS_CSP if path.startswith(DOCS_PATHS) else API_CSP
    return [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", csp.encode()),
    ]


class SecurityHeaders:
    """The headers a browser needs to treat API answers as inert data: no sniffing, no framing, no
    referrer, no script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


async def _answer(scope: Scope, send: Send, exc: HTTPException) -> None:
    response = SafeJSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
    response.raw_headers.extend(security_headers(scope["path"]))

    async def nothing() -> Message:  # a response that reads no body
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)


async def http_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return SafeJSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, RequestValidationError)
    return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status.HTTP_422_UNPROCESSABLE_CONTENT)


async def database_error(request: Request, exc: Exception) -> SafeJSONResponse:
    """A database that is away (restarting, unreachable, its pool exhausted) answers 503 with
    ``Retry-After``: nothing was committed, the client may try again. Any other database error is a 500."""
    if not database_unavailable(exc):
        log.error("unhandled database error on %s %s", request.method, request.url.path, exc_info=exc)
        return await server_error(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    detail = "the database is unavailable; try again shortly"
    return _problem(request, detail, status.HTTP_503_SERVICE_UNAVAILABLE, {"Retry-After": "5"})


async def server_error(request: Request, exc: Exception) -> SafeJSONResponse:
    """Every unhandled error: logged with its traceback here, answered without its text, and the
    connection closed (uvicorn would otherwise drop a keep-alive connection without saying so). The
    traceback is logged by the server, to which Starlette re-raises the error after this answer."""
    return _problem(
        request, "internal server error", status.HTTP_500_INTERNAL_SERVER_ERROR, {"Connection": "close"}
    )


def _problem(request: Request, detail: str, code: int, headers: dict[str, str]) -> SafeJSONResponse:
    response = SafeJSONResponse(Problem(detail=detail).model_dump(), code, headers=headers)
    response.raw_headers.extend(security_headers(request.url.path))
    return response

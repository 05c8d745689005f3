"""Who may do what: an API key and a rate limit on every route of the gateway but the open ones.

Every route of the app is made by ``ProtectedRoute`` (``app.router.route_class``), which gives it the
dependency ``Require(scope)`` and documents its 401, 403 and 429. The scope comes from the route itself
(``required_scope``), so a new route is guarded without anyone remembering to: GET reads (``read``),
anything else changes something (``submit``), ``/v1/admin/...`` is ``admin``. Open: the probes
(``/healthz``, ``/readyz``), ``/metrics`` and the API documents.

Why ``/metrics`` is open: Prometheus scrapes it from inside the deployment, its labels are bounded route
templates and counts (no ids, URLs or keys), and a key in every scrape config would be one more secret
to rotate; where the gateway faces the internet, the ingress should not route ``/metrics``.

Keys are required when ``ATELIER_GATEWAY_REQUIRE_KEYS`` says so, and when unset, outside
``ATELIER_ENVIRONMENT=development`` (the default of a checkout, and of the embedded ``atelier up``).
The setting follows the environment so that production is closed by default; it exists so an operator
can say so explicitly either way. Without a required key, a request without one is anonymous and
limited per client address; a key that is given is checked all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem
from pydantic import BaseModel

from common.settings import get_settings
from db import keys
from db.keys import Grant, Scope
from db.session import transaction
from gateway import ratelimit
from gateway.settings import get_gateway_settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
ADMIN_PREFIX = "/v1/admin"
REALM = 'Bearer realm="atelier"'


def required_scope(path: str, methods: Iterable[str]) -> Scope | None:
    """The scope a route needs; None for the open ones."""
    if path in PUBLIC_PATHS:
        return None
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return Scope.admin
    if {m.upper() for m in methods} <= {"GET", "HEAD"}:
        return Scope.read
    return Scope.submit


class Refusal(BaseModel):
    """Why the request was refused."""

    detail: str


REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Refusal,
        "description": "No API key, or an unknown or revoked one.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": REALM}},
    },
    403: {"model": Refusal, "description": "The API key lacks the scope this route needs."},
    429: {
        "model": Refusal,
        "description": "The key's (or, without a key, the client address's) rate limit or daily item "
        "quota is spent.",
        "headers": {
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}
        },
    },
}

_bearer = HTTPBearer(auto_error=False, description="An Atelier API key: `Authorization: Bearer atk_...`.")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An Atelier API key, the other way to give it."
)


@dataclass(frozen=True)
class Caller:
    """Who made the request: a key's grant, or None when anonymous (keys not required)."""

    grant: Grant | None
    address: str


class Require:
    """The dependency guarding a route: a valid key with ``scope`` (or none where keys are not
    required), within its rate limit. Leaves the ``Caller`` in ``request.state.caller``."""

    def __init__(self, scope: Scope):
        self.scope = scope

    def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_api_key_header)],
    ) -> Caller:
        settings = get_gateway_settings()
        secret = bearer.credentials if bearer is not None else api_key
        address = request.client.host if request.client is not None else "unknown"
        if secret is None:
            if settings.keys_required(get_settings().environment):
                raise _unauthorized("an API key is required: Authorization: Bearer <key>, or X-API-Key")
            caller = Caller(None, address)
            limit, identity = _rate(settings.anonymous_rate_limit), ("address", address)
        else:
            grant = _grant(secret)
            if not grant.allows(self.scope):
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"key {grant.prefix} has scopes {sorted(grant.scopes)}; this route needs "
                    f"{self.scope.value!r}",
                    headers={
                        "WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{self.scope}"'
                    },
                )
            caller = Caller(grant, address)
            limit, identity = _rate(grant.rate_limit or settings.key_rate_limit), ("key", str(grant.id))
        verdict = _limiter().hit(limit, "requests", *identity)
        if not verdict.allowed:
            who = f"key {caller.grant.prefix}" if caller.grant else f"client {address}"
            raise _too_many(f"{who} is over its rate limit of {limit}", verdict)
        request.state.caller = caller
        return caller


class ItemQuota:
    """The caller's daily item quota: ``spend(n)`` before a job of n items is created."""

    def __init__(self, caller: Caller):
        self.caller = caller

    def spend(self, items: int) -> None:
        """Count ``items`` against the key's quota, or raise 429 counting none of them. Anonymous
        callers (keys not required) have no quota."""
        grant = self.caller.grant
        if grant is None:
            return
        quota = grant.items_per_day if grant.items_per_day is not None else self._default()
        verdict = _limiter().hit(ratelimit.per_day(quota), "items", str(grant.id), cost=items)
        if not verdict.allowed:
            raise _too_many(
                f"key {grant.prefix}: {items} more items would pass its quota of {quota} items per 24 hours",
                verdict,
            )

    @staticmethod
    def _default() -> int:
        return get_gateway_settings().key_items_per_day


def item_quota(request: Request) -> ItemQuota:
    caller = getattr(request.state, "caller", None)
    if not isinstance(caller, Caller):  # a route Require does not guard: a bug, not the client's fault
        raise RuntimeError(f"{request.url.path}: item quota asked for on a route without a Require")
    return ItemQuota(caller)


QuotaDep = Annotated[ItemQuota, Depends(item_quota)]


class ProtectedRoute(APIRoute):
    """An ``APIRoute`` guarded by ``Require(required_scope(...))``, with its refusals documented."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.required_scope = required_scope(path, kwargs.get("methods") or ("GET",))
        if self.required_scope is not None:
            guard = Depends(Require(self.required_scope))
            kwargs["dependencies"] = [guard, *(kwargs.get("dependencies") or [])]
            kwargs["responses"] = {**REFUSALS, **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)


def _grant(secret: str) -> Grant:
    with transaction() as session:
        found = keys.authenticate(session, secret)
    if found.grant is None:
        raise _unauthorized("API key revoked" if found.revoked else "unknown API key", invalid=True)
    return found.grant


def _unauthorized(detail: str, invalid: bool = False) -> HTTPException:
    challenge = f'{REALM}, error="invalid_token"' if invalid else REALM
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})


def _too_many(detail: str, verdict: ratelimit.Verdict) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"{detail}; retry in {verdict.retry_after_s} s",
        headers={"Retry-After": str(verdict.retry_after_s)},
    )


@lru_cache(maxsize=32)
def _rate(text: str) -> RateLimitItem:
    return ratelimit.parse_rate(text)


def _limiter() -> ratelimit.Limiter:
    return ratelimit.limiter(get_settings().redis_url, get_gateway_settings().rate_limit_timeout_s)

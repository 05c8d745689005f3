"""The gateway's API keys: made, looked up, listed and revoked here, and nowhere else.

A key is ``atk_`` and 32 random bytes (URL-safe base64). Only its SHA-256 is stored, with the first
characters of the key as a non-secret prefix that people recognise it by (``keys list``, logs).

Why SHA-256 and not argon2 or bcrypt: those are slow on purpose, to make guessing a *low-entropy*
password from a leaked hash expensive. A key has 256 random bits, so its hash cannot be reversed by
guessing however fast the hash is, and a fast hash lets the gateway look a key up by its hash with an
index on every request (argon2 would cost tens of milliseconds and megabytes of memory per request,
and would need a per-key salt and a lookup by prefix first).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import ApiKey

SECRET_PREFIX = "atk_"
SECRET_BYTES = 32
PREFIX_CHARS = len(SECRET_PREFIX) + 8  # "atk_" and 8 random characters: 48 bits, unique in practice
# last_used_at is refreshed at most this often per key: a write per request would cost more than the
# lookup it follows, and "used in the last minute" is all anyone reads from it
TOUCH_INTERVAL = timedelta(minutes=1)


class Scope(enum.StrEnum):
    """What a key may do. ``admin`` implies the others; ``submit`` does not imply ``read``."""

    submit = "submit"
    read = "read"
    admin = "admin"


@dataclass(frozen=True)
class Grant:
    """A valid (unrevoked) key as the gateway needs it; never holds the secret."""

    id: uuid.UUID
    prefix: str
    name: str
    scopes: frozenset[Scope]
    rate_limit: str | None
    items_per_day: int | None

    def allows(self, scope: Scope) -> bool:
        return Scope.admin in self.scopes or scope in self.scopes


@dataclass(frozen=True)
class Lookup:
    """What a presented secret turned out to be: a grant, a revoked key, or nothing known."""

    grant: Grant | None
    revoked: bool = False


def hash_secret(secret: str) -> str:
    """The stored form of a secret: hex SHA-256 (see the module's docstring for why no slow hash)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session,
    scopes: Iterable[Scope | str],
    *,
    name: str = "",
    rate_limit: str | None = None,
    items_per_day: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key: its row (flushed, not committed) and its secret, which exists only in the return value."""
    chosen = sorted({Scope(s) for s in scopes})
    if not chosen:
        raise ValueError("a key needs at least one scope; one of submit, read, admin")
    if items_per_day is not None and items_per_day < 0:
        raise ValueError(f"items_per_day must be 0 or more, got {items_per_day}")
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    row = ApiKey(
        name=name,
        prefix=secret[:PREFIX_CHARS],
        secret_hash=hash_secret(secret),
        scopes=[s.value for s in chosen],
        rate_limit=rate_limit,
        items_per_day=items_per_day,
    )
    session.add(row)
    session.flush()
    return row, secret


def authenticate(session: Session, secret: str) -> Lookup:
    """The key whose secret this is, found by its hash; refreshes ``last_used_at`` when it is stale."""
    found = session.execute(
        select(ApiKey, func.now()).where(ApiKey.secret_hash == hash_secret(secret))
    ).one_or_none()
    if found is None:
        return Lookup(None)
    row, now = found  # the database's clock, which stamps last_used_at
    if row.revoked_at is not None:
        return Lookup(None, revoked=True)
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return Lookup(
        Grant(
            id=row.id,
            prefix=row.prefix,
            name=row.name,
            scopes=frozenset(Scope(s) for s in row.scopes),
            rate_limit=row.rate_limit,
            items_per_day=row.items_per_day,
        )
    )


def list_keys(session: Session) -> Sequence[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    return session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()


def revoke(session: Session, ref: str) -> ApiKey | None:
    """Revoke the key whose id or prefix is ``ref``; None when no key has it. Revoking twice keeps the
    first time. Raises ``ValueError`` when a prefix names more than one key."""
    try:
        condition = ApiKey.id == uuid.UUID(ref)
    except ValueError:
        condition = ApiKey.prefix == ref
    rows = session.scalars(select(ApiKey).where(condition).with_for_update()).all()
    if len(rows) > 1:
        raise ValueError(f"{len(rows)} keys have the prefix {ref!r}; revoke by id")
    if not rows:
        return None
    [row] = rows
    if row.revoked_at is None:
        row.revoked_at = session.scalar(select(func.now()))
    return row

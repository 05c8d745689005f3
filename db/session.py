"""Engine and session factory, one per process (Celery prefork children make their own after fork)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    TimeoutError,
)
from sqlalchemy.orm import Session, sessionmaker

from common.settings import get_settings


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    return create_engine(
        url or settings.sqlalchemy_url,
        pool_pre_ping=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_s,
    )


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def transaction() -> Iterator[Session]:
    """A session whose work commits on success and rolls back on error."""
    with session_factory().begin() as session:
        yield session


def reset_engine() -> None:
    """Forget pooled connections (after fork, or when the settings point elsewhere)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    session_factory.cache_clear()


def ping(session: Session) -> None:
    """One round trip to the database; raises ``SQLAlchemyError`` when it does not answer."""
    session.execute(text("SELECT 1"))


# SQLSTATEs of a server going away: admin/crash shutdown, cannot connect now, too many connections
_AWAY = frozenset({"57P01", "57P02", "57P03", "53300"})


def database_unavailable(exc: BaseException) -> bool:
    """The database is away (restarting, unreachable, out of connections, the pool exhausted), as
    opposed to a statement that failed (a deadlock, a cancelled query, a full disk are the work's own
    errors, retried and counted like any other): worth waiting for, uncounted."""
    if isinstance(exc, DisconnectionError | TimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:  # no answer from a server at all: refused, reset, closed
        return isinstance(exc, OperationalError | InterfaceError)
    return str(sqlstate).startswith("08") or sqlstate in _AWAY

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
    SQLAlchemyError,
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


def database_unavailable(exc: BaseException) -> bool:
    """The database is away (restarting, unreachable, its pool exhausted), as opposed to a statement
    that failed: worth waiting for and trying again."""
    if not isinstance(exc, SQLAlchemyError):
        return False
    return isinstance(exc, DisconnectionError | OperationalError | InterfaceError | TimeoutError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )

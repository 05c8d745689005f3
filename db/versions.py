"""Which model versions are served: reported by the workers that serve them, read by the orchestrator.

A model worker reports its version when it starts and then every heartbeat. New analyses go to the
version whose worker started most recently (a rollout's new version; a rollback's old one), even while
no worker of it runs (queues scaled to zero wake their workers up). A version is *live* while some
worker of it sent a heartbeat recently: only then may its queued work wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import ServedVersion


@dataclass(frozen=True)
class Availability:
    """Whether a model can analyse new images now, with which version, or why not."""

    available: bool
    version: str | None
    reason: str | None = None


def report_served(session: Session, model: str, version: str, *, started: bool) -> None:
    """A worker serves ``version`` of ``model``: ``started`` when it just began (it becomes the current
    version), else a heartbeat, which only keeps a reported version live (a retired one stays retired)."""
    now = func.now()
    if not started:
        session.execute(
            update(ServedVersion)
            .where(ServedVersion.model_name == model, ServedVersion.model_version == version)
            .values(seen_at=now)
        )
        return
    statement = insert(ServedVersion).values(
        model_name=model, model_version=version, started_at=now, seen_at=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[ServedVersion.model_name, ServedVersion.model_version],
            set_={"started_at": now, "seen_at": now},
        )
    )


def retire(session: Session, model: str, version: str | None = None) -> int:
    """Forget that ``version`` (every version: None) of ``model`` is served; how many were. New work for
    the model is skipped until a worker reports a version again."""
    statement = delete(ServedVersion).where(ServedVersion.model_name == model)
    if version is not None:
        statement = statement.where(ServedVersion.model_version == version)
    return len(session.execute(statement.returning(ServedVersion.model_version)).all())


def current_version(session: Session, model: str) -> str | None:
    """The version new analyses of ``model`` go to: the one whose worker started last."""
    return session.scalars(
        select(ServedVersion.model_version)
        .where(ServedVersion.model_name == model)
        .order_by(ServedVersion.started_at.desc(), ServedVersion.model_version.desc())
        .limit(1)
    ).first()


def availability(session: Session, model: str) -> Availability:
    version = current_version(session, model)
    if version is None:
        return Availability(
            False, None, f"no model artifact served: no {model} worker has reported a version"
        )
    return Availability(True, version)


def is_live(session: Session, model: str, version: str, within_s: float) -> bool:
    """Whether a worker serving ``version`` sent a heartbeat in the last ``within_s`` seconds."""
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, within_s)
    return (
        session.scalars(
            select(ServedVersion.model_version).where(
                ServedVersion.model_name == model,
                ServedVersion.model_version == version,
                ServedVersion.seen_at >= cutoff,
            )
        ).first()
        is not None
    )


def started_since(session: Session, model: str, since: datetime) -> str | None:
    """A version of ``model`` whose worker started serving at or after ``since``, if any."""
    return session.scalars(
        select(ServedVersion.model_version).where(
            ServedVersion.model_name == model, ServedVersion.started_at >= since
        )
    ).first()


def database_now(session: Session) -> datetime:
    """The database's clock, which ``started_at`` and ``seen_at`` are read on."""
    now: datetime = session.scalars(select(func.now())).one()
    return now


def served(session: Session) -> list[ServedVersion]:
    """Every reported version, by model, newest start first."""
    query = select(ServedVersion).order_by(ServedVersion.model_name, ServedVersion.started_at.desc())
    return list(session.scalars(query))

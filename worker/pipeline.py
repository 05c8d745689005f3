"""The item state machine in Postgres: every transition is one short transaction, safe to repeat.

queued → fetching → analysing → done | failed. Completion is recorded per (image, model, version) in
``model_results``; whoever finishes last for an image (under a row lock on the image) completes the
items waiting on it, merges the record and counts the items off their job. No Celery chords.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.models import (
    TERMINAL_ITEM_STATES,
    Embedding,
    Image,
    ImageRecord,
    Item,
    ItemStatus,
    Job,
    ModelResult,
    ResultStatus,
    uuid7,
)
from services.base import Availability


@dataclass(frozen=True)
class FetchClaim:
    item_id: uuid.UUID
    status: ItemStatus
    url: str | None
    upload_key: str | None
    models: list[str]


@dataclass(frozen=True)
class AnalysisClaim:
    result_id: uuid.UUID
    image_id: uuid.UUID
    blob_key: str
    model_name: str
    model_version: str


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    blob_key: str
    format: str
    width: int
    height: int
    size_bytes: int


def queued_item_ids(session: Session, job_id: uuid.UUID) -> list[uuid.UUID]:
    rows = session.scalars(
        select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.queued).order_by(Item.position)
    )
    return list(rows)


def mark_dispatched(session: Session, job_id: uuid.UUID) -> None:
    session.execute(
        update(Job).where(Job.id == job_id, Job.dispatched_at.is_(None)).values(dispatched_at=func.now())
    )


def claim_fetch(session: Session, item_id: uuid.UUID) -> FetchClaim | None:
    """Move a queued (or interrupted) item to fetching. Returns None for unknown or finished items."""
    row = session.execute(
        select(Item.status, Item.url, Item.upload_key, Job.models)
        .join(Job, Job.id == Item.job_id)
        .where(Item.id == item_id)
        .with_for_update(of=Item)
    ).one_or_none()
    if row is None or row.status in TERMINAL_ITEM_STATES:
        return None
    if row.status in (ItemStatus.queued, ItemStatus.fetching):
        session.execute(
            update(Item)
            .where(Item.id == item_id)
            .values(
                status=ItemStatus.fetching,
                attempts=Item.attempts + 1,
                fetch_started_at=func.coalesce(Item.fetch_started_at, func.now()),
            )
        )
        status = ItemStatus.fetching
    else:
        status = row.status
    return FetchClaim(item_id, status, row.url, row.upload_key, list(row.models))


def fail_item(session: Session, item_id: uuid.UUID, code: str, detail: str) -> bool:
    """End an item as failed with its reason. False if it had already ended (a redelivery)."""
    job_id = session.scalar(
        update(Item)
        .where(Item.id == item_id, Item.status.not_in(TERMINAL_ITEM_STATES))
        .values(status=ItemStatus.failed, error_code=code, error_detail=detail[:2000], finished_at=func.now())
        .returning(Item.job_id)
    )
    if job_id is None:
        return False
    _count_off(session, {job_id: 1})
    return True


def attach_image(
    session: Session,
    item_id: uuid.UUID,
    image: StoredImage,
    models: Sequence[str],
    availability: Mapping[str, Availability],
) -> list[AnalysisClaim]:
    """Record the fetched image (deduplicated by sha256) and claim the model results still missing.

    Returns the analyses this item must publish: only the rows it created, so the same bytes
    submitted twice are analysed once per model version. Items whose every model already has a
    result complete here. Call ``upsert_image`` in a transaction of its own first.
    """
    image_id = _lock_image(session, image)
    expected = {m: availability[m].version for m in models if availability[m].available}
    skipped = {m: {"reason": availability[m].reason} for m in models if not availability[m].available}
    session.execute(
        update(Item)
        .where(Item.id == item_id)
        .values(
            status=ItemStatus.analysing,
            image_id=image_id,
            expected=expected,
            skipped=skipped,
            fetched_at=func.now(),
        )
    )
    for model, version in expected.items():
        session.execute(
            insert(ModelResult)
            .values(
                id=uuid7(),
                image_id=image_id,
                model_name=model,
                model_version=version,
                status=ResultStatus.pending,
                claimed_by_item=item_id,
            )
            .on_conflict_do_nothing(constraint="uq_model_result")
        )
    finalize_image(session, image_id)
    return claimed_pending(session, item_id)


def claimed_pending(session: Session, item_id: uuid.UUID) -> list[AnalysisClaim]:
    """The analyses this item claimed that have not finished: what a (re)delivered fetch publishes."""
    return _pending_claims(session, ModelResult.claimed_by_item == item_id)


def pending_analysis(session: Session, result_id: uuid.UUID) -> AnalysisClaim | None:
    return next(iter(_pending_claims(session, ModelResult.id == result_id)), None)


def _pending_claims(session: Session, condition: ColumnElement[bool]) -> list[AnalysisClaim]:
    rows = session.execute(
        select(
            ModelResult.id,
            ModelResult.image_id,
            Image.blob_key,
            ModelResult.model_name,
            ModelResult.model_version,
        )
        .join(Image, Image.id == ModelResult.image_id)
        .where(condition, ModelResult.status == ResultStatus.pending)
    )
    return [AnalysisClaim(*row) for row in rows]


def claim_analysis(session: Session, result_id: uuid.UUID) -> AnalysisClaim | None:
    """Start (or restart, after a lost worker) one model's analysis. None when already finished."""
    row = session.execute(
        update(ModelResult)
        .where(ModelResult.id == result_id, ModelResult.status == ResultStatus.pending)
        .values(attempts=ModelResult.attempts + 1, started_at=func.now())
        .returning(ModelResult.image_id, ModelResult.model_name, ModelResult.model_version)
    ).one_or_none()
    if row is None:
        return None
    blob_key = session.scalar(select(Image.blob_key).where(Image.id == row.image_id))
    assert blob_key is not None
    return AnalysisClaim(result_id, row.image_id, blob_key, row.model_name, row.model_version)


def complete_analysis(
    session: Session,
    result_id: uuid.UUID,
    *,
    output: dict[str, Any] | None,
    error: str | None = None,
    embedding: Sequence[float] | None = None,
    batch_size: int | None = None,
    inference_ms: float | None = None,
) -> bool:
    """Write one model's result (done, or failed with ``error``) and finish what it completes.

    Idempotent: only a pending row is written, so a redelivered task changes nothing.
    """
    image_id = session.scalar(select(ModelResult.image_id).where(ModelResult.id == result_id))
    if image_id is None:
        return False
    _lock_image_id(session, image_id)
    row = session.execute(
        update(ModelResult)
        .where(ModelResult.id == result_id, ModelResult.status == ResultStatus.pending)
        .values(
            status=ResultStatus.failed if error else ResultStatus.done,
            output=output,
            error=error,
            batch_size=batch_size,
            inference_ms=inference_ms,
            finished_at=func.now(),
        )
        .returning(ModelResult.image_id, ModelResult.model_name, ModelResult.model_version)
    ).one_or_none()
    if row is None:
        return False
    if embedding is not None and error is None:
        session.execute(
            insert(Embedding)
            .values(
                image_id=row.image_id,
                model_name=row.model_name,
                model_version=row.model_version,
                embedding=list(embedding),
            )
            .on_conflict_do_nothing()
        )
    finalize_image(session, row.image_id)
    return True


def finalize_image(session: Session, image_id: uuid.UUID) -> None:
    """Complete the items of an image whose expected results are all in.

    The caller holds the image's row lock (``_lock_image_id``), taken first in every transaction
    that changes an image's items or results: one lock order, no deadlocks, and the last finisher
    sees every other finisher's committed result.
    """
    image = session.scalars(select(Image).where(Image.id == image_id)).one()
    results = {
        (r.model_name, r.model_version): r
        for r in session.scalars(
            select(ModelResult)
            .where(ModelResult.image_id == image_id)
            .execution_options(populate_existing=True)
        )
    }
    waiting = session.scalars(
        select(Item).where(Item.image_id == image_id, Item.status == ItemStatus.analysing).with_for_update()
    ).all()
    finished: dict[uuid.UUID, int] = {}
    for item in waiting:
        mine = [results.get((m, v)) for m, v in item.expected.items()]
        if any(r is None or r.status == ResultStatus.pending for r in mine):
            continue
        failed = [r for r in mine if r is not None and r.status == ResultStatus.failed]
        item.status = ItemStatus.failed if failed else ItemStatus.done
        if failed:
            item.error_code = "analysis_failed"
            item.error_detail = "; ".join(f"{r.model_name} {r.model_version}: {r.error}" for r in failed)[
                :2000
            ]
        item.analysed_at = item.finished_at = func.now()
        finished[item.job_id] = finished.get(item.job_id, 0) + 1
    if not any(r.status == ResultStatus.pending for r in results.values()):
        _merge_record(session, image, results.values())
    session.flush()
    _count_off(session, finished)


def _merge_record(session: Session, image: Image, results: Iterable[ModelResult]) -> None:
    """One record per image: the newest finished version of each model, side by side."""
    newest: dict[str, ModelResult] = {}
    for result in results:
        if result.status != ResultStatus.done:
            continue
        held = newest.get(result.model_name)
        if held is None or (result.finished_at, result.model_version) > (
            held.finished_at,
            held.model_version,
        ):
            newest[result.model_name] = result
    record: dict[str, Any] = {
        "image": {
            "sha256": image.sha256,
            "width": image.width,
            "height": image.height,
            "format": image.format,
        },
        **{name: r.output for name, r in sorted(newest.items())},
    }
    versions = {name: r.model_version for name, r in newest.items()}
    session.execute(
        insert(ImageRecord)
        .values(image_id=image.id, record=record, model_versions=versions)
        .on_conflict_do_update(
            index_elements=[ImageRecord.image_id],
            set_={"record": record, "model_versions": versions, "updated_at": func.now()},
        )
    )


def _count_off(session: Session, finished: Mapping[uuid.UUID, int]) -> None:
    for job_id, count in finished.items():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                pending_items=Job.pending_items - count,
                finished_at=case(
                    (Job.pending_items - count <= 0, func.coalesce(Job.finished_at, func.now())),
                    else_=Job.finished_at,
                ),
            )
        )


def _lock_image_id(session: Session, image_id: uuid.UUID) -> None:
    session.execute(select(Image.id).where(Image.id == image_id).with_for_update())


def _lock_image(session: Session, image: StoredImage) -> uuid.UUID:
    image_id = session.scalar(select(Image.id).where(Image.sha256 == image.sha256).with_for_update())
    if image_id is None:
        raise LookupError(f"image {image.sha256} is not recorded; call upsert_image first")
    return image_id


def upsert_image(session: Session, image: StoredImage) -> uuid.UUID:
    """Record an image once per sha256 (its own short transaction, before any lock is taken)."""
    inserted = session.scalar(
        insert(Image)
        .values(
            id=uuid7(),
            sha256=image.sha256,
            blob_key=image.blob_key,
            format=image.format,
            width=image.width,
            height=image.height,
            size_bytes=image.size_bytes,
        )
        .on_conflict_do_nothing(index_elements=[Image.sha256])
        .returning(Image.id)
    )
    if inserted is not None:
        return inserted
    existing = session.scalar(select(Image.id).where(Image.sha256 == image.sha256))
    assert existing is not None
    return existing


@dataclass(frozen=True)
class StaleWork:
    jobs: list[uuid.UUID]  # never dispatched
    items: list[uuid.UUID]  # queued or fetching, untouched for too long
    results: list[uuid.UUID]  # analyses pending for too long


def stale_work(session: Session, older_than_s: float, limit: int = 10_000) -> StaleWork:
    """Work whose messages may have been lost (a wiped broker, a publish that never happened).

    Re-publishing is safe, since every task claims its row first and finished work is skipped; but
    a long backlog also looks stale, so pick ``older_than_s`` well above the expected queue wait.
    """
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s)
    jobs = session.scalars(
        select(Job.id).where(Job.dispatched_at.is_(None), Job.created_at < cutoff).limit(limit)
    )
    items = session.scalars(
        select(Item.id)
        .join(Job, Job.id == Item.job_id)
        .where(
            Job.dispatched_at.is_not(None),
            Item.status.in_((ItemStatus.queued, ItemStatus.fetching)),
            func.coalesce(Item.fetch_started_at, Job.dispatched_at) < cutoff,
        )
        .limit(limit)
    )
    results = session.scalars(
        select(ModelResult.id)
        .where(
            ModelResult.status == ResultStatus.pending,
            func.coalesce(ModelResult.started_at, ModelResult.queued_at) < cutoff,
        )
        .limit(limit)
    )
    return StaleWork(list(jobs), list(items), list(results))

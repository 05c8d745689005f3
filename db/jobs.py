"""Jobs, items and merged records as users see them: creating jobs, reading their state, listing images.

Plain functions over a session; the caller commits (and only then publishes, ``worker.broker``)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from common.blobstore import BlobStore
from common.schemas import (
    ImagePage,
    ImageView,
    ItemFailure,
    ItemIn,
    ItemRef,
    ItemStatus,
    ItemSummary,
    JobCreated,
    JobItemPage,
    JobView,
    ModelState,
)
from db.models import Image, ImageRecord, Item, Job, ModelResult, uuid7


@dataclass(frozen=True)
class Upload:
    """An uploaded file: its bytes, or the key it was already streamed to in the blob store."""

    filename: str
    data: bytes | None = None
    external_id: str | None = None
    key: str | None = None


def create_job(
    session: Session,
    *,
    items: Sequence[ItemIn] = (),
    uploads: Sequence[Upload] = (),
    models: Sequence[str],
    store: BlobStore | None = None,
    explain: bool = False,
) -> JobCreated:
    """Insert the job and its items (the caller commits, then publishes ``dispatch_job_task``)."""
    chosen = list(models)
    job_id = uuid7()
    rows: list[dict[str, Any]] = [
        {
            "id": uuid7(),
            "job_id": job_id,
            "position": i,
            "url": item.url,
            "external_id": item.external_id,
            "metadata_": item.metadata,
        }
        for i, item in enumerate(items)
    ]
    for upload in uploads:
        key = upload.key
        if key is None:
            if store is None or upload.data is None:
                raise ValueError("an upload needs its stored key, or its bytes and a blob store")
            key = upload_key()
            store.put(key, upload.data)
        rows.append(
            {
                "id": uuid7(),
                "job_id": job_id,
                "position": len(rows),
                "upload_key": key,
                "filename": upload.filename,
                "external_id": upload.external_id,
            }
        )
    session.execute(
        insert(Job).values(
            id=job_id,
            models=chosen,
            item_count=len(rows),
            pending_items=len(rows),
            options={"explain": explain},
        )
    )
    if rows:
        session.execute(
            insert(Item), [{"url": None, "upload_key": None, "filename": None, **r} for r in rows]
        )
    refs = [
        ItemRef(
            id=r["id"],
            position=r["position"],
            url=r.get("url"),
            filename=r.get("filename"),
            external_id=r.get("external_id"),
        )
        for r in rows
    ]
    return JobCreated(job_id=job_id, models=chosen, items=refs)


def upload_key() -> str:
    """A fresh blob key for an uploaded file (its own key: deleting it never touches another's)."""
    return f"uploads/{uuid7()}"


def referenced_upload_keys(session: Session, keys: Sequence[str]) -> set[str]:
    """Which of these upload blob keys committed items point at."""
    return set(session.scalars(select(Item.upload_key).where(Item.upload_key.in_(keys))))


def job_view(session: Session, job_id: uuid.UUID, items_limit: int = 0) -> JobView | None:
    """The job and its counts per state; its first ``items_limit`` items (page with ``job_items``)."""
    # done = finished - failed, the finished count from the job's own counter (the pipeline counts each
    # item off in the transaction that ends it): the (job_id, status, position) index is read only for
    # items that are not done, most of a large job once it has run. One statement, one snapshot.
    not_done = (ItemStatus.queued, ItemStatus.fetching, ItemStatus.analysing, ItemStatus.failed)
    tallies = (
        select(*(func.count().filter(Item.status == s).label(s.value) for s in not_done))
        .where(Item.job_id == Job.id, Item.status.in_(not_done))
        .lateral()
    )
    row = session.execute(select(Job, tallies).where(Job.id == job_id)).first()
    if row is None:
        return None
    job = row[0]
    counts = {s: int(getattr(row, s.value)) for s in not_done}
    counts[ItemStatus.done] = job.item_count - job.pending_items - counts[ItemStatus.failed]
    counts = {s: counts[s] for s in ItemStatus}
    states = (
        session.execute(
            select(Item.id, Item.position, Item.status, Item.error_code)
            .where(Item.job_id == job_id)
            .order_by(Item.position)
            .limit(items_limit)
        ).all()
        if items_limit
        else []
    )
    return JobView(
        id=job.id,
        models=job.models,
        item_count=job.item_count,
        counts=counts,
        created_at=job.created_at,
        dispatched_at=job.dispatched_at,
        finished_at=job.finished_at,
        items=[ItemSummary(id=i, position=p, status=s, error_code=e) for i, p, s, e in states],
    )


def job_items(
    session: Session, job_id: uuid.UUID, *, limit: int, after: int = -1, status: ItemStatus | None = None
) -> JobItemPage | None:
    """A page of the job's items after position ``after``: keyset on the (job_id[, status], position)
    indexes, so the millionth page costs what the first does."""
    if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
        return None
    query = (
        select(Item.id, Item.position, Item.status, Item.error_code)
        .where(Item.job_id == job_id, Item.position > after)
        .order_by(Item.position)
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(Item.status == status)
    rows = session.execute(query).all()
    page = [ItemSummary(id=i, position=p, status=s, error_code=e) for i, p, s, e in rows[:limit]]
    return JobItemPage(items=page, next_after=page[-1].position if len(rows) > limit else None)


def finished_at(session: Session, job_id: uuid.UUID) -> datetime | None:
    """When the job's last item ended; None while it runs (one indexed read, cheap to poll)."""
    finished: datetime | None = session.scalar(select(Job.finished_at).where(Job.id == job_id))
    return finished


def mean_inference_ms(session: Session, job_id: uuid.UUID) -> float | None:
    """The mean time of the analyses the job's items claimed (a model's predict share per image)."""
    mean = session.scalar(
        select(func.avg(ModelResult.inference_ms))
        .join(Item, Item.id == ModelResult.claimed_by_item)
        .where(Item.job_id == job_id)
    )
    return None if mean is None else float(mean)


def image_view(session: Session, item_id: uuid.UUID, order: Sequence[str] = ()) -> ImageView | None:
    """One item's view; ``order`` lists model names in the order their states are shown."""
    item = session.get(Item, item_id)
    return None if item is None else _views(session, [item], order)[0]


def image_page(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    external_id: str | None = None,
    status: str | None = None,
    job_id: uuid.UUID | None = None,
    sha256: str | None = None,
    order: Sequence[str] = (),
) -> ImagePage:
    """Keyset pagination on the time-ordered item id: stable under inserts, no OFFSET scans."""
    query = select(Item).order_by(Item.id).limit(limit + 1)
    if cursor is not None:
        query = query.where(Item.id > decode_cursor(cursor))
    if external_id is not None:
        query = query.where(Item.external_id == external_id)
    if status is not None:
        query = query.where(Item.status == ItemStatus(status))
    if job_id is not None:
        query = query.where(Item.job_id == job_id)
    if sha256 is not None:
        query = query.join(Image, Image.id == Item.image_id).where(Image.sha256 == sha256.lower())
    items = list(session.scalars(query))
    more = len(items) > limit
    items = items[:limit]
    return ImagePage(
        items=_views(session, items, order), next_cursor=encode_cursor(items[-1].id) if more else None
    )


def encode_cursor(item_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(item_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def _views(session: Session, items: Sequence[Item], order: Sequence[str]) -> list[ImageView]:
    """Views of many items in four queries, whatever their number."""
    image_ids = {i.image_id for i in items if i.image_id is not None}
    if not image_ids:
        return [_view(item, {}, {}, {}, order) for item in items]
    shas = dict(session.execute(select(Image.id, Image.sha256).where(Image.id.in_(image_ids))).all())
    records: dict[uuid.UUID, dict[str, Any]] = dict(
        session.execute(
            select(ImageRecord.image_id, ImageRecord.record).where(ImageRecord.image_id.in_(image_ids))
        ).all()
    )
    results = {
        (r.image_id, r.model_name, r.model_version): r
        for r in session.scalars(select(ModelResult).where(ModelResult.image_id.in_(image_ids)))
    }
    return [_view(item, shas, records, results, order) for item in items]


def _view(
    item: Item,
    shas: dict[uuid.UUID, str],
    records: dict[uuid.UUID, dict[str, Any]],
    results: dict[tuple[uuid.UUID, str, str], ModelResult],
    order: Sequence[str],
) -> ImageView:
    models: dict[str, ModelState] = {
        name: ModelState(status="skipped", reason=info.get("reason")) for name, info in item.skipped.items()
    }
    for name, version in item.expected.items():
        r = results.get((item.image_id, name, version)) if item.image_id else None
        models[name] = ModelState(
            status=r.status.value if r else "pending",
            version=version,
            reason=r.error if r else None,
            inference_ms=r.inference_ms if r else None,
        )
    rank = {name: i for i, name in enumerate(order)}
    models = dict(sorted(models.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    return ImageView(
        id=item.id,
        job_id=item.job_id,
        position=item.position,
        url=item.url,
        filename=item.filename,
        external_id=item.external_id,
        metadata=item.metadata_,
        status=item.status,
        error=ItemFailure(code=item.error_code, detail=item.error_detail) if item.error_code else None,
        sha256=shas.get(item.image_id) if item.image_id else None,
        models=models,
        record=records.get(item.image_id) if item.image_id else None,
        timestamps={
            "created_at": item.created_at,
            "fetch_started_at": item.fetch_started_at,
            "fetched_at": item.fetched_at,
            "analysed_at": item.analysed_at,
            "finished_at": item.finished_at,
        },
    )

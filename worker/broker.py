"""Everything Atelier publishes to the broker, by task name (no task code imported: the gateway uses
this too). Publish only after the transaction that created the rows a task reads has committed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common.blobstore import BlobStore
from common.schemas import ItemIn, JobCreated
from common.settings import get_settings
from db import jobs, pipeline
from services.registry import DEFAULT_MODELS, check_models, get_spec
from worker.celery_app import ANALYSE_TASK, CROPS_TASK, DISPATCH_JOB_TASK, FETCH_TASK, app

log = logging.getLogger(__name__)

# what publishing raises while the broker is away
BROKER_ERRORS = (KombuOperationalError, RedisConnectionError, RedisTimeoutError)


class Analysis(Protocol):
    """What an analysis message names: the result row and the stored image's blob key."""

    @property
    def result_id(self) -> uuid.UUID: ...
    @property
    def blob_key(self) -> str: ...
    @property
    def model_name(self) -> str: ...


def submit_job(
    session: Session,
    *,
    items: Sequence[ItemIn] = (),
    uploads: Sequence[jobs.Upload] = (),
    models: list[str] | None = None,
    store: BlobStore | None = None,
    explain: bool = False,
) -> JobCreated:
    """Create a job's rows, commit, and only then publish it: a worker never sees an item that is not
    there. Unknown model names raise ``ValueError`` before anything is written.

    The jobs table is the outbox: a job whose dispatch could not be published (the broker is away) is
    accepted all the same, and the orchestrator's reconciler publishes it once the broker is back."""
    chosen = check_models(models) or list(DEFAULT_MODELS)
    created = jobs.create_job(
        session, items=items, uploads=uploads, models=chosen, store=store, explain=explain
    )
    session.commit()
    try:
        dispatch_job(created.job_id)
    except BROKER_ERRORS as exc:
        log.warning("job %s committed, dispatched once the broker is back: %r", created.job_id, exc)
        return created
    try:
        pipeline.mark_published(session, [created.job_id])
        session.commit()
    except SQLAlchemyError as exc:  # published all the same; at worst the reconciler publishes it again
        session.rollback()
        log.warning("job %s published, not marked so: %r", created.job_id, exc)
    return created


def dispatch_job(job_id: uuid.UUID) -> None:
    """Publish a job to the orchestrator, which expands it into one fetch per item."""
    app.send_task(DISPATCH_JOB_TASK, args=[str(job_id)], queue=get_settings().queues.orchestrator)


def fetch_items(item_ids: Iterable[uuid.UUID], countdown: float | None = None) -> None:
    queue = get_settings().queues.orchestrator
    with app.producer_or_acquire() as producer:
        for item_id in item_ids:
            app.send_task(
                FETCH_TASK, args=[str(item_id)], queue=queue, countdown=countdown, producer=producer
            )


def analyse(claims: Iterable[Analysis], countdown: float | None = None) -> None:
    """One message per analysis, on its model service's own queue."""
    with app.producer_or_acquire() as producer:
        for claim in claims:
            app.send_task(
                ANALYSE_TASK,
                args=[str(claim.result_id), claim.blob_key],
                queue=service_queue(claim.model_name),
                countdown=countdown,
                producer=producer,
            )


def analyse_again(messages: Iterable[tuple[str, str]], queue: str) -> None:
    """Copies of analysis messages (result id, blob key), back on the queue they came from."""
    with app.producer_or_acquire() as producer:
        for result_id, blob_key in messages:
            app.send_task(ANALYSE_TASK, args=[result_id, blob_key], queue=queue, producer=producer)


def classify_crops(result_id: uuid.UUID, blob_key: str, service: str, countdown: float | None = None) -> None:
    """The garment crops of a staged result, to the workers of the service that classifies them."""
    app.send_task(
        CROPS_TASK, args=[str(result_id), blob_key], queue=service_queue(service), countdown=countdown
    )


def service_queue(service: str) -> str:
    return get_spec(service).queue(get_settings().queues)

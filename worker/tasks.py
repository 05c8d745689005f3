"""The Celery tasks: dispatch → fetch → analyse (one queue per model service) → finalize.

Tasks carry ids only. Each one claims its row, does its work outside any transaction, then writes
the outcome in one transaction; all state lives in Postgres (``db.pipeline``); everything published
goes through ``worker.broker``. Every failure takes one path: ``retry_or_give_up``, whose budget is the
row's delivery count (redeliveries after a lost worker count too), never Celery's own retry counter.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import bootsteps, signals
from celery_batches import Batches, SimpleRequest
from PIL import Image

from common.blobstore import blob_store, image_key, sha256_hex
from common.errors import ItemError
from common.fetch import fetch_url
from common.images import decode_image, sniff_format
from common.logs import log_context
from common.schemas import ItemStatus
from common.settings import get_settings
from db import pipeline, versions
from db.session import reset_engine, transaction
from services.base import Model, Prediction
from services.registry import get_spec
from worker import broker, monitoring
from worker.celery_app import ANALYSE_TASK, DISPATCH_JOB_TASK, FETCH_TASK, app
from worker.crops import crops_service, stage_for_crops
from worker.serving import (
    backoff_s,
    is_infrastructure_error,
    requeue_on_infrastructure_error,
    retry_or_give_up,
    served_model,
    service_availability,
    store_files,
    stored_image,
    until_infrastructure_answers,
)
from worker.settings import get_worker_settings

log = logging.getLogger(__name__)


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    reset_engine()


@app.task(name=DISPATCH_JOB_TASK)
def dispatch_job_task(job_id: str) -> int:
    """Expand a job into one fetch task per item, off the gateway's request path."""
    with requeue_on_infrastructure_error(f"dispatch of job {job_id}"):
        return _dispatch(job_id)


def _dispatch(job_id: str) -> int:
    """Claim the job (a second copy of its message then does nothing), publish, or give the claim back."""
    job = uuid.UUID(job_id)
    with transaction() as session:
        if not pipeline.claim_dispatch(session, job):
            return 0
        item_ids = pipeline.queued_item_ids(session, job)
    try:
        broker.fetch_items(item_ids)
    except Exception:
        with transaction() as session:
            pipeline.unclaim_dispatch(session, job)
        raise
    log.info("dispatched %d items", len(item_ids))
    return len(item_ids)


@app.task(name=FETCH_TASK)
def fetch_task(item_id: str) -> None:
    with requeue_on_infrastructure_error(f"fetch of item {item_id}"):
        _fetch(uuid.UUID(item_id))


def _fetch(item: uuid.UUID) -> None:
    with transaction() as session:
        claim = pipeline.claim_fetch(session, item)
    if claim is None:
        return
    if claim.status == ItemStatus.analysing:
        # redelivered after the image was attached: publish again what this item claimed
        with transaction() as session:
            broker.analyse(pipeline.claimed_pending(session, item))
        return
    try:
        stored = _fetch_and_store(claim)
        availability = service_availability(*claim.models)
        expected = {m: a.version for m, a in availability.items() if a.available and a.version is not None}
        skipped = {m: a.reason for m, a in availability.items() if not a.available}
        explain = [m for m in claim.models if claim.explain and get_spec(m).explains]
        with transaction() as session:
            claims = pipeline.attach_image(session, item, stored, expected, skipped, explain)
        broker.analyse(claims)
        log.info(
            "image %s stored (%dx%d %s), %d analyses",
            stored.sha256[:12],
            stored.width,
            stored.height,
            stored.format,
            len(claims),
        )
    except Exception as exc:  # whatever went wrong, the item ends recorded (transient ones after retries)
        if is_infrastructure_error(exc):
            raise  # not the item's fault: its message goes back to the queue
        if isinstance(exc, ItemError) and not exc.transient:
            log.warning("item failed: %s: %s", exc.code, exc.detail)
            _fail_item(item, exc)
            return
        retry_or_give_up(
            claim.attempts,
            f"fetch of item {item}",
            exc,
            lambda countdown: broker.fetch_items([item], countdown=countdown),
            lambda error: _fail_item(item, error),
        )


def _fail_item(item: uuid.UUID, error: Exception) -> None:
    """End an item failed: a refused input with its own code, anything else as ``internal_error``."""
    code, detail = (
        (error.code, error.detail) if isinstance(error, ItemError) else ("internal_error", repr(error))
    )
    with transaction() as session:
        pipeline.fail_item(session, item, code, detail)


def _fetch_and_store(claim: pipeline.FetchClaim) -> pipeline.StoredImage:
    settings = get_settings()
    store = blob_store(settings.blob_dir)
    if claim.url is not None:
        data = fetch_url(claim.url, settings.fetch).data
    elif claim.upload_key is not None:
        if not store.exists(claim.upload_key):
            raise ItemError("upload_missing", f"uploaded file {claim.upload_key!r} is not in the blob store")
        data = store.get(claim.upload_key)
    else:
        raise ItemError("invalid_item", "item has neither a URL nor an upload")
    image = decode_image(data, settings.fetch.max_pixels)
    sha = sha256_hex(data)
    key = image_key(sha)
    store.put(key, data)
    return pipeline.StoredImage(sha, key, sniff_format(data), image.width, image.height, len(data))


@app.task(
    name=ANALYSE_TASK,
    base=Batches,
    flush_every=get_worker_settings().max_batch,
    flush_interval=get_worker_settings().max_wait_ms / 1000.0,
)
def analyse_task(requests: list[SimpleRequest]) -> None:
    """Analyse a micro-batch: claim each result, one ``predict`` for all, then write each result.

    Messages are acknowledged after the batch returns (``acks_late``), so a worker killed mid-batch
    leaves them to be redelivered; each result is written in its own transaction (one lock order).
    """
    model = served_model()
    queue = broker.service_queue(model.name)
    messages = [(str(request.args[0]), str(request.args[1])) for request in requests]
    with requeue_on_infrastructure_error(
        f"{len(requests)} analyses",
        # a batch's messages are acknowledged together once the task returns, whatever it raised: their
        # copies must be with the broker first, however long that takes
        requeue=lambda: until_infrastructure_answers(
            lambda: broker.analyse_again(messages, queue), "requeueing a batch"
        ),
    ):
        _analyse(model, requests)


class _RestartBatchTimer(bootsteps.StartStopStep):  # type: ignore[misc]
    """celery_batches starts its flush timer with the first message only, and a consumer restart (the
    broker came back) clears the worker's timers: a partial batch would then wait, unflushed, until
    ``MAX_BATCH`` messages arrive. Each consumer start arms the timer again."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        task: Any = analyse_task
        task._tref = None
        if not task._buffer.empty() or not task._pending.empty():
            task._tref = c.timer.call_repeatedly(task.flush_interval, task._do_flush)


app.steps["consumer"].add(_RestartBatchTimer)


def _analyse(model: Model, requests: list[SimpleRequest]) -> None:
    started: list[pipeline.AnalysisClaim] = []
    elsewhere: list[pipeline.AnalysisClaim] = []
    with transaction() as session:
        for request in requests:
            result_id, blob_key = uuid.UUID(request.args[0]), request.args[1]
            claim = pipeline.claim_analysis(session, result_id, blob_key, model.name, model.version)
            if claim is not None:
                started.append(claim)
            elif (other := pipeline.pending_analysis(session, result_id)) is not None:
                elsewhere.append(other)  # another model's, or another version's
    for other in elsewhere:  # after the claims committed: its own transaction, its own lock order
        _hand_over(other, model)
    claims = list({c.result_id: c for c in started}.values())  # finished ones are skipped
    if not claims:
        return
    for claim, outcome in zip(claims, _predict_isolating_failures(model, claims), strict=True):
        with log_context(result_id=claim.result_id, image_id=claim.image_id, service=claim.model_name):
            _write_analysis(claim, outcome, len(claims))


def _hand_over(claim: pipeline.AnalysisClaim, model: Model) -> None:
    """An analysis this worker does not serve goes where it is served, so that work queued before a
    rollout finishes after it instead of failing:

    * another model's (two services sharing a queue): to that model's own queue;
    * the version new work goes to, while its workers are alive: back to the queue, for them;
    * an older version whose workers are alive (a rollout in progress): back to the queue with
      backoff, ``MAX_RETRIES`` times at most, counted on the row;
    * a version nobody serves any more, or whose workers do not take it: moved to this worker's.
    """
    settings = get_worker_settings()
    if claim.model_name != model.name:
        broker.analyse([claim], countdown=settings.retry_backoff_s)
        return
    with transaction() as session:
        live = versions.is_live(session, model.name, claim.model_version, settings.heartbeat_s * 3)
        current = live and versions.current_version(session, model.name) == claim.model_version
        counted = moved = None
        if live and not current and claim.attempts < settings.max_retries:
            counted = pipeline.hand_back(session, claim)
        elif not current:
            moved = pipeline.retarget_analysis(session, claim, model.version)
    if current:
        broker.analyse([claim], countdown=settings.retry_backoff_s)
    elif counted is not None:
        broker.analyse([claim], countdown=backoff_s(counted - 1))
    elif moved is not None:
        log.info(
            "analysis %s moved from version %s to %s", claim.result_id, claim.model_version, model.version
        )
        broker.analyse([moved])


def _write_analysis(
    claim: pipeline.AnalysisClaim, outcome: tuple[Prediction, float] | Exception, batch_size: int
) -> None:
    """Store one analysis's files and write its result (or retry it, or record its failure)."""
    if isinstance(outcome, Exception):
        _retry_or_fail_analysis(claim, outcome)
        return
    prediction, ms = outcome
    output = prediction.output
    try:
        if prediction.files:
            output = {**output, "files": store_files(claim, "results", prediction.files)}
        if claim.explain:
            explanations = served_model().explain(stored_image(claim), prediction)
            output = {**output, "explanations": store_files(claim, "explanations", explanations)}
    except Exception as exc:  # a model's explain() or the blob store: retried, then the result fails
        _retry_or_fail_analysis(claim, exc)
        return
    crops_to = crops_service(claim.model_name, output)
    if crops_to is not None:
        stage_for_crops(claim, output, crops_to, batch_size=batch_size, inference_ms=ms)
        return
    with transaction() as session:
        pipeline.complete_analysis(
            session,
            claim,
            output=output,
            embedding=prediction.embedding,
            batch_size=batch_size,
            inference_ms=ms,
        )


def _predict_isolating_failures(
    model: Model, claims: list[pipeline.AnalysisClaim]
) -> list[tuple[Prediction, float] | Exception]:
    """One batched forward pass; when it fails, each image alone, so one bad input fails only itself.

    The milliseconds are each image's share of the forward pass that produced its prediction.
    """
    settings = get_settings()
    store = blob_store(settings.blob_dir)
    images: list[Image.Image | Exception] = []
    for claim in claims:
        try:
            images.append(decode_image(store.get(claim.blob_key), settings.fetch.max_pixels))
        except Exception as exc:  # kept as this image's outcome: one bad input fails only itself
            images.append(exc)
    ready = [image for image in images if not isinstance(image, Exception)]
    try:
        started = time.perf_counter()
        with monitoring.predict_call(model.name, len(ready)):
            predictions = iter(model.predict(ready)) if ready else iter(())
        share = (time.perf_counter() - started) * 1000.0 / max(len(ready), 1)
        return [image if isinstance(image, Exception) else (next(predictions), share) for image in images]
    except Exception:  # whatever a framework raises: find the image that caused it, one by one
        log.warning("batched predict of %d images failed; predicting one by one", len(ready), exc_info=True)
    return [image if isinstance(image, Exception) else _predict_one(model, image) for image in images]


def _predict_one(model: Model, image: Image.Image) -> tuple[Prediction, float] | Exception:
    try:
        started = time.perf_counter()
        with monitoring.predict_call(model.name, 1):
            [prediction] = model.predict([image])
        return prediction, (time.perf_counter() - started) * 1000.0
    except Exception as exc:  # this image's outcome, retried and recorded by _write_analysis
        return exc


def _retry_or_fail_analysis(claim: pipeline.AnalysisClaim, exc: Exception) -> None:
    """A failed analysis goes back to its queue with backoff until its deliveries run out."""

    def give_up(error: Exception) -> None:
        with transaction() as session:
            pipeline.complete_analysis(session, claim, output=None, error=repr(error))

    retry_or_give_up(
        claim.attempts,
        f"analysis {claim.result_id} ({claim.model_name})",
        exc,
        lambda countdown: broker.analyse([claim], countdown=countdown),
        give_up,
    )

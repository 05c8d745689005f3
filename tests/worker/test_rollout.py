"""A new model version rolls out without failing in-flight work: analyses queued for a version that no
worker serves any more are moved to the served one; those of a version still served go back to it."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
import redis
from sqlalchemy import select

from common.blobstore import blob_store, image_key, sha256_hex
from common.images import decode_image, sniff_format
from common.schemas import ItemStatus
from common.settings import get_settings
from db import pipeline, versions
from db.models import Item, ModelResult
from db.session import transaction
from services.properties.config import PROPERTIES_VERSION
from synthetic.imageserver import garment_photo, jpeg_bytes
from tests.factories import make_job
from tests.support.infra import Infra
from worker.settings import get_worker_settings

pytestmark = pytest.mark.e2e

OLD = "0.9.0"  # a version of the properties analyser that no worker runs any more


def _waiting_on_old_version(seed: tuple[int, int, int]) -> tuple[uuid.UUID, pipeline.AnalysisClaim]:
    """An item fetched before the rollout: its analysis is queued for ``OLD``."""
    data = jpeg_bytes(garment_photo(seed))
    sha = sha256_hex(data)
    blob_store(get_settings().blob_dir).put(image_key(sha), data)
    image = decode_image(data, get_settings().fetch.max_pixels)
    stored = pipeline.StoredImage(
        sha, image_key(sha), sniff_format(data), image.width, image.height, len(data)
    )
    with transaction() as session:
        [item] = make_job(session, 1, models=["properties"])
        assert pipeline.claim_fetch(session, item) is not None
        [claim] = pipeline.attach_image(session, item, stored, {"properties": OLD}, {})
    return item, claim


def test_work_queued_for_a_retired_version_finishes_on_the_served_one(infra: Infra, clean_db: Infra) -> None:
    from atelier.stack import Stack, WorkerPlan
    from worker import broker

    # given: an analysis queued for a version nobody serves any more
    item, claim = _waiting_on_old_version((200, 20, 30))

    # when: the current version's worker receives it
    with Stack(infra.home / "stack-rollout", workers=(WorkerPlan("properties"),)):
        broker.analyse([claim])
        deadline = time.monotonic() + 60
        while True:
            with transaction() as session:
                row = session.get_one(Item, item)
            if row.status in (ItemStatus.done, ItemStatus.failed) or time.monotonic() > deadline:
                break
            time.sleep(0.1)

    # then: it was analysed by the served version, and the item is done, waiting on that version
    assert (row.status, row.expected) == (ItemStatus.done, {"properties": PROPERTIES_VERSION})
    with transaction() as session:
        results = session.execute(select(ModelResult.model_version, ModelResult.status)).all()
    assert [(v, s.value) for v, s in results] == [(PROPERTIES_VERSION, "done")]


def _report(version: str, *, started: bool = True) -> None:
    """A worker of ``version`` reports, in its own transaction (its own clock reading)."""
    with transaction() as session:
        versions.report_served(session, "properties", version, started=started)


def _queued(queue: str) -> int:
    return int(redis.Redis.from_url(get_settings().redis_url).llen(queue))


def test_work_for_a_version_still_served_goes_back_to_its_queue(infra: Infra, clean_db: Infra) -> None:
    from services.registry import get_spec
    from worker.tasks import _hand_over

    # given: a rollout in progress: the current version started, the old one's workers still beat
    _, claim = _waiting_on_old_version((20, 30, 90))
    _report(OLD)
    _report(PROPERTIES_VERSION)
    _report(OLD, started=False)
    queue = get_settings().queues.properties
    redis.Redis.from_url(get_settings().redis_url).delete(queue)
    model = get_spec("properties").build(get_settings().model_repository)
    budget = get_worker_settings().max_retries

    # when: a worker of the current version receives it, again and again
    for _ in range(budget):
        _hand_over(claim, model)
        with transaction() as session:
            row = session.get_one(ModelResult, claim.result_id)
        claim = replace(claim, attempts=row.attempts)

    # then: each time it went back to the queue for the old version's workers, counted
    assert _queued(queue) == budget
    assert (row.model_version, row.status.value, row.attempts) == (OLD, "pending", budget)

    # and once its budget is spent, it is moved to the version that takes it
    _hand_over(claim, model)
    with transaction() as session:
        row = session.get_one(ModelResult, claim.result_id)
    assert (row.model_version, row.status.value, row.attempts) == (PROPERTIES_VERSION, "pending", 0)
    assert _queued(queue) == budget + 1
    redis.Redis.from_url(get_settings().redis_url).delete(queue)


def test_work_for_the_current_version_waits_for_its_workers(infra: Infra, clean_db: Infra) -> None:
    from services.registry import get_spec
    from worker.tasks import _hand_over

    # given: an analysis queued for the version started last (the current one, its workers alive),
    # received by a worker of yet another version
    _, claim = _waiting_on_old_version((30, 140, 60))
    _report(PROPERTIES_VERSION)
    _report(OLD)
    queue = get_settings().queues.properties
    redis.Redis.from_url(get_settings().redis_url).delete(queue)
    old_worker = get_spec("properties").build(get_settings().model_repository)
    old_worker.version = "0.8.0"  # it serves neither: the queued version is current and alive

    # when
    _hand_over(claim, old_worker)

    # then: back to the queue, uncounted, for the current version's workers
    assert _queued(queue) == 1
    with transaction() as session:
        row = session.get_one(ModelResult, claim.result_id)
    assert (row.model_version, row.attempts) == (OLD, 0)
    redis.Redis.from_url(get_settings().redis_url).delete(queue)

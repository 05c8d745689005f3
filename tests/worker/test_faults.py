"""Faults with real processes, on jobs of 50 images: Postgres cut off for 15 s at dispatch, mid-fetch
and mid-analysis; Valkey SIGKILLed and restarted; the broker down at submit. Each job ends with every
item terminal and one result per (image, model, version), with no operator command, under the
production retry counts, backoff caps and visibility timeouts (the reconciler looks every 2 s)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from synthetic.imageserver import Response
from tests.support.faults import Cluster, cluster, counts, wait_until
from tests.support.infra import Infra

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)  # how long each took: pytest -o log_cli=true shows it

IMAGES = 50
OUTAGE_S = 15.0


def _image(seed: int, size: int) -> bytes:
    """Distinct bytes per seed (no deduplication between them), smooth enough to encode small."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(buffer, "PNG")
    return buffer.getvalue()


def _slow(body: bytes, delay_s: float) -> Callable[[], Response]:
    def respond() -> Response:
        time.sleep(delay_s)
        return 200, {"Content-Type": "image/png"}, body

    return respond


@pytest.fixture
def running(infra: Infra, clean_db: Infra, tmp_path: Any) -> Iterator[Cluster]:
    with cluster(infra, tmp_path) as started:
        yield started


def _submit(running: Cluster, prefix: str, *, fetch_delay_s: float = 0.0, size: int = 256) -> str:
    urls = []
    for n in range(IMAGES):
        path = f"/{prefix}-{n}.png"
        running.infra.images.routes[path] = _slow(_image(hash((prefix, n)) % 2**32, size), fetch_delay_s)
        urls.append(running.infra.images.url(path))
    response = httpx.post(
        f"{running.url}/v1/jobs",
        json={"items": [{"url": url} for url in urls], "models": ["properties"]},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _finished_after(job_id: str, since: float, timeout: float = 300.0) -> float:
    """Seconds from ``since`` until the job finished; asserts every item ended and no result twice."""
    import uuid

    from db.models import Item, Job, ModelResult
    from db.session import session_factory

    def finished() -> bool:
        with session_factory()() as session:
            return session.get(Job, uuid.UUID(job_id), populate_existing=True).finished_at is not None  # type: ignore[union-attr]

    wait_until(finished, timeout, "job finished")
    took = time.monotonic() - since
    with session_factory()() as session:
        statuses = dict(
            session.execute(
                select(Item.status, func.count())
                .where(Item.job_id == uuid.UUID(job_id))
                .group_by(Item.status)
            ).all()
        )
        per_image = session.execute(
            select(ModelResult.image_id, ModelResult.model_name, ModelResult.model_version, func.count())
            .group_by(ModelResult.image_id, ModelResult.model_name, ModelResult.model_version)
            .having(func.count() > 1)
        ).all()
        results = session.scalar(select(func.count()).select_from(ModelResult))
    assert {s.value: n for s, n in statuses.items()} == {"done": IMAGES}
    assert per_image == []
    assert results == IMAGES
    return took


def _results_done() -> int:
    from db.models import ModelResult, ResultStatus
    from db.session import session_factory

    with session_factory()() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(ModelResult).where(ModelResult.status == ResultStatus.done)
            )
            or 0
        )


@pytest.mark.parametrize("phase", ["dispatch", "fetch", "analysis"])
def test_postgres_cut_off_for_15_s(running: Cluster, phase: str) -> None:
    # given: a job of 50 images, and the workers' database cut off at the phase under test
    if phase == "dispatch":
        running.proxy.cut()
        job_id = _submit(running, phase)  # the gateway reaches Postgres; the orchestrator does not
    elif phase == "fetch":
        job_id = _submit(running, phase, fetch_delay_s=0.3)
        wait_until(lambda: counts().get("queued", 0) + counts().get("fetching", 0) <= 40, 60, "fetching")
        running.proxy.cut()
    else:
        job_id = _submit(running, phase, size=1600)
        wait_until(lambda: _results_done() >= 3, 60, "analysing")
        running.proxy.cut()
    before = counts()

    # when: it comes back after 15 s
    time.sleep(OUTAGE_S)
    running.proxy.restore()
    restored = time.monotonic()

    # then: every item ends, each analysed once
    took = _finished_after(job_id, restored)
    log.warning(f"postgres cut off at {phase} ({before}): finished {took:.1f} s after it came back")


def test_valkey_sigkilled_and_restarted(running: Cluster) -> None:
    # given: a job in flight
    job_id = _submit(running, "valkey", fetch_delay_s=0.2)
    wait_until(lambda: counts().get("done", 0) >= 5, 60, "some done")
    before = counts()

    # when: the broker is killed without warning and restarted on its data
    running.kill_valkey()
    time.sleep(2)
    running.start_valkey()
    restarted = time.monotonic()

    # then
    took = _finished_after(job_id, restarted)
    log.warning(f"valkey SIGKILLed ({before}): finished {took:.1f} s after its restart")


def test_broker_down_at_submit(running: Cluster) -> None:
    # given: no broker
    running.kill_valkey()

    # when: a job is submitted, then the broker comes back
    job_id = _submit(running, "submit")  # accepted: the jobs table is the outbox
    time.sleep(3)
    running.start_valkey()
    restarted = time.monotonic()

    # then: it is dispatched without anyone asking, once
    took = _finished_after(job_id, restarted)
    log.warning(f"broker down at submit: finished {took:.1f} s after it came back")

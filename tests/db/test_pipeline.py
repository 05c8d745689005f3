"""The Postgres state machine on its own: dedup, idempotent writes, and the last finisher under races."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.schemas import ItemStatus
from db import pipeline
from db.models import Image, ImageRecord, Item, Job, ModelResult
from db.session import transaction
from db.versions import Availability
from tests.factories import make_job, stored_image
from tests.support.infra import Infra

BOTH = {"m1": Availability(True, "1"), "m2": Availability(True, "7")}


def _attach(
    item_id: uuid.UUID, seed: str, availability: dict[str, Availability] = BOTH
) -> list[pipeline.AnalysisClaim]:
    image = stored_image(seed)
    with transaction() as session:
        assert pipeline.claim_fetch(session, item_id) is not None
        return _attach_with(session, item_id, image, availability)


def _attach_with(
    session: Session,
    item_id: uuid.UUID,
    image: pipeline.StoredImage,
    availability: Mapping[str, Availability],
    explain: list[str] | None = None,
) -> list[pipeline.AnalysisClaim]:
    expected = {m: a.version for m, a in availability.items() if a.available and a.version}
    skipped = {m: a.reason for m, a in availability.items() if not a.available}
    return pipeline.attach_image(session, item_id, image, expected, skipped, explain or [])


def _complete(claim: pipeline.AnalysisClaim, error: str | None = None) -> bool:
    with transaction() as session:
        pipeline.claim_analysis(session, claim.result_id, claim.blob_key)  # None on a redelivery
        return pipeline.complete_analysis(
            session, claim, output=None if error else {"model": claim.model_name}, error=error
        )


def _items(ids: list[uuid.UUID]) -> list[Item]:
    with transaction() as session:
        return [session.get_one(Item, i) for i in ids]


def test_same_image_twice_is_claimed_once_and_completes_both_items(clean_db: Infra) -> None:
    with transaction() as session:
        first, second = make_job(session, 2, models=["m1", "m2"])

    claims = _attach(first, "same-bytes")
    assert _attach(second, "same-bytes") == []  # nothing new to analyse
    assert sorted(c.model_name for c in claims) == ["m1", "m2"]

    for claim in claims:
        assert _complete(claim)

    assert [i.status for i in _items([first, second])] == [ItemStatus.done, ItemStatus.done]
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1
        assert session.scalar(select(func.count()).select_from(ModelResult)) == 2
        record = session.scalars(select(ImageRecord)).one()
        assert record.record["m1"] == {"model": "m1"} and record.model_versions == {"m1": "1", "m2": "7"}
        job = session.scalars(select(Job)).one()
        assert job.pending_items == 0 and job.finished_at is not None


def test_a_redelivered_result_changes_nothing(clean_db: Infra) -> None:
    with transaction() as session:
        [item] = make_job(session, 1, models=["m1"])
    [claim] = _attach(item, "redelivered", {"m1": BOTH["m1"]})
    assert _complete(claim)
    with transaction() as session:
        before = session.get_one(ModelResult, claim.result_id).finished_at

    assert not _complete(claim)  # the second delivery finds the row done
    with transaction() as session:
        assert pipeline.claim_analysis(session, claim.result_id, claim.blob_key) is None
        assert session.get_one(ModelResult, claim.result_id).finished_at == before
        assert session.scalars(select(Job)).one().pending_items == 0


def test_unavailable_models_are_skipped_with_their_reason(clean_db: Infra) -> None:
    with transaction() as session:
        [item] = make_job(session, 1, models=["m1", "gone"])
    availability = {"m1": BOTH["m1"], "gone": Availability(False, None, "no model artifact in /models/gone")}
    [claim] = _attach(item, "skip", availability)
    assert claim.model_name == "m1"
    _complete(claim)
    [row] = _items([item])
    assert row.status == ItemStatus.done
    assert row.skipped == {"gone": {"reason": "no model artifact in /models/gone"}}
    assert row.expected == {"m1": "1"}


def test_a_failed_model_fails_the_item_with_the_reason(clean_db: Infra) -> None:
    with transaction() as session:
        [item] = make_job(session, 1, models=["m1", "m2"])
    claims = _attach(item, "fails")
    _complete(claims[0], error="RuntimeError('boom')")
    _complete(claims[1])
    [row] = _items([item])
    assert row.status == ItemStatus.failed
    assert row.error_code == "analysis_failed" and "boom" in (row.error_detail or "")


def test_failing_an_item_twice_counts_it_once(clean_db: Infra) -> None:
    with transaction() as session:
        [item, other] = make_job(session, 2)
    with transaction() as session:
        assert pipeline.fail_item(session, item, "http_error", "HTTP 404")
        assert not pipeline.fail_item(session, item, "http_error", "HTTP 404")
        job = session.scalars(select(Job)).one()
        assert job.pending_items == 1 and job.finished_at is None
        assert pipeline.fail_item(session, other, "not_an_image", "b'<html>'")
    with transaction() as session:
        job = session.scalars(select(Job)).one()
        assert job.pending_items == 0 and job.finished_at is not None


def test_concurrent_finishers_complete_every_item_exactly_once(clean_db: Infra) -> None:
    # given: 12 images, each with 2 items and 2 models finishing at the same moment in two threads
    with transaction() as session:
        ids = make_job(session, 24, models=["m1", "m2"])
    claims: list[pipeline.AnalysisClaim] = []
    for n in range(12):
        claims += _attach(ids[2 * n], f"race-{n}")
        assert _attach(ids[2 * n + 1], f"race-{n}") == []

    # when
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def finish(model: str) -> None:
        try:
            for claim in (c for c in claims if c.model_name == model):
                barrier.wait(timeout=30)
                _complete(claim)
        except BaseException as exc:  # surfaced below: a thread's assertion must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(m,)) for m in ("m1", "m2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then
    assert errors == []
    assert {i.status for i in _items(ids)} == {ItemStatus.done}
    with transaction() as session:
        job = session.scalars(select(Job)).one()
        assert job.pending_items == 0 and job.finished_at is not None
        assert session.scalar(select(func.count()).select_from(ImageRecord)) == 12


def test_asking_for_explanations_reruns_an_analysis_once(clean_db: Infra) -> None:
    with transaction() as session:
        first, second, third = make_job(session, 3, models=["m1"])
    only = {"m1": BOTH["m1"]}
    [claim] = _attach(first, "explained", only)
    _complete(claim)

    # a job that wants explanations claims the finished analysis again, with the option set
    image = stored_image("explained")
    with transaction() as session:
        assert pipeline.claim_fetch(session, second) is not None
        [rerun] = _attach_with(session, second, image, only, explain=["m1"])
    assert rerun.result_id == claim.result_id and rerun.explain
    with transaction() as session:
        started = pipeline.claim_analysis(session, rerun.result_id, rerun.blob_key)
        assert started is not None and started.explain
    assert _complete(rerun)

    # once explained, it is not run again
    with transaction() as session:
        assert pipeline.claim_fetch(session, third) is not None
        assert _attach_with(session, third, image, only, explain=["m1"]) == []
    assert {i.status for i in _items([first, second, third])} == {ItemStatus.done}

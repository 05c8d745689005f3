"""Model versions chosen once: reported by the workers that serve them, and a rollout that strands nothing."""

from __future__ import annotations

import time

from sqlalchemy import func, select, text, update

from common.schemas import ItemStatus
from db import pipeline, versions
from db.models import Item, ModelResult, ServedVersion
from db.session import transaction
from tests.factories import make_job, stored_image
from tests.support.infra import Infra


def _report(model: str, version: str, *, started: bool = True) -> None:
    with transaction() as session:
        versions.report_served(session, model, version, started=started)


def test_new_analyses_go_to_the_version_whose_worker_started_last(clean_db: Infra) -> None:
    with transaction() as session:
        unknown = versions.availability(session, "m")
    assert not unknown.available and "no model artifact" in (unknown.reason or "")

    # given: version 1 served, then version 2 rolled out
    _report("m", "1")
    time.sleep(0.01)
    _report("m", "2")
    # when: version 1's remaining workers keep beating (a heartbeat is not a new start)
    _report("m", "1", started=False)
    # then
    with transaction() as session:
        assert versions.availability(session, "m") == versions.Availability(True, "2")
        assert versions.is_live(session, "m", "1", within_s=60)
        # a rollback starts version 1 again: it becomes the current one
    _report("m", "1")
    with transaction() as session:
        assert versions.current_version(session, "m") == "1"


def test_a_queued_analysis_of_a_version_nobody_serves_moves_to_the_served_one(clean_db: Infra) -> None:
    # given: an item waiting on an analysis by version 1, which no worker serves any more
    _report("m", "1")
    with transaction() as session:
        [item] = make_job(session, 1, models=["m"])
        assert pipeline.claim_fetch(session, item) is not None
        [claim] = pipeline.attach_image(session, item, stored_image("rollout"), {"m": "1"}, {})
        # its last worker's last heartbeat was an hour ago
        session.execute(update(ServedVersion).values(seen_at=func.now() - text("interval '1 hour'")))
    with transaction() as session:
        assert versions.is_live(session, "m", "1", within_s=90) is False
        # a version 2 worker cannot claim it as it is ...
        assert pipeline.claim_analysis(session, claim.result_id, claim.blob_key, version="2") is None
        # ... so it moves it to version 2
        moved = pipeline.retarget_analysis(session, claim, "2")
    assert moved is not None and moved.model_version == "2"

    # when: version 2 analyses it
    with transaction() as session:
        started = pipeline.claim_analysis(session, moved.result_id, moved.blob_key, version="2")
        assert started is not None
        assert pipeline.complete_analysis(session, started, output={"label": "x"})

    # then: the item is done, waiting on version 2, and one result exists
    with transaction() as session:
        row = session.get_one(Item, item)
        assert (row.status, row.expected) == (ItemStatus.done, {"m": "2"})
        results = session.execute(select(ModelResult.model_version, ModelResult.status)).all()
    assert [(v, s.value) for v, s in results] == [("2", "done")]


def test_moving_onto_an_existing_result_completes_the_waiting_item(clean_db: Infra) -> None:
    # given: the same bytes analysed by version 2 already, and an item still waiting on version 1
    with transaction() as session:
        first, second = make_job(session, 2, models=["m"])
        assert pipeline.claim_fetch(session, first) is not None
        [done] = pipeline.attach_image(session, first, stored_image("both"), {"m": "2"}, {})
    with transaction() as session:
        pipeline.claim_analysis(session, done.result_id, done.blob_key)
        pipeline.complete_analysis(session, done, output={"label": "y"})
    with transaction() as session:
        assert pipeline.claim_fetch(session, second) is not None
        [stale] = pipeline.attach_image(session, second, stored_image("both"), {"m": "1"}, {})

    # when
    with transaction() as session:
        assert pipeline.retarget_analysis(session, stale, "2") is None

    # then
    with transaction() as session:
        row = session.get_one(Item, second)
        assert (row.status, row.expected) == (ItemStatus.done, {"m": "2"})
        versions_left = session.scalars(select(ModelResult.model_version)).all()
    assert versions_left == ["2"]


def test_moving_the_same_analysis_twice_strands_nothing(clean_db: Infra) -> None:
    # given: two deliveries of one analysis for a retired version, both read before either moved it
    with transaction() as session:
        [item] = make_job(session, 1, models=["m"])
        assert pipeline.claim_fetch(session, item) is not None
        [claim] = pipeline.attach_image(session, item, stored_image("twice"), {"m": "1"}, {})

    # when: both move it
    with transaction() as session:
        first = pipeline.retarget_analysis(session, claim, "2")
    with transaction() as session:
        second = pipeline.retarget_analysis(session, claim, "2")

    # then: the first moved it, the second found nothing to move, and version 2 completes the item
    assert first is not None and second is None
    with transaction() as session:
        started = pipeline.claim_analysis(session, first.result_id, first.blob_key, "m", "2")
        assert started is not None
        assert pipeline.complete_analysis(session, started, output={"label": "z"})
    with transaction() as session:
        row = session.get_one(Item, item)
    assert (row.status, row.expected) == (ItemStatus.done, {"m": "2"})


def test_a_retired_version_stays_retired_through_heartbeats(clean_db: Infra) -> None:
    _report("m", "1")
    with transaction() as session:
        assert versions.retire(session, "m") == 1
    _report("m", "1", started=False)  # a late heartbeat of its last worker
    with transaction() as session:
        assert not versions.availability(session, "m").available

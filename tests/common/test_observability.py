"""Log lines carry the bound ids, in JSON or text; the queue-depth metric reads the broker's lists."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from common.logs import ContextFilter, json_formatter, log_context
from tests.support.infra import Infra


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("atelier.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, sink, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_ids_bound_around_them(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, sink, handler = captured
    handler.setFormatter(json_formatter())
    with log_context(job_id="job-1"):
        with log_context(item_id="item-7", result_id=None):
            logger.warning("fetch failed: %s", "http_error", extra={"attempt": 2})
        logger.info("job line")
    logger.info("outside")
    inner, job, outside = (json.loads(line) for line in sink.getvalue().splitlines())
    assert inner["message"] == "fetch failed: http_error" and inner["level"] == "WARNING"
    assert (inner["job_id"], inner["item_id"], inner["attempt"]) == ("job-1", "item-7", 2)
    assert "result_id" not in inner and "ids" not in inner
    assert job["job_id"] == "job-1" and "item_id" not in job
    assert "job_id" not in outside and outside["logger"] == "atelier.test.logs"


def test_text_lines_end_with_the_ids(captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    from common.logs import TEXT_FORMAT

    logger, sink, handler = captured
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    with log_context(job_id="j", item_id="i"):
        logger.info("stored")
    logger.info("plain")
    first, second = sink.getvalue().splitlines()
    assert first.endswith("stored job_id=j item_id=i")
    assert second.endswith("atelier.test.logs: plain")


def test_queue_depth_counts_every_priority_list(infra: Infra) -> None:
    import redis

    from common.metrics import QueueDepthCollector, queue_keys

    client = redis.Redis.from_url(infra.redis_url)
    keys = queue_keys("depth-test")
    client.delete(*keys)
    client.rpush(keys[0], "a", "b", "c")
    client.rpush(keys[2], "d")  # a message with a priority
    try:
        [family] = QueueDepthCollector(infra.redis_url, ["depth-test", "empty-test"]).collect()
        depths = {s.labels["queue"]: s.value for s in family.samples}
        assert depths == {"depth-test": 4.0, "empty-test": 0.0}
    finally:
        client.delete(*keys)


def test_queue_depth_reports_nothing_when_the_broker_is_down(caplog: pytest.LogCaptureFixture) -> None:
    from common.metrics import QueueDepthCollector

    assert list(QueueDepthCollector("redis://127.0.0.1:1/0", ["x"]).collect()) == []
    assert "queue depth unavailable" in caplog.text

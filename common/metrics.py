"""Prometheus metrics of the gateway and the workers (``prometheus_client``, the standard client library).

All of them live in one registry, ``REGISTRY``: the gateway serves it at ``/metrics`` on its own port,
each worker on ``ATELIER_WORKER_METRICS_PORT``. Workers run the solo or the threads pool (one process),
so no multiprocess mode is needed; a prefork pool's children would keep their own counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

# --- gateway ---------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "atelier_http_requests",
    "HTTP requests answered by the gateway, by route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "atelier_http_request_duration_seconds",
    "Time the gateway took to answer, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
ITEMS_SUBMITTED = Counter(
    "atelier_items_submitted",
    "Images submitted to the gateway, by source (url or upload).",
    ["source"],
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter("atelier_jobs_submitted", "Jobs accepted by the gateway.", registry=REGISTRY)

# --- workers ---------------------------------------------------------------------------------------
TASKS = Counter(
    "atelier_tasks",
    "Celery tasks by name and state (started, succeeded, failed, retried); a micro-batch is one task.",
    ["task", "state"],
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    "atelier_task_duration_seconds",
    "Wall time of a Celery task, from start to its end in any state.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)
INFERENCE = Histogram(
    "atelier_inference_seconds",
    "Wall time of one predict call of a model service (a whole micro-batch, or an image's crops).",
    ["service"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "atelier_batch_size",
    "Images (or crops) per predict call of a model service.",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "atelier_model_info",
    "The model version this worker loaded (value 1).",
    ["service", "version"],
    registry=REGISTRY,
)

# kombu's Redis transport keeps a queue's messages in a list named after the queue, and messages with a
# priority in lists "<queue>\x06\x16<priority>" (its default priority steps)
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def _queue_depth_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("atelier_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a Celery queue's pending messages."""
    return [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


class QueueDepthCollector(Collector):
    """``atelier_queue_depth{queue}``: messages waiting in each queue, read from the broker at scrape time
    (not counting those a worker holds unacknowledged). A broker that does not answer reports nothing."""

    def __init__(self, redis_url: str, queues: Iterable[str]):
        self.redis_url = redis_url
        self.queues = sorted(set(queues))
        self._client: Any = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield _queue_depth_family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import redis

        family = _queue_depth_family()
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.redis_url, socket_timeout=2, socket_connect_timeout=2
                )
            pipe = self._client.pipeline(transaction=False)
            for queue in self.queues:
                for key in queue_keys(queue):
                    pipe.llen(key)
            lengths = pipe.execute()
        except redis.RedisError as exc:
            log.warning("queue depth unavailable: %r", exc)
            return
        per_queue = len(_PRIORITY_STEPS) + 1
        for i, queue in enumerate(self.queues):
            family.add_metric([queue], float(sum(lengths[i * per_queue : (i + 1) * per_queue])))
        yield family


def watch_queues(redis_url: str, queues: Iterable[str]) -> None:
    """Report the depth of ``queues`` with this process's metrics (once per process)."""
    global _queue_collector
    if _queue_collector is None:
        _queue_collector = QueueDepthCollector(redis_url, queues)
        REGISTRY.register(_queue_collector)


_queue_collector: QueueDepthCollector | None = None


def serve(port: int) -> bool:
    """Serve ``REGISTRY`` at ``http://0.0.0.0:<port>/metrics`` from a daemon thread. A port in use is
    logged and skipped: metrics never stop a worker."""
    try:
        start_http_server(port, registry=REGISTRY)
    except OSError as exc:
        log.warning("no metrics endpoint: port %d: %s", port, exc)
        return False
    log.info("metrics at http://0.0.0.0:%d/metrics", port)
    return True

"""Recovery without an operator: the orchestrator republishes work whose messages were lost.

Messages are acknowledged only after their task ran and the broker keeps what it holds on disk, so
a lost message is rare: a job whose dispatch could not be published (the broker was away at submit:
the jobs table is the outbox), a publish that failed after its rows committed, the last second of
writes of a broker killed without warning. The reconciler finds such work in Postgres
(``db.pipeline.stale_work``) every ``ATELIER_WORKER_RECONCILE_INTERVAL_S``, in one orchestrator at a
time (a lock in the broker), and publishes it again:

* messages a worker held when the broker restarted (its connection dropped, Celery forgot them),
  once no task delivered before then can still be running: within a task's longest time, instead of
  the visibility timeout;
* a job's dispatch that was never published, once ``RECONCILE_GRACE_S`` old;
* work of a queue that holds no message at all, neither waiting nor held by a worker (so a long
  backlog is never mistaken for loss), once ``RECONCILE_GRACE_S`` old.

``atelier reconcile --older-than-s N`` is the operator's version: everything untouched for N seconds.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from kombu.connection import Connection

from common.settings import get_settings
from db import pipeline
from db.session import transaction
from services.registry import SERVICES, get_spec
from worker import broker
from worker.celery_app import task_seconds, unacked_keys
from worker.settings import get_worker_settings

log = logging.getLogger(__name__)

LOCK_KEY = "atelier:reconciler"
# kombu's Redis transport keeps messages of priority > 0 in lists named <queue><sep><priority>
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def queue_idle(client: redis.Redis, queue: str) -> bool:
    """No message of this queue anywhere: none waiting, none held by a worker (running, prefetched,
    or waiting out a retry delay)."""
    pipe = client.pipeline(transaction=False)
    for name in (queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)):
        pipe.llen(name)
    pipe.hlen(unacked_keys(queue)["unacked_key"])
    return not any(pipe.execute())


# kombu's default keys, shared by every queue before each queue got its own: what they still hold
# after an upgrade has no worker left to acknowledge it
_LEGACY_KEYS = {
    "unacked_key": "unacked",
    "unacked_index_key": "unacked_index",
    "unacked_mutex_key": "unacked_mutex",
}


def broker_started(client: redis.Redis) -> float:
    """When the broker last started (epoch seconds; a second early, its uptime being whole seconds)."""
    return time.time() - int(client.info("server")["uptime_in_seconds"]) - 1.0


def restore_orphans(client: redis.Redis, url: str, keys: dict[str, str], delivered_before: float) -> int:
    """Put the unacknowledged messages under ``keys`` delivered before ``delivered_before`` back in their
    queues; returns how many. The reconciler passes, for each queue, the broker's start (workers lose
    what they held when their connections drop: Celery forgets what it had reserved, so no one would
    acknowledge it before the visibility timeout) or, if later, the longest a task runs (one delivered
    before then cannot still be running)."""
    tags = client.zrangebyscore(keys["unacked_index_key"], 0, delivered_before)
    if tags:
        with Connection(url, transport_options=keys) as connection:  # type: ignore[no-untyped-call]
            qos = connection.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag)
        log.warning("%d messages lost by their workers: back in their queue", len(tags))
    return len(tags)


def republish(stale: pipeline.StaleWork) -> None:
    """Publish the stale work again; a job's dispatch is marked published once it is."""
    for job_id in stale.jobs:
        broker.dispatch_job(job_id)
    with transaction() as session:
        pipeline.mark_published(session, stale.jobs, again=True)
    broker.fetch_items(stale.items)
    with transaction() as session:
        claims = [pipeline.pending_analysis(session, r) for r in (*stale.results, *stale.staged)]
    staged = set(stale.staged)
    broker.analyse([c for c in claims if c is not None and c.result_id not in staged])
    for claim in claims:
        crops_to = get_spec(claim.model_name).crops_to if claim is not None else None
        if claim is not None and claim.result_id in staged and crops_to is not None:
            broker.classify_crops(claim.result_id, claim.blob_key, crops_to)


def republish_stale(older_than_s: float) -> pipeline.StaleWork:
    """``atelier reconcile``: everything untouched for ``older_than_s``, as if every queue were idle."""
    with transaction() as session:
        stale = pipeline.stale_work(session, older_than_s)
    republish(stale)
    return stale


def reconcile_once(client: redis.Redis) -> pipeline.StaleWork:
    """One look: what is lost by the rules above, republished."""
    settings, worker = get_settings(), get_worker_settings()
    queues = settings.queues
    running_s = {queues.orchestrator: task_seconds(None)}
    for name in SERVICES:
        queue = get_spec(name).queue(queues)
        running_s[queue] = max(running_s.get(queue, 0.0), task_seconds(name))
    started, now = broker_started(client), time.time()
    for queue, seconds in running_s.items():
        restore_orphans(client, settings.redis_url, unacked_keys(queue), min(started, now - seconds))
    restore_orphans(client, settings.redis_url, _LEGACY_KEYS, now - max(running_s.values()))
    idle_models = {name for name in SERVICES if queue_idle(client, get_spec(name).queue(queues))}
    idle_staged = {name for name, spec in SERVICES.items() if spec.crops_to in idle_models}
    with transaction() as session:
        stale = pipeline.stale_work(
            session,
            worker.reconcile_grace_s,
            orchestrator_idle=queue_idle(client, queues.orchestrator),
            idle_models=idle_models,
            idle_staged=idle_staged,
        )
    if stale.jobs or stale.items or stale.results or stale.staged:
        log.warning(
            "republishing lost work: %d jobs, %d fetches, %d analyses, %d garment crops",
            len(stale.jobs),
            len(stale.items),
            len(stale.results),
            len(stale.staged),
        )
        republish(stale)
    return stale


def run(stop: threading.Event) -> None:
    """Every interval: take the lock (one orchestrator reconciles at a time), look, republish."""
    interval = get_worker_settings().reconcile_interval_s
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=10, socket_connect_timeout=5)
    # held for one look at most; released (compare-and-delete) by its holder after it
    lock = client.lock(LOCK_KEY, timeout=max(10 * interval, 300.0), blocking=False)
    while not stop.wait(interval):
        try:
            if lock.acquire():
                try:
                    reconcile_once(client)
                finally:
                    lock.release()
        except Exception:  # the database or the broker away, or anything else: the next look tries again
            log.warning("reconciling failed; trying again in %.0f s", interval, exc_info=True)


def start() -> threading.Event:
    """The reconciler's thread (the orchestrator worker starts it); set the event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run, args=(stop,), name="reconciler", daemon=True).start()
    return stop

"""Recovery without an operator: the orchestrator republishes work whose messages were lost.

Messages are acknowledged only after their task ran and the broker keeps what it holds on disk, so
a lost message is rare: a job whose dispatch could not be published (the broker was away at submit:
the jobs table is the outbox), a publish that failed after its rows committed, the last second of
writes of a broker killed without warning. The reconciler finds such work in Postgres
(``db.pipeline.stale_work``) every ``ATELIER_WORKER_RECONCILE_INTERVAL_S``, in one orchestrator at a
time (a lock in the broker), and publishes it again:

* messages a worker held when the broker restarted (its connection dropped, Celery forgot them):
  at once, instead of after the visibility timeout;
* a job's dispatch that was never published, once ``RECONCILE_GRACE_S`` old;
* work of a queue that holds no message at all, neither waiting nor held by a worker (so a long
  backlog is never mistaken for loss), once ``RECONCILE_GRACE_S`` old;
* a fetch or an analysis claimed longer ago than twice its queue's visibility timeout (by then the
  broker itself would have handed a dead worker's message out again), whatever the queues hold.

``atelier reconcile --older-than-s N`` is the operator's version: everything untouched for N seconds.
"""

from __future__ import annotations

import logging
import socket
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


def restore_orphans(client: redis.Redis, queue: str) -> int:
    """Messages of ``queue`` delivered before the broker last started: their workers lost them when
    their connections dropped (Celery forgets what it had reserved), so no one will acknowledge them;
    back to the queue now instead of after the visibility timeout. Returns how many."""
    started = time.time() - int(client.info("server")["uptime_in_seconds"]) - 1.0
    keys = unacked_keys(queue)
    tags = client.zrangebyscore(keys["unacked_index_key"], 0, started)
    if tags:
        with Connection(get_settings().redis_url, transport_options=keys) as connection:  # type: ignore[no-untyped-call]
            qos = connection.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag)
        log.warning("%d messages of %s held when the broker restarted: back in the queue", len(tags), queue)
    return len(tags)


def republish(stale: pipeline.StaleWork) -> None:
    """Publish the stale work again; a job's dispatch is marked published once it is."""
    for job_id in stale.jobs:
        broker.dispatch_job(job_id)
    with transaction() as session:
        pipeline.mark_published(session, stale.jobs)
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
    for queue in {queues.orchestrator, *(get_spec(name).queue(queues) for name in SERVICES)}:
        restore_orphans(client, queue)
    idle_models = {name for name in SERVICES if queue_idle(client, get_spec(name).queue(queues))}
    idle_staged = {name for name, spec in SERVICES.items() if spec.crops_to in idle_models}
    with transaction() as session:
        stale = pipeline.stale_work(
            session,
            worker.reconcile_grace_s,
            orchestrator_idle=queue_idle(client, queues.orchestrator),
            idle_models=idle_models,
            idle_staged=idle_staged,
            lost_fetch_s=worker.stale_after_s(task_seconds(None)),
            lost_analysis_s=max(worker.stale_after_s(task_seconds(name)) for name in SERVICES),
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
    me = f"{socket.gethostname()}:{threading.get_native_id()}"
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=10, socket_connect_timeout=5)
    while not stop.wait(interval):
        try:
            if client.set(LOCK_KEY, me, nx=True, px=int(interval * 900)):
                reconcile_once(client)
        except Exception:  # the database or the broker away, or anything else: the next look tries again
            log.warning("reconciling failed; trying again in %.0f s", interval, exc_info=True)


def start() -> threading.Event:
    """The reconciler's thread (the orchestrator worker starts it); set the event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run, args=(stop,), name="reconciler", daemon=True).start()
    return stop

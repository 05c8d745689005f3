"""The Celery application and the task names. Importable by the gateway (it only publishes, through
``worker.broker``) and by every worker process."""

from __future__ import annotations

from celery import Celery

from common.settings import get_settings
from worker.settings import get_worker_settings

DISPATCH_JOB_TASK = "atelier.dispatch_job_task"
FETCH_TASK = "atelier.fetch_task"
ANALYSE_TASK = "atelier.analyse_task"
CROPS_TASK = "atelier.crops_task"


def task_seconds(service: str | None) -> float:
    """The longest one task of this worker can run: a fetch (the fetcher's deadline, then decoding and
    storing) or a model's micro-batch (``ATELIER_WORKER_TASK_BUDGET_S``)."""
    if service is None:
        return get_settings().fetch.deadline_s + 10.0
    return get_worker_settings().task_budget_s


def unacked_keys(queue: str) -> dict[str, str]:
    """Each queue's workers keep their unacknowledged messages under their own keys, so that a worker
    restores only its own queue's lost messages, after its own visibility timeout (kombu's default is
    one hash for all queues, restored by any consumer after one timeout)."""
    return {
        "unacked_key": f"unacked:{queue}",
        "unacked_index_key": f"unacked_index:{queue}",
        "unacked_mutex_key": f"unacked_mutex:{queue}",
    }


def make_celery() -> Celery:
    settings, worker = get_settings(), get_worker_settings()
    app = Celery("atelier", broker=settings.redis_url, include=["worker.tasks"])
    orchestrator = settings.queues.orchestrator
    served = worker.service
    queue = orchestrator if served is None else settings.queues.for_service(served)
    app.conf.update(
        # a task is acknowledged after it ran, so a worker killed mid-task leaves its message to be
        # redelivered; every write is an idempotent upsert, so the redelivery changes nothing twice
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # a model worker must be able to hold a whole micro-batch unacknowledged
        worker_prefetch_multiplier=max(worker.prefetch_multiplier, worker.max_batch if worker.service else 1),
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=orchestrator,
        task_routes={DISPATCH_JOB_TASK: {"queue": orchestrator}, FETCH_TASK: {"queue": orchestrator}},
        broker_transport_options={
            **unacked_keys(queue),
            # a broker behind a cut network fails fast (the gateway then keeps the job in its outbox)
            "socket_connect_timeout": 5,
            "visibility_timeout": worker.visibility_timeout(task_seconds(served)),
            "unacked_restore_interval": worker.restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_celery()

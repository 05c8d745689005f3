"""``ATELIER_WORKER_*``: how a worker process behaves."""

from __future__ import annotations

import math
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_WORKER_", extra="ignore")

    service: str | None = Field(
        default=None,
        description="The model service this process serves (its queue); None for the orchestrator.",
    )
    max_retries: int = Field(default=5, description="Retries of a task that failed on a transient error.")
    retry_backoff_s: float = Field(
        default=2.0, description="First retry delay in seconds; it doubles each retry."
    )
    retry_backoff_max_s: float = Field(
        default=60.0,
        description="Longest retry delay in seconds. A delayed retry waits in a worker, unacknowledged, so "
        "the visibility timeout is derived from it.",
    )
    task_budget_s: float = Field(
        default=60.0,
        description="Longest a model worker's micro-batch (or a crops batch) may take, in seconds; with the "
        "longest retry delay it sets a model queue's visibility timeout.",
    )
    visibility_timeout_s: int | None = Field(
        default=None,
        description="Seconds before a dead worker's unacknowledged messages return to its queue. Unset: "
        "derived per queue from the longest its task can take (the fetch deadline, or TASK_BUDGET_S) plus "
        "the longest retry delay and a 30 s margin.",
    )
    # kombu's default is ~100 s
    restore_interval_s: int = Field(
        default=10, description="Seconds between an idle worker's looks for such tasks."
    )
    prefetch_multiplier: int = Field(
        default=1,
        description="Tasks a worker process reserves ahead of the one it runs (a model worker reserves at "
        "least MAX_BATCH).",
    )
    max_batch: int = Field(
        default=8, description="Model workers micro-batch: at most this many images per predict() call..."
    )
    max_wait_ms: float = Field(
        default=20.0, description="...or whatever arrived within this many milliseconds."
    )
    classify_crops: bool = Field(
        default=True,
        description="Garments a detecting service finds go, cropped, to its crops service (the classifier) "
        "when a version of it exists.",
    )
    heartbeat_s: float = Field(
        default=30.0,
        gt=0,
        description="A model worker reports the version it serves this often (seconds); after three missed "
        "beats, analyses queued for that version move to the version that is served.",
    )
    reconcile_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="The orchestrator looks for work whose messages were lost this often (seconds); one "
        "orchestrator at a time (a lock in the broker).",
    )
    reconcile_grace_s: float = Field(
        default=30.0,
        description="Work is republished only once it has waited this long (seconds): a job whose dispatch "
        "was never published, or work of a queue with no message left, queued nor held by a worker.",
    )
    metrics_port: int = Field(
        default=9100,
        description="Port of this worker's Prometheus metrics (http://<host>:<port>/metrics); 0: none.",
    )

    def visibility_timeout(self, task_s: float) -> int:
        """The visibility timeout of a queue whose task takes at most ``task_s`` seconds: a message
        still held by a live worker (running, or waiting out a retry delay) is never handed to another."""
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return math.ceil(task_s + self.retry_backoff_max_s + 30.0)


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()

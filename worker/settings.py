"""``ATELIER_WORKER_*``: how a worker process behaves."""

from __future__ import annotations

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
    retry_backoff_max_s: float = Field(default=300.0, description="Longest retry delay in seconds.")
    # Redis transport; one image per task takes seconds, so this is about what users will wait
    visibility_timeout_s: int = Field(
        default=900,
        description="Seconds before a dead worker's unacknowledged task returns to its queue; keep it above "
        "the longest task.",
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
    metrics_port: int = Field(
        default=9100,
        description="Port of this worker's Prometheus metrics (http://<host>:<port>/metrics); 0: none.",
    )


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()

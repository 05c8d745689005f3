"""``ATELIER_WORKER_*``: how a worker process behaves."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_WORKER_", extra="ignore")

    # the model service this process serves (its queue); None for the orchestrating worker
    service: str | None = None
    max_retries: int = 5
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    # unacked messages of a worker that died return to the queue after this long (Redis transport);
    # keep it above the longest task (one image per task: seconds), below what users will wait
    visibility_timeout_s: int = 900
    # how often an idle worker looks for such messages (kombu's default is ~100 s)
    restore_interval_s: int = 10
    prefetch_multiplier: int = 1
    # model workers micro-batch: up to max_batch analyses, or whatever arrived within max_wait_ms,
    # go through one predict() call
    max_batch: int = 8
    max_wait_ms: float = 20.0
    # garments found by a detecting service go to its crops service (the classifier) when one is available
    classify_crops: bool = True
    # Prometheus metrics of this worker at http://<host>:<port>/metrics; 0: none
    metrics_port: int = 9100


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()

"""What a worker reports: task counts and durations from Celery's task signals, predict calls, the
model it loaded, its queue's depth; and the log setup (Celery leaves logging to us)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

from celery import signals

from common import metrics
from common.logs import bind, configure_logging, unbind
from common.settings import get_settings
from worker.celery_app import CROPS_TASK, DISPATCH_JOB_TASK, FETCH_TASK

# the id each task's first argument is, bound to its log records (a micro-batch binds per analysis)
_FIRST_ARGUMENT = {DISPATCH_JOB_TASK: "job_id", FETCH_TASK: "item_id", CROPS_TASK: "result_id"}
_started: dict[str, tuple[float, Any]] = {}


@signals.setup_logging.connect
def _our_logging(loglevel: Any = None, **_: Any) -> None:
    """Connected, so Celery configures no logging of its own: one format (text or JSON) everywhere, at
    the worker's ``--loglevel`` (which Celery passes on)."""
    settings = get_settings()
    configure_logging(loglevel or settings.log_level, settings.log_format)


def _name(sender: Any) -> str:
    return str(getattr(sender, "name", sender))


@signals.task_prerun.connect
def _task_started(sender: Any = None, task_id: str | None = None, args: Any = None, **_: Any) -> None:
    name = _name(sender)
    metrics.TASKS.labels(name, "started").inc()
    field = _FIRST_ARGUMENT.get(name)
    token = bind(**{field: args[0]}) if field and args else None
    if task_id is not None:
        _started[task_id] = (time.perf_counter(), token)


@signals.task_postrun.connect
def _task_ended(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    began, token = _started.pop(task_id, (None, None)) if task_id is not None else (None, None)
    if token is not None:
        unbind(token)
    if began is not None:
        metrics.TASK_DURATION.labels(_name(sender)).observe(time.perf_counter() - began)


@signals.task_success.connect
def _task_succeeded(sender: Any = None, **_: Any) -> None:
    metrics.TASKS.labels(_name(sender), "succeeded").inc()


@signals.task_failure.connect
def _task_failed(sender: Any = None, **_: Any) -> None:
    metrics.TASKS.labels(_name(sender), "failed").inc()


@signals.task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    metrics.TASKS.labels(_name(sender), "retried").inc()


@contextmanager
def predict_call(service: str, size: int) -> Any:
    """Time one predict call of ``size`` images (or crops) for ``atelier_inference_seconds``."""
    began = time.perf_counter()
    yield
    if not size:
        return
    metrics.INFERENCE.labels(service).observe(time.perf_counter() - began)
    metrics.BATCH_SIZE.labels(service).observe(size)


def model_loaded(service: str, version: str) -> None:
    metrics.MODEL_INFO.labels(service, version).set(1)


def start(port: int, queues: list[str]) -> None:
    """The metrics endpoint of this worker, with the depth of the queues it consumes."""
    if port:
        metrics.watch_queues(get_settings().redis_url, queues)
        metrics.serve(port)

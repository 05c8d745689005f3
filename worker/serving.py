"""What every model worker process shares: the model it serves (loaded once, its version reported to
the orchestrator), the stored images it reads, the files it writes, and the one retry shape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery.exceptions import Reject
from PIL import Image

from common.blobstore import blob_store
from common.images import decode_image
from common.settings import get_settings
from db import pipeline, versions
from db.session import database_unavailable, transaction
from db.versions import Availability
from services.base import Model
from services.registry import get_spec
from worker import monitoring
from worker.broker import BROKER_ERRORS
from worker.settings import get_worker_settings

log = logging.getLogger(__name__)

_loaded: dict[str, Model] = {}


def served_service() -> str:
    name = get_worker_settings().service
    if not name:
        raise RuntimeError("this worker serves no model service; set ATELIER_WORKER_SERVICE")
    return name


def served_model() -> Model:
    """The model this worker serves, loaded once (``atelier worker`` loads it before consuming)."""
    name = served_service()
    if name not in _loaded:
        spec = get_spec(name)
        model = spec.build(get_settings().model_repository)
        model.load()
        _loaded[name] = model
        monitoring.model_loaded(model.name, model.version)
        log.info("loaded model %s version %s", model.name, model.version)
    return _loaded[name]


def report_served(model: Model) -> threading.Thread:
    """Tell the orchestrator which version this worker serves, now and then every heartbeat, so new
    analyses go to it and queued ones for a version nobody serves any more are moved to it."""

    def report() -> None:
        with transaction() as session:
            versions.report_served(session, model.name, model.version, started=True)

    # a worker started while Postgres is away waits for it rather than exiting
    until_infrastructure_answers(report, f"reporting {model.name} {model.version}")
    interval = get_worker_settings().heartbeat_s

    def beat() -> None:
        while True:
            time.sleep(interval)
            try:
                with transaction() as session:
                    versions.report_served(session, model.name, model.version, started=False)
            except Exception:  # a database away for a while, or anything else: the next beat tries again
                log.warning("heartbeat of %s %s failed", model.name, model.version, exc_info=True)

    thread = threading.Thread(target=beat, name="served-version-heartbeat", daemon=True)
    thread.start()
    return thread


def service_availability(*names: str) -> dict[str, Availability]:
    """Built-in analysers always serve their code version; model services the version their workers
    reported (``db.versions``, read in one transaction): the orchestrator never reads the model
    repository."""
    found = {n: Availability(True, v) for n in names if (v := get_spec(n).builtin_version) is not None}
    served = [n for n in names if n not in found]
    if served:
        with transaction() as session:
            found |= {n: versions.availability(session, n) for n in served}
    return {n: found[n] for n in names}


def is_infrastructure_error(exc: BaseException) -> bool:
    """The database or the broker is away (a restart, a network cut): nobody's fault, and nothing can be
    recorded while it lasts, so the work waits for it instead of spending the item's retries."""
    return database_unavailable(exc) or isinstance(exc, BROKER_ERRORS)


def until_infrastructure_answers(action: Callable[[], None], what: str) -> None:
    """Run ``action`` until the database and the broker let it through, waiting between tries as
    ``infrastructure_backoff_s`` says; any other error propagates."""
    failures = 0
    while True:
        try:
            action()
            return
        except Exception as exc:
            if not is_infrastructure_error(exc):
                raise
            failures += 1
            delay = infrastructure_backoff_s(failures)
            log.warning("%s: database or broker unreachable, trying again in %.0f s: %r", what, delay, exc)
            time.sleep(delay)


# a database restart takes seconds: look again at least this often
_INFRASTRUCTURE_BACKOFF_MAX_S = 8.0


def infrastructure_backoff_s(failures: int) -> float:
    """Delay before work that met an unreachable database or broker is tried again: doubling from one
    second with each consecutive failure in this process, capped at 8 s; never counted against the item."""
    return float(min(2.0 ** max(failures - 1, 0), _INFRASTRUCTURE_BACKOFF_MAX_S))


_infrastructure_failures = [0]  # consecutive, in this process


@contextmanager
def requeue_on_infrastructure_error(what: str, requeue: Callable[[], None] | None = None) -> Iterator[None]:
    """The failure policy's other half: a task that meets an unreachable database or broker waits
    (this worker thread sleeps, doubling from one second up to the longest retry delay, so a worker
    does not spin through its queue while Postgres restarts) and returns its message to the queue.
    Nothing is acknowledged and dropped: if the broker is away too, the message stays unacknowledged
    and the broker hands it out again after the visibility timeout. Any other error propagates.

    ``requeue``, for batch tasks, publishes copies of the batch's messages instead of rejecting one."""
    try:
        yield
    except Exception as exc:
        if not is_infrastructure_error(exc):
            raise
        _infrastructure_failures[0] += 1
        delay = infrastructure_backoff_s(_infrastructure_failures[0])
        log.warning("%s: database or broker unreachable, back in the queue in %.0f s: %r", what, delay, exc)
        time.sleep(delay)
        if requeue is None:
            raise Reject(repr(exc), requeue=True) from exc
        requeue()  # a batch's messages are acknowledged together: copies of them go back instead
    else:
        _infrastructure_failures[0] = 0


def backoff_s(retries: int) -> float:
    """Seconds before the next delivery after ``retries`` retries: doubling, capped."""
    settings = get_worker_settings()
    return float(min(settings.retry_backoff_s * 2**retries, settings.retry_backoff_max_s))


def retry_or_give_up(
    attempt: int,
    what: str,
    exc: Exception,
    retry: Callable[[float], None],
    give_up: Callable[[Exception], None],
) -> None:
    """The one retry shape: ``retry(countdown)`` with exponential backoff while ``attempt`` (the row's
    delivery count, this one included) is within the budget, else ``give_up()`` records the failure."""
    retries = max(attempt - 1, 0)
    if retries < get_worker_settings().max_retries:
        log.warning("%s failed (attempt %d), retrying: %r", what, attempt, exc)
        retry(backoff_s(retries))
        return
    log.error("%s failed for good after %d attempts: %r", what, attempt, exc)
    give_up(exc)


def stored_image(claim: pipeline.AnalysisClaim) -> Image.Image:
    settings = get_settings()
    return decode_image(blob_store(settings.blob_dir).get(claim.blob_key), settings.fetch.max_pixels)


def store_files(claim: pipeline.AnalysisClaim, kind: str, files: dict[str, bytes]) -> dict[str, str]:
    """Pictures a model made for this image, in the blob store under
    ``<kind>/<model>/<version>/<image sha256>/<name>``; returns their keys by name."""
    store = blob_store(get_settings().blob_dir)
    sha256 = claim.blob_key.rsplit("/", 1)[-1]
    keys = {}
    for name, data in files.items():
        keys[name] = f"{kind}/{claim.model_name}/{claim.model_version}/{sha256}/{name}"
        store.put(keys[name], data)
    return keys

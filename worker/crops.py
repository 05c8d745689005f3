"""The garment-crop hop, in one place: a detecting service's result is staged in Postgres with its
garments, its crops go to the crops service's queue (the classifier), whose worker classifies them in
one batch and completes the result. Both halves run in worker processes; the state is in ``db.pipeline``
(``stage_analysis``, ``staged_analysis``, ``complete_analysis``)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from common.outputs import GarmentClassification
from db import pipeline
from db.session import transaction
from services.registry import get_spec
from worker import broker, monitoring
from worker.celery_app import CROPS_TASK, app
from worker.serving import (
    is_infrastructure_error,
    requeue_on_infrastructure_error,
    retry_or_give_up,
    served_model,
    served_service,
    service_availability,
    stored_image,
)
from worker.settings import get_worker_settings

log = logging.getLogger(__name__)


def crops_service(model_name: str, output: dict[str, Any]) -> str | None:
    """The service that classifies this output's garment crops, when it has garments and one is up.

    An unavailable crops service is recorded in the output (``garment_classification.skipped``).
    """
    crops_to = get_spec(model_name).crops_to
    if crops_to is None or not output.get("garments") or not get_worker_settings().classify_crops:
        return None
    availability = service_availability(crops_to)[crops_to]
    if not availability.available:
        skipped = GarmentClassification(model=crops_to, skipped=availability.reason)
        output["garment_classification"] = skipped.dump()
        return None
    return crops_to


def stage_for_crops(
    claim: pipeline.AnalysisClaim,
    output: dict[str, Any],
    crops_to: str,
    *,
    batch_size: int,
    inference_ms: float,
) -> None:
    """Write the detections, leave the result pending, queue its crops to ``crops_to``'s workers."""
    with transaction() as session:
        staged = pipeline.stage_analysis(
            session, claim, output=output, batch_size=batch_size, inference_ms=inference_ms
        )
    if staged:
        broker.classify_crops(claim.result_id, claim.blob_key, crops_to)


@app.task(name=CROPS_TASK)
def crops_task(result_id: str, blob_key: str) -> None:
    """Classify each garment of a staged result (its crop, by its box), then complete the result.

    Runs in the crops service's worker (the classifier): all of an image's crops in one batch.
    """
    with requeue_on_infrastructure_error(f"garment crops of {result_id}"):
        _classify_crops(uuid.UUID(result_id), blob_key)


def _classify_crops(result_id: uuid.UUID, blob_key: str) -> None:
    with transaction() as session:
        staged = pipeline.staged_analysis(session, result_id, blob_key)
    if staged is None:
        return  # finished already (a redelivery), or re-claimed by its own service
    claim, output = staged
    try:
        model = served_model()
        image = stored_image(claim)
        garments = output["garments"]
        started = time.perf_counter()
        with monitoring.predict_call(model.name, len(garments)):
            predictions = model.predict_crops(image, [garment["box"] for garment in garments])
        ms = (time.perf_counter() - started) * 1000.0
    except Exception as exc:  # retried, then recorded as the result's failure
        if is_infrastructure_error(exc):
            raise

        def give_up(error: Exception) -> None:
            with transaction() as session:
                pipeline.complete_analysis(session, claim, output=None, error=f"garment crops: {error!r}")

        retry_or_give_up(
            claim.attempts,
            f"garment crops of {result_id}",
            exc,
            lambda countdown: broker.classify_crops(
                claim.result_id, claim.blob_key, served_service(), countdown=countdown
            ),
            give_up,
        )
        return
    output["garments"] = [
        {**garment, "classification": prediction.output}
        for garment, prediction in zip(garments, predictions, strict=True)
    ]
    output["garment_classification"] = GarmentClassification(
        model=model.name, version=model.version, crops=len(predictions), inference_ms=round(ms, 2)
    ).dump()
    with transaction() as session:
        pipeline.complete_analysis(session, claim, output=output)

"""Part (a): the CPU the pipeline spends per image beyond the analysis itself.

One job of N URLs, ``models=["properties"]``, runs through the real stack (submitted the way
``atelier analyze`` does: ``worker.broker.submit_job``: create the rows, commit, publish the dispatch); every
process of the pipeline is metered. Then the same bytes go through ``decode_image`` +
``PropertiesModel.predict`` in this process: the work the properties worker does, without the pipeline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier.stack import Stack
from bench.cpu import MAIN_THREAD, OTHER_THREADS, CpuMeter, CpuSeconds, spent
from common.images import decode_image
from common.settings import get_settings
from db.session import session_factory
from services.properties.model import PropertiesModel
from synthetic.imageserver import ImageServer

MODELS = ["properties"]
# fetch + dispatch on the orchestrator, then the properties analysis
HOPS_PER_IMAGE = 2
TARGET_MS_PER_HOP = 10.0
# CPU per image of real models, batch 1: Keras VGG19 (measured) and Detectron2 R50-FPN
REFERENCE_MODELS_MS = {"Keras VGG19": 90.0, "Detectron2 R50-FPN": 430.0}
JOB_TIMEOUT_S = 600.0
POLL_S = 0.1


@dataclass(frozen=True)
class PipelineRun:
    images: int
    wall_s: float
    cpu_s: CpuSeconds  # per component; OTHER_THREADS is the in-process image server
    predict_wall_ms: float  # mean wall time of predict() inside the properties worker


@dataclass(frozen=True)
class DirectRun:
    images: int
    wall_s: float
    cpu_s: float  # decode_image + predict
    decode_cpu_s: float  # decode_image alone


def serve_images(server: ImageServer, images: Sequence[bytes], prefix: str = "garment") -> list[str]:
    """Publish the images on the local image server; returns their URLs, in order."""
    urls = []
    for i, data in enumerate(images):
        server.routes[f"/{prefix}-{i}.jpg"] = (200, {"Content-Type": "image/jpeg"}, data)
        urls.append(server.url(f"/{prefix}-{i}.jpg"))
    return urls


def run_pipeline(home: Path, warmup: list[str], urls: list[str], meter: CpuMeter) -> PipelineRun:
    """Start the default workers, run a warm-up job, then meter one job of ``urls``."""
    with Stack(home) as stack:
        _check_done(*_run_job(stack, warmup), len(warmup))
        before, started = meter.snapshot(), time.perf_counter()
        job_id, counts = _run_job(stack, urls)
        wall_s, after = time.perf_counter() - started, meter.snapshot()
    _check_done(job_id, counts, len(urls))
    return PipelineRun(len(urls), wall_s, spent(before, after), _mean_predict_ms(job_id))


def _run_job(stack: Stack, urls: list[str], models: list[str] = MODELS) -> tuple[uuid.UUID, dict[str, int]]:
    """Submit as ``atelier analyze`` does (``submit_job``: rows, commit, publish) and wait."""
    from common.schemas import ItemIn
    from db import jobs
    from worker.broker import submit_job

    with session_factory()() as session:
        created = submit_job(session, items=[ItemIn(url=u) for u in urls], models=models)
    _wait_finished(stack, created.job_id)
    with session_factory()() as session:
        view = jobs.job_view(session, created.job_id, items_limit=0)
    assert view is not None
    return created.job_id, {str(state): count for state, count in view.counts.items()}


def _wait_finished(stack: Stack, job_id: uuid.UUID) -> None:
    """Poll the job's ``finished_at`` alone: one indexed read, so the polling barely shows in the meter."""
    from db import jobs

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        with session_factory()() as session:
            if jobs.finished_at(session, job_id) is not None:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {JOB_TIMEOUT_S:.0f} s")
        stack.check_processes()
        time.sleep(POLL_S)


def _check_done(job_id: uuid.UUID, counts: dict[str, int], expected: int) -> None:
    if counts.get("done") != expected:
        raise RuntimeError(f"expected {expected} items of job {job_id} done, it ended with {counts}")


def _mean_predict_ms(job_id: uuid.UUID) -> float:
    from db import jobs

    with session_factory()() as session:
        mean = jobs.mean_inference_ms(session, job_id)
    return float("nan") if mean is None else mean


def run_direct(images: Sequence[bytes], warmup: Sequence[bytes]) -> DirectRun:
    """The properties worker's work on the same bytes, in this process, without the pipeline."""
    max_pixels = get_settings().fetch.max_pixels
    model = PropertiesModel()
    model.load()
    for data in warmup:
        model.predict([decode_image(data, max_pixels)])
    cpu_started, started = time.process_time(), time.perf_counter()
    for data in images:
        model.predict([decode_image(data, max_pixels)])
    cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - started
    cpu_started = time.process_time()
    for data in images:
        decode_image(data, max_pixels)
    return DirectRun(len(images), wall_s, cpu_s, time.process_time() - cpu_started)


def summarise(pipeline: PipelineRun, direct: DirectRun) -> dict[str, Any]:
    """The derived numbers of part (a), all in ms of CPU per image unless named otherwise."""
    n = pipeline.images
    per_image = {name: 1000.0 * s / n for name, s in sorted(pipeline.cpu_s.items())}
    image_server_ms = per_image.pop(OTHER_THREADS)  # stands in for remote hosts: not pipeline cost
    per_image["submitter"] = per_image.pop(MAIN_THREAD)
    pipeline_ms = sum(per_image.values())
    direct_ms = 1000.0 * direct.cpu_s / direct.images
    cost_ms = pipeline_ms - direct_ms
    per_hop_ms = cost_ms / HOPS_PER_IMAGE
    return {
        "images": n,
        "pipeline_cpu_ms_per_image": pipeline_ms,
        "pipeline_cpu_ms_per_image_by_process": per_image,
        "image_server_cpu_ms_per_image_excluded": image_server_ms,
        "direct_cpu_ms_per_image": direct_ms,
        "direct_decode_cpu_ms_per_image": 1000.0 * direct.decode_cpu_s / direct.images,
        "orchestration_cpu_ms_per_image": cost_ms,
        "hops_per_image": HOPS_PER_IMAGE,
        "orchestration_cpu_ms_per_hop": per_hop_ms,
        "target_ms_per_hop": TARGET_MS_PER_HOP,
        "ratio_to_target": per_hop_ms / TARGET_MS_PER_HOP,
        "pipeline_images_per_s": n / pipeline.wall_s,
        "direct_images_per_s": direct.images / direct.wall_s,
        "pipeline_wall_s": pipeline.wall_s,
        "direct_wall_s": direct.wall_s,
        # the properties worker is one solo process: its images run one after another, so the pipeline's
        # wall time per image is that worker's time per image; predict() alone is what a model would take
        "pipeline_wall_ms_per_image": 1000.0 * pipeline.wall_s / n,
        "pipeline_predict_wall_ms_per_image": pipeline.predict_wall_ms,
        "direct_wall_ms_per_image": 1000.0 * direct.wall_s / direct.images,
        "kept_fraction_of_direct_throughput": {
            name: {"model_cpu_ms_per_image": m, "fraction": m / (m + per_hop_ms)}
            for name, m in REFERENCE_MODELS_MS.items()
        },
    }

"""The detector's speed, side by side in one run: the batched serving model against Detectron2's
``DefaultPredictor`` called per image, at test sizes 512 and 800 and batches 1, 2, 4; then through the
detector's Celery worker against the same work done directly.

    .venv-torch/bin/python -m bench.detector [--rounds R] [--images N] [--device cpu|cuda] [--json PATH]

Run it with the torch environment's interpreter. The network is the serving preset (Mask R-CNN R50-FPN,
13 DeepFashion2 classes) with random weights, written as a real model-repository version, so nothing is
downloaded. Random weights score every box alike, so each image is held to exactly ``DETECTIONS`` kept
detections (score threshold 0, ``TEST.DETECTIONS_PER_IMAGE``): the mask head then does the work of a
photo with that many garments. See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atelier.stack import DEFAULT_WORKERS, Stack, WorkerPlan
from bench import orchestration
from bench.pipeline import THREAD_VARIABLES, _interrupt, _progress, _table, emit
from bench.servers import bench_home, configure, embedded_servers
from bench.synthetic import garment_jpegs
from common.images import decode_image
from common.settings import get_settings
from services.artifacts import hash_files, write_manifest
from services.detector.categories import CATEGORIES
from services.detector.config import PRESETS, DetectorSettings
from services.detector.model import DetectorModel
from services.detector.train import make_cfg
from services.rcnn.config import CONFIG, WEIGHTS, RCNNManifest
from synthetic.imageserver import serve
from worker.settings import get_worker_settings

DEFAULT_JSON = Path(__file__).with_name("results") / "detector.json"
TEST_SIZES = (512, 800)
BATCH_SIZES = (1, 2, 4)
IMAGES_PER_ROUND = 4  # per test size, batch size and way; at least one call
DETECTIONS = 5  # kept per image: the garments of a typical photo
IMAGE_SIDE = 640  # generated photos, resized to each test size
WARMUP_IMAGES = 4


def main(argv: list[str] | None = None) -> None:
    run_model_bench(_parse(argv), _measure, format_report)


def run_model_bench(
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> None:
    """Measure, then report with the machine: loading the model sets torch's threads, which it names."""
    signal.signal(signal.SIGTERM, _interrupt)
    measured = measure(args)
    emit(args, _machine(args), measured, report)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    return parse_model_bench(argv, "bench.detector", __doc__, images=24, default_json=DEFAULT_JSON)


def parse_model_bench(
    argv: list[str] | None, module: str, doc: str | None, *, images: int, default_json: Path
) -> argparse.Namespace:
    """The options of the Detectron2 services' benchmarks."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (1)")
    parser.add_argument("--images", type=int, default=images, help="images in each worker job (2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-worker", action="store_true", help="only (1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument("--json", type=Path, default=default_json, help="where to write the results")
    args = parser.parse_args(argv)
    if args.images < 1 or args.rounds < 1:
        parser.error(f"--images and --rounds must be at least 1, not {args.images} and {args.rounds}")
    return args


def _machine(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    _progress(f"generating {WARMUP_IMAGES + args.images} JPEGs of {IMAGE_SIDE} px")
    jpegs = garment_jpegs(WARMUP_IMAGES + args.images, seed=args.seed, size=IMAGE_SIDE)
    max_pixels = get_settings().fetch.max_pixels
    images = [decode_image(data, max_pixels) for data in jpegs]
    with bench_home() as home:
        _progress("writing an R50-FPN version with random weights")
        version_dir = write_artifact(home / "models")
        _progress(f"(1) batched GeneralizedRCNN against DefaultPredictor, {args.rounds} rounds")
        alone = run_alone(version_dir, images[:IMAGES_PER_ROUND], args.rounds, args.device)
        worker = None if args.skip_worker else run_worker(home, version_dir, jpegs, images, args.device)
    return {"alone": alone, "worker": worker, "detections_per_image": DETECTIONS}


def write_artifact(repository: Path) -> Path:
    """``<repository>/detector/1``: the files ``train._publish`` writes, less the evaluation."""
    version_dir = repository / "detector" / "1"
    version_dir.mkdir(parents=True)
    cfg = make_cfg(PRESETS["r50-fpn"], list(CATEGORIES), "train", "test", version_dir)
    return save_random_version(version_dir, cfg, {"classes": list(CATEGORIES)})


def save_random_version(version_dir: Path, cfg: Any, described: dict[str, Any]) -> Path:
    """``cfg``'s network, randomly initialised, as a version: weights, config, manifest with
    ``described``. Every image keeps ``DETECTIONS`` instances (score threshold 0)."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = DETECTIONS
    cfg.MODEL.DEVICE = "cpu"
    state = build_model(cfg).state_dict()
    # random box deltas make most boxes degenerate (then dropped); zero ones keep the anchors' boxes,
    # so every image keeps its DETECTIONS instances and the mask head always does the same work
    for name in state:
        if name.startswith(
            ("proposal_generator.rpn_head.anchor_deltas.", "roi_heads.box_predictor.bbox_pred.")
        ):
            state[name].zero_()
    torch.save({"model": state}, version_dir / WEIGHTS)
    cfg.MODEL.WEIGHTS = WEIGHTS
    (version_dir / CONFIG).write_text(cfg.dump())
    manifest = {
        "name": version_dir.parent.name,
        "framework": "detectron2",
        "torch_version": torch.__version__,
        **described,
        "score_threshold": 0.0,
        "files": hash_files(version_dir, (WEIGHTS, CONFIG)),
    }
    # the segmenter's own fields (attributes, ...) ride along as the manifest's extra keys
    write_manifest(version_dir, RCNNManifest.model_validate(manifest))
    return version_dir


def _serving(version_dir: Path, size: int, device: str) -> DetectorModel:
    model = DetectorModel(version_dir, DetectorSettings(test_size=size, max_size=1333, device=device))
    model.load()
    return model


def _default_predictor(model: DetectorModel) -> Callable[[np.ndarray], Any]:
    from detectron2.engine import DefaultPredictor

    assert model.cfg is not None and model.resize is not None
    cfg = model.cfg.clone()
    cfg.INPUT.MIN_SIZE_TEST = model.resize.short_edge_length[0]
    cfg.MODEL.WEIGHTS = str(model.version_dir / WEIGHTS)
    return DefaultPredictor(cfg)  # type: ignore[no-any-return]


def run_alone(version_dir: Path, images: Sequence[Image.Image], rounds: int, device: str) -> dict[str, Any]:
    """Per test size: ``DetectorModel.predict`` on lists of 1, 2, 4 images (one forward each), and
    ``DefaultPredictor`` on each image alone (BGR arrays, its own resize), interleaved round by round.
    Both include the resize, the forward pass and moving outputs to the CPU; ``predict`` also encodes
    the masks as RLE."""
    bgr = [np.asarray(image)[:, :, ::-1] for image in images]
    results: dict[str, Any] = {}
    for size in TEST_SIZES:
        model = _serving(version_dir, size, device)
        predictor = _default_predictor(model)
        ways: dict[str, Callable[[], None]] = {
            f"batch {b}": _batched(model, images, b) for b in BATCH_SIZES
        } | {"DefaultPredictor": _per_image(predictor, bgr)}
        for way in ways.values():
            way()  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                seconds[name].append(_timed(way, device))
        per_image = {name: statistics.median(s) / len(images) for name, s in seconds.items()}
        results[str(size)] = {
            name: {
                "images_per_s": 1.0 / per_image[name],
                "ms_per_image": 1000.0 * per_image[name],
                "ratio_to_default_predictor": per_image["DefaultPredictor"] / per_image[name],
            }
            for name in ways
        }
        garments = model.predict(list(images[:1]))[0].output["garments"]
        assert len(garments) == DETECTIONS, f"{len(garments)} detections, not {DETECTIONS}"
    return results


def _batched(model: DetectorModel, images: Sequence[Image.Image], batch: int) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(images), batch):
            model.predict(list(images[start : start + batch]))

    return run


def _per_image(predictor: Callable[[np.ndarray], Any], bgr: Sequence[np.ndarray]) -> Callable[[], None]:
    def run() -> None:
        for image in bgr:
            predictor(image)

    return run


def _timed(call: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_worker(
    home: Path, version_dir: Path, jpegs: Sequence[bytes], images: Sequence[Image.Image], device: str
) -> dict[str, Any]:
    """A job through the orchestrator and the detector worker (test size 512, the worker's micro-batch),
    between two halves of the same work done directly (A-B-A)."""
    batch = get_worker_settings().max_batch
    measured = images[WARMUP_IMAGES:]
    split = batch * math.ceil(len(measured) / batch / 2)
    model = _serving(version_dir, 512, device)
    model.predict(list(images[:batch]))
    _progress(f"(2) direct, first half: decode_image + DetectorModel.predict, batch {batch}")
    first = _direct(model, jpegs[WARMUP_IMAGES:][:split], batch, device)
    env = {
        "ATELIER_DETECTOR_TEST_SIZE": "512",
        "ATELIER_DETECTOR_DEVICE": device,
        "ATELIER_WORKER_CLASSIFY_CROPS": "false",
    }
    [wall_s] = worker_seconds(home, "detector", [(env, jpegs)])
    _progress("(2) direct, second half")
    second = _direct(model, jpegs[WARMUP_IMAGES:][split:], batch, device)
    direct_s = first + second
    return {
        "images": len(measured),
        "batch": batch,
        "pipeline_images_per_s": len(measured) / wall_s,
        "direct_images_per_s": len(measured) / direct_s,
        "direct_images_per_s_before_after": [
            len(measured[:split]) / first,
            len(measured[split:]) / second if second else None,
        ],
        "ratio_pipeline_to_direct": direct_s / wall_s,
    }


def worker_seconds(
    home: Path, service: str, runs: Sequence[tuple[dict[str, str], Sequence[bytes]]]
) -> list[float]:
    """For each (environment, JPEGs) run: seconds the job of ``jpegs[WARMUP_IMAGES:]`` takes through
    the orchestrator and a fresh ``service`` worker in this interpreter, after a warm-up job of the
    first images. Give each run its own images: results are reused by content. One embedded
    PostgreSQL and Valkey serve them all (this process's Celery app keeps the broker it first saw)."""
    seconds: list[float] = []
    with serve() as image_server, embedded_servers(home) as servers:
        configure(home, servers, allow_hosts=[image_server.authority])
        for env, jpegs in runs:
            urls = orchestration.serve_images(image_server, jpegs, prefix=f"run{len(seconds)}")
            measured = len(jpegs) - WARMUP_IMAGES
            os.environ.update(env)
            get_settings.cache_clear()
            get_worker_settings.cache_clear()
            _progress(f"pipeline {env}: warm-up job of {WARMUP_IMAGES}, then the measured job of {measured}")
            workers = (DEFAULT_WORKERS[0], WorkerPlan(service, python=sys.executable))
            with Stack(home / f"stack-{len(seconds)}", workers=workers) as stack:
                warmup = orchestration._run_job(stack, urls[:WARMUP_IMAGES], [service])
                orchestration._check_done(*warmup, WARMUP_IMAGES)
                started = time.perf_counter()
                job_id, counts = orchestration._run_job(stack, urls[WARMUP_IMAGES:], [service])
                seconds.append(time.perf_counter() - started)
            orchestration._check_done(job_id, counts, measured)
    return seconds


def _direct(model: DetectorModel, jpegs: Sequence[bytes], batch: int, device: str) -> float:
    """What the worker computes per micro-batch: decode, one ``predict``; seconds in all."""
    max_pixels = get_settings().fetch.max_pixels

    def run() -> None:
        for start in range(0, len(jpegs), batch):
            model.predict([decode_image(data, max_pixels) for data in jpegs[start : start + batch]])

    return _timed(run, device)


def format_report(result: dict[str, Any]) -> str:
    m = result["machine"]
    head = (
        f"{m['cpu_cores']} CPU cores, {m['platform']}, Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads) on {m['device']}; {result['detections_per_image']} detections/image"
    )
    lines = [head, "", "(1) Mask R-CNN R50-FPN, images per second (ratio to DefaultPredictor per image)"]
    rows = []
    for size, ways in result["alone"].items():
        for name, r in ways.items():
            ratio = f"{r['ratio_to_default_predictor']:.2f}x"
            rows.append([size, name, f"{r['images_per_s']:.2f}", f"{r['ms_per_image']:.0f}", ratio])
    lines += _table(["test size", "way", "images/s", "ms/image", "vs DefaultPredictor"], rows)
    w = result["worker"]
    if w is not None:
        lines += [
            "",
            f"(2) through the detector worker, test size 512, micro-batch {w['batch']}: "
            f"{w['pipeline_images_per_s']:.2f} images/s against {w['direct_images_per_s']:.2f} directly "
            f"(before/after {', '.join(f'{v:.2f}' for v in w['direct_images_per_s_before_after'] if v)}): "
            f"{w['ratio_pipeline_to_direct']:.2f} of direct throughput",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

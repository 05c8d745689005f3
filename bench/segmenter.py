"""The segmenter's speed: what its post-processing (cut-outs, colours, region map, overlay, their PNG
encoding) costs as a share of ``predict``, at batch 1 and 4; and images per second through its Celery
worker with micro-batches of 1 and 4. One run, side by side.

    .venv-torch/bin/python -m bench.segmenter [--rounds R] [--images N] [--device cpu|cuda] [--json PATH]

The network is the r50-fpn preset with the attribute head at Fashionpedia's size (46 categories, 294
attributes), random weights, written as a real version; as in ``bench.detector`` every image keeps
exactly ``DETECTIONS`` garments. See bench/README.md.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from bench.detector import (
    DETECTIONS,
    IMAGE_SIDE,
    WARMUP_IMAGES,
    _timed,
    parse_model_bench,
    run_model_bench,
    save_random_version,
    worker_seconds,
)
from bench.pipeline import _progress, _table
from bench.servers import bench_home
from bench.synthetic import garment_jpegs
from common.images import decode_image
from common.settings import get_settings
from services.segmenter import model as segmenter_model
from services.segmenter.config import PRESETS, SegmenterSettings
from services.segmenter.dataset import Taxonomy
from services.segmenter.model import SegmenterModel
from services.segmenter.train import segmenter_cfg

DEFAULT_JSON = Path(__file__).with_name("results") / "segmenter.json"
TEST_SIZE = 512
BATCH_SIZES = (1, 4)
IMAGES_PER_ROUND = 4
CLASSES, ATTRIBUTES = 46, 294  # Fashionpedia's
SUPERCATEGORIES = ("upperbody", "lowerbody", "wholebody", "garment parts")
# the post-processing steps, timed by wrapping these module functions
STEPS = ("garment_colours", "cutout", "region_map", "overlay", "_png")


def main(argv: list[str] | None = None) -> None:
    run_model_bench(_parse(argv), _measure, format_report)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    return parse_model_bench(argv, "bench.segmenter", __doc__, images=16, default_json=DEFAULT_JSON)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    per_run = WARMUP_IMAGES + args.images
    jpegs = garment_jpegs(per_run * (1 + len(BATCH_SIZES)), seed=args.seed, size=IMAGE_SIDE)
    max_pixels = get_settings().fetch.max_pixels
    images = [decode_image(data, max_pixels) for data in jpegs]
    with bench_home() as home:
        _progress("writing an R50-FPN attribute version with random weights")
        version_dir = write_artifact(home / "models")
        model = SegmenterModel(version_dir, SegmenterSettings(test_size=TEST_SIZE, device=args.device))
        model.load()
        _progress(f"(1) predict and its post-processing, batches {BATCH_SIZES}, {args.rounds} rounds")
        alone = {
            str(b): run_alone(model, images[:IMAGES_PER_ROUND], b, args.rounds, args.device)
            for b in BATCH_SIZES
        }
        _progress("(2) the attribute head's texture descriptor: predict at batch 1 with and without it")
        baseline = write_artifact(home / "models", attribute_convs=0, version="2")
        models = {"with": model, "without": SegmenterModel(baseline, model.settings)}
        models["without"].load()
        texture = interleaved(models, images[:IMAGES_PER_ROUND], args.rounds, args.device)
        worker = None
        if not args.skip_worker:
            _progress(f"(3) through the worker, micro-batches {BATCH_SIZES}")
            env = {"ATELIER_SEGMENTER_TEST_SIZE": str(TEST_SIZE), "ATELIER_SEGMENTER_DEVICE": args.device}
            runs = [
                ({**env, "ATELIER_WORKER_MAX_BATCH": str(b)}, jpegs[per_run * (i + 1) : per_run * (i + 2)])
                for i, b in enumerate(BATCH_SIZES)
            ]
            seconds = worker_seconds(home, "segmenter", runs)
            pairs = zip(BATCH_SIZES, seconds, strict=True)
            worker = {str(b): {"seconds": t, "images_per_s": args.images / t} for b, t in pairs}
    return {
        "alone": alone,
        "texture": texture,
        "worker": worker,
        "detections_per_image": DETECTIONS,
        "test_size": TEST_SIZE,
    }


def write_artifact(repository: Path, attribute_convs: int | None = None, version: str = "1") -> Path:
    """``<repository>/segmenter/<version>``: weights, config and the manifest ``train`` writes, less
    metrics; the r50-fpn preset, its texture descriptor's convolutions replaced by ``attribute_convs``."""
    version_dir = repository / "segmenter" / version
    version_dir.mkdir(parents=True)
    taxonomy = Taxonomy(
        [f"category{i}" for i in range(CLASSES)],
        [SUPERCATEGORIES[i % len(SUPERCATEGORIES)] for i in range(CLASSES)],
        [f"attribute{i}" for i in range(ATTRIBUTES)],
        list(range(ATTRIBUTES)),
    )
    preset = PRESETS["r50-fpn"]
    if attribute_convs is not None:
        preset = preset.model_copy(update={"attribute_convs": attribute_convs})
    cfg = segmenter_cfg(preset, taxonomy, "train", "test", version_dir)
    described = {
        "classes": taxonomy.classes,
        "supercategories": taxonomy.supercategories,
        "attributes": taxonomy.attributes,
        "attribute_ids": taxonomy.attribute_ids,
        "attribute_threshold": 0.5,
    }
    return save_random_version(version_dir, cfg, described)


def interleaved(
    models: dict[str, SegmenterModel], images: Sequence[Image.Image], rounds: int, device: str
) -> dict[str, float]:
    """ms per image of each model's ``predict`` at batch 1, their rounds interleaved so that the machine's
    noise falls on all of them alike."""
    spent = dict.fromkeys(models, 0.0)
    for model in models.values():
        model.predict(list(images[:1]))  # warm-up
    for _ in range(rounds):
        for name, model in models.items():
            spent[name] += _timed(partial(_one_by_one, model, images), device)
    return {name: 1000 * seconds / (rounds * len(images)) for name, seconds in spent.items()}


def _one_by_one(model: SegmenterModel, images: Sequence[Image.Image]) -> None:
    for image in images:
        model.predict([image])


@contextmanager
def timed_steps() -> Iterator[dict[str, float]]:
    """Seconds spent in each post-processing function of ``services.segmenter.model`` while open."""
    spent: dict[str, float] = defaultdict(float)
    originals = {name: getattr(segmenter_model, name) for name in STEPS}

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started

        return timed

    for name, function in originals.items():
        setattr(segmenter_model, name, wrap(name, function))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(segmenter_model, name, function)


def run_alone(
    model: SegmenterModel, images: Sequence[Image.Image], batch: int, rounds: int, device: str
) -> dict[str, Any]:
    """``predict`` in calls of ``batch`` images; the post-processing steps timed inside it."""

    def run() -> None:
        for start in range(0, len(images), batch):
            model.predict(list(images[start : start + batch]))

    run()  # warm-up
    total = 0.0
    with timed_steps() as spent:
        for _ in range(rounds):
            total += _timed(run, device)
    n = rounds * len(images)
    # the steps do not nest: _png is called on what cutout, region_map and overlay return
    post = sum(spent.values())
    return {
        "images_per_s": n / total,
        "ms_per_image": 1000 * total / n,
        "postprocess_ms_per_image": 1000 * post / n,
        "postprocess_share": post / total,
        "steps_ms_per_image": {name: 1000 * spent[name] / n for name in STEPS},
    }


def format_report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"{m['cpu_cores']} CPU cores, torch {m['torch']} ({m['torch_threads']} threads) on {m['device']}; "
        f"test size {result['test_size']}, {result['detections_per_image']} garments/image",
        "",
        "(1) predict, and its post-processing (cut-outs, colours, region map, overlay, PNG encoding)",
    ]
    rows = [
        [
            batch,
            f"{r['images_per_s']:.2f}",
            f"{r['ms_per_image']:.0f}",
            f"{r['postprocess_ms_per_image']:.0f}",
            f"{100 * r['postprocess_share']:.1f} %",
            ", ".join(f"{k} {v:.0f}" for k, v in r["steps_ms_per_image"].items()),
        ]
        for batch, r in result["alone"].items()
    ]
    lines += _table(["batch", "images/s", "ms/image", "post ms", "post share", "steps (ms/image)"], rows)
    t = result["texture"]
    lines += [
        "",
        f"(2) texture descriptor: {t['with']:.0f} ms/image with, {t['without']:.0f} without "
        f"({t['with'] / t['without']:.3f}x)",
    ]
    if result["worker"]:
        lines += ["", "(3) through the segmenter worker"]
        rows = [[b, f"{w['images_per_s']:.2f}", f"{w['seconds']:.1f}"] for b, w in result["worker"].items()]
        lines += _table(["micro-batch", "images/s", "job seconds"], rows)
    return "\n".join(lines)


if __name__ == "__main__":
    main()

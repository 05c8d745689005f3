"""The classifier's speed, measured side by side in one run: alone, against the seed project's three
networks, and through its Celery worker.

    .venv-classifier/bin/python -m bench.classifier [--images N] [--rounds R] [--seed S] [--json PATH]

Run it with the classifier's interpreter: TensorFlow lives only in .venv-classifier. The network is the
project's own (``build_network``, Fashion Product Images head sizes) with random weights, written as a
real model-repository version, so nothing is downloaded; weights do not change the timings. Every
number is a ratio or a per-image cost taken in this run. See bench/README.md.
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
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from sqlalchemy import text

from atelier.stack import DEFAULT_WORKERS, Stack, WorkerPlan
from bench import orchestration
from bench.cpu import MAIN_THREAD, OTHER_THREADS, CpuMeter, CpuSeconds, spent
from bench.pipeline import THREAD_VARIABLES, _interrupt, _progress, _table, emit
from bench.servers import bench_home, configure, embedded_servers
from bench.synthetic import garment_jpegs
from common.images import decode_image
from common.settings import get_settings
from db.session import get_engine
from services.classifier.config import FASHION_HEADS, TrainConfig
from services.classifier.preprocess import Box, crop, preprocess, preprocess_batch
from synthetic.garments import draw
from synthetic.imageserver import serve
from worker.settings import get_worker_settings

if TYPE_CHECKING:
    import keras

    from services.classifier.model import ClassifierModel

# TensorFlow reads this when it loads (lazily, in the functions below, and in the classifier worker)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_JSON = Path(__file__).with_name("results") / "classifier.json"
# the serving defaults: 224x224 input, 512-d embedding, average pooling; random weights
CONFIG = TrainConfig(weights=None)
# label counts of Fashion Product Images (styles.csv, every class kept)
HEAD_SIZES = dict(zip(FASHION_HEADS, (5, 7, 45, 143, 46, 4, 8), strict=True))
# the seed project: one network per attribute group, each with its own VGG19 backbone
SEED_GROUPS = (
    ("gender", "masterCategory"),
    ("subCategory", "articleType"),
    ("baseColour", "season", "usage"),
)
# a flat lay on a 512x512 canvas: (article, colour, top-left corner of its 256x256 tile)
FLAT_LAY = (("Tshirts", "Blue", (0, 0)), ("Trousers", "Black", (256, 0)), ("Handbags", "Red", (128, 256)))
CANVAS, TILE, BOX_INSET = 512, 256, 24
BATCH_SIZES = (1, 8, 32)
IMAGES_PER_ROUND = 8  # per batch size and round; at least one call
WARMUP_IMAGES = 12  # the worker's first job: model load and the first two traced batch shapes
TARGET_SEED_RATIO = 3.0
MODELS = ["classifier"]
RESULTS = text(
    """
    SELECT r.batch_size, r.inference_ms,
           extract(epoch FROM r.started_at - j.created_at) AS started_s,
           extract(epoch FROM r.finished_at - j.created_at) AS finished_s
    FROM model_results r
    JOIN items i ON i.id = r.claimed_by_item
    JOIN jobs j ON j.id = i.job_id
    WHERE i.job_id = :job_id AND r.model_name = :model
    """
)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    # a SIGTERM unwinds like Ctrl-C, so the context managers below stop every process they started
    signal.signal(signal.SIGTERM, _interrupt)
    emit(args, _machine(), _measure(args), format_report)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images in the worker's job (3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (1) and (2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args(argv)
    if args.images < 1 or args.rounds < 1:
        parser.error(f"--images and --rounds must be at least 1, not {args.images} and {args.rounds}")
    return args


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    _progress(f"generating {WARMUP_IMAGES + args.images} JPEGs")
    jpegs = garment_jpegs(WARMUP_IMAGES + args.images, seed=args.seed)
    with bench_home() as home:
        _progress("writing a classifier version with random weights, loading it")
        model = load_model(write_artifact(home / "models"))
        _progress(f"(1) classifier alone: batch sizes {BATCH_SIZES}, {args.rounds} rounds")
        alone = run_alone(model, jpegs, args.rounds)
        _progress(f"(2) whole image + 3 crops: seed-style 3 x VGG19 against one pass, {args.rounds} rounds")
        seed = run_seed_comparison(model, args.rounds)
        _progress(f"(3) through the worker: {args.images} images, and the same directly")
        worker = run_worker(home, model, jpegs)
    return {"alone": alone, "seed_comparison": seed, "worker": worker}


def _machine() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        # 0 means TensorFlow's default: one thread per core
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


# --- the artifact -------------------------------------------------------------------------------------


def network(heads: Mapping[str, Sequence[str]]) -> keras.Model:
    """The project's network for ``heads`` at the serving input size, randomly initialised."""
    from services.classifier.model import build_network

    net, _, _ = build_network(
        heads, CONFIG.input_size, embedding_dim=CONFIG.embedding_dim, pooling=CONFIG.pooling
    )
    return net


def write_artifact(repository: Path) -> Path:
    """``<repository>/classifier/1``: the model file and the manifest ``train._publish`` writes, less the
    evaluation (random weights have nothing to report)."""
    import keras

    from services.artifacts import hash_files, write_manifest
    from services.classifier.config import MODEL_FILE
    from services.classifier.model import network_manifest

    keras.utils.set_random_seed(CONFIG.seed)
    heads = {head: [f"class{i}" for i in range(size)] for head, size in HEAD_SIZES.items()}
    version_dir = repository / "classifier" / "1"
    version_dir.mkdir(parents=True)
    network(heads).save(version_dir / MODEL_FILE)
    manifest = network_manifest(heads, CONFIG, hash_files(version_dir, (MODEL_FILE,)))
    write_manifest(version_dir, manifest)
    return version_dir


def load_model(version_dir: Path) -> ClassifierModel:
    """The version loaded the way the classifier worker loads it (manifest, sha256, head checks)."""
    from services.classifier.model import ClassifierModel

    model = ClassifierModel(version_dir)
    model.load()
    return model


# --- (1) the classifier alone -------------------------------------------------------------------------


@dataclass
class Tally:
    images: int = 0
    seconds: float = 0.0
    round_rates: list[float] = field(default_factory=list)  # images/s of each round

    def add(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds
        self.round_rates.append(images / seconds)


def run_alone(model: ClassifierModel, jpegs: Sequence[bytes], rounds: int) -> dict[str, Any]:
    """``predict_arrays`` on preprocessed images at each batch size, the sizes interleaved round by
    round; then decoding and preprocessing alone."""
    images = _decode_all(jpegs)
    arrays = preprocess_batch([images[i % len(images)] for i in range(max(BATCH_SIZES))], model.input_size)
    for size in BATCH_SIZES:
        model.predict_arrays(arrays[:size])  # warm-up: traces the function, creates the kernels
    tallies = {size: Tally() for size in BATCH_SIZES}
    for _ in range(rounds):
        for size, tally in tallies.items():
            calls = max(1, IMAGES_PER_ROUND // size)
            seconds = _timed(partial(_predict_calls, model, arrays, size, calls))
            tally.add(calls * size, seconds)
    max_pixels = get_settings().fetch.max_pixels
    return {
        "batch_sizes": {str(size): _rates(tally, tallies[1]) for size, tally in tallies.items()},
        "decode_ms_per_image": _ms_per_item(lambda data: decode_image(data, max_pixels), jpegs),
        "preprocess_ms_per_image": _ms_per_item(lambda image: preprocess(image, model.input_size), images),
        "image_size": list(images[0].size),
    }


def _decode_all(jpegs: Sequence[bytes]) -> list[Image.Image]:
    max_pixels = get_settings().fetch.max_pixels
    return [decode_image(data, max_pixels) for data in jpegs]


def _predict_calls(model: ClassifierModel, arrays: NDArray[np.float32], size: int, calls: int) -> None:
    for i in range(calls):
        model.predict_arrays(arrays[i * size : (i + 1) * size])


def _rates(tally: Tally, single: Tally) -> dict[str, Any]:
    per_s = tally.images / tally.seconds
    return {
        "images": tally.images,
        "images_per_s": per_s,
        "ms_per_image": 1000.0 * tally.seconds / tally.images,
        "round_images_per_s": tally.round_rates,
        "ratio_to_batch_1": per_s / (single.images / single.seconds),
    }


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _ms_per_item(function: Callable[[Any], object], items: Sequence[Any]) -> float:
    return 1000.0 * _timed(lambda: [function(item) for item in items]) / len(items)


# --- (2) whole image + 3 crops against the seed project's three networks ------------------------------


def flat_lay() -> tuple[Image.Image, list[Box]]:
    """A 512x512 image of three drawn garments, and a box around each (what the detector would give)."""
    rng = np.random.default_rng(0)
    canvas = Image.new("RGB", (CANVAS, CANVAS), (238, 236, 232))
    boxes: list[Box] = []
    for article, colour, (left, top) in FLAT_LAY:
        canvas.paste(draw(article, colour, rng, size=TILE), (left, top))
        boxes.append((left + BOX_INSET, top + BOX_INSET, left + TILE - BOX_INSET, top + TILE - BOX_INSET))
    return canvas, boxes


def run_seed_comparison(model: ClassifierModel, rounds: int) -> dict[str, Any]:
    """Seed: each of the 4 images through each of 3 single-group VGG19s at batch 1 (12 forward passes).
    Ours: the 4 images as one batch through the multi-head network (1 forward pass). A/B alternated."""
    image, boxes = flat_lay()
    inputs = [image, *(crop(image, box, model.settings.crop_margin) for box in boxes)]
    seed_nets = [network({head: model.heads[head] for head in group}) for group in SEED_GROUPS]
    calls: dict[str, Callable[[], object]] = {
        "seed": lambda: _seed_workload(seed_nets, inputs, model.input_size),
        "ours": lambda: model.predict(inputs),
    }
    for call in calls.values():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))  # ABBA: a drift hits both alike
        for name in order:
            times[name].append(_timed(calls[name]))
    return _seed_summary(times, len(inputs), len(seed_nets))


def _seed_workload(nets: Sequence[keras.Model], inputs: Sequence[Image.Image], size: tuple[int, int]) -> None:
    for picture in inputs:
        batch = preprocess(picture, size)[np.newaxis]
        for net in nets:
            net.predict_on_batch(batch)


def _seed_summary(times: Mapping[str, list[float]], images: int, networks: int) -> dict[str, Any]:
    seed, ours = times["seed"], times["ours"]
    ratio = sum(seed) / sum(ours)
    return {
        "images_per_workload": images,
        "seed_forward_passes": images * networks,
        "ours_forward_passes": 1,
        "seed_s_per_workload": statistics.mean(seed),
        "ours_s_per_workload": statistics.mean(ours),
        "seed_s_rounds": seed,
        "ours_s_rounds": ours,
        "ratio": ratio,
        "round_ratios": [s / o for s, o in zip(seed, ours, strict=True)],
        "target_ratio": TARGET_SEED_RATIO,
        "meets_target": ratio >= TARGET_SEED_RATIO,
    }


# --- (3) through the worker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    batch_size: int
    inference_ms: float
    started_s: float  # since the job was created
    finished_s: float


@dataclass(frozen=True)
class WorkerRun:
    images: int
    wall_s: float
    cpu_s: CpuSeconds
    results: list[ResultRow]


@dataclass(frozen=True)
class DirectRun:
    images: int
    batch: int
    decode_s: float
    predict_s: float
    cpu_s: float

    def __add__(self, other: DirectRun) -> DirectRun:
        return DirectRun(
            self.images + other.images,
            self.batch,
            self.decode_s + other.decode_s,
            self.predict_s + other.predict_s,
            self.cpu_s + other.cpu_s,
        )


def run_worker(home: Path, model: ClassifierModel, jpegs: Sequence[bytes]) -> dict[str, Any]:
    """A job of the images through the orchestrator and the classifier worker; the same bytes through
    ``decode_image`` + ``ClassifierModel.predict`` in this process at the worker's max batch, half of
    them before the job and half after (A-B-A: a drift of the machine's load hits both sides alike)."""
    warmup, measured = jpegs[:WARMUP_IMAGES], jpegs[WARMUP_IMAGES:]
    batch = get_worker_settings().max_batch
    split = batch * math.ceil(len(measured) / batch / 2)
    _progress(f"(3) direct, first half: decode_image + ClassifierModel.predict, batch {batch}")
    model.predict(_decode_all(warmup[:batch]))
    first = _run_direct(model, measured[:split], batch)
    with serve() as image_server, embedded_servers(home) as servers:
        configure(home, servers, allow_hosts=[image_server.authority])
        urls = orchestration.serve_images(image_server, jpegs)
        meter = CpuMeter(servers.postmaster_pid)
        _progress(f"(3) pipeline: warm-up job of {len(warmup)}, then the measured job of {len(measured)}")
        pipeline = _run_pipeline(home, urls[:WARMUP_IMAGES], urls[WARMUP_IMAGES:], meter)
    _progress("(3) direct, second half")
    return summarise_worker(pipeline, (first, _run_direct(model, measured[split:], batch)))


def _run_pipeline(home: Path, warmup: list[str], urls: list[str], meter: CpuMeter) -> WorkerRun:
    # the default orchestrator (8 threads), and the classifier worker in this interpreter's environment
    workers = (DEFAULT_WORKERS[0], WorkerPlan("classifier", python=sys.executable))
    with Stack(home, workers=workers) as stack:
        orchestration._check_done(*orchestration._run_job(stack, warmup, MODELS), len(warmup))
        before, started = meter.snapshot(), time.perf_counter()
        job_id, counts = orchestration._run_job(stack, urls, MODELS)
        wall_s, after = time.perf_counter() - started, meter.snapshot()
    orchestration._check_done(job_id, counts, len(urls))
    return WorkerRun(len(urls), wall_s, spent(before, after), _results(job_id))


def _results(job_id: uuid.UUID) -> list[ResultRow]:
    with get_engine().connect() as conn:
        rows = conn.execute(RESULTS, {"job_id": job_id, "model": MODELS[0]}).all()
    return [ResultRow(r.batch_size, r.inference_ms, float(r.started_s), float(r.finished_s)) for r in rows]


def _run_direct(model: ClassifierModel, jpegs: Sequence[bytes], batch: int) -> DirectRun:
    """What the worker's ``analyse_task`` computes per micro-batch of ``batch``: decode, one predict."""
    decode_s = predict_s = 0.0
    cpu_started = time.process_time()
    for start in range(0, len(jpegs), batch):
        started = time.perf_counter()
        images = _decode_all(jpegs[start : start + batch])
        decoded = time.perf_counter()
        model.predict(images)
        decode_s, predict_s = decode_s + decoded - started, predict_s + time.perf_counter() - decoded
    return DirectRun(len(jpegs), batch, decode_s, predict_s, time.process_time() - cpu_started)


def summarise_worker(pipeline: WorkerRun, halves: tuple[DirectRun, DirectRun]) -> dict[str, Any]:
    n, results = pipeline.images, pipeline.results
    direct = halves[0] + halves[1]
    predict_calls = sum(1.0 / r.batch_size for r in results)  # each call of b images has b rows
    direct_wall_s = direct.decode_s + direct.predict_s
    cpu = {name: 1000.0 * s / n for name, s in sorted(pipeline.cpu_s.items())}
    cpu["submitter"] = cpu.pop(MAIN_THREAD)
    image_server_ms = cpu.pop(OTHER_THREADS)  # stands in for remote hosts
    return {
        "images": n,
        "pipeline_wall_s": pipeline.wall_s,
        "pipeline_images_per_s": n / pipeline.wall_s,
        "direct_batch": direct.batch,
        "direct_wall_s": direct_wall_s,
        "direct_images_per_s": direct.images / direct_wall_s,
        "direct_images_per_s_before_after": [h.images / (h.decode_s + h.predict_s) for h in halves],
        "ratio_pipeline_to_direct": (n / pipeline.wall_s) / (direct.images / direct_wall_s),
        "mean_batch_size_per_image": statistics.mean(r.batch_size for r in results),
        "mean_images_per_predict_call": len(results) / predict_calls,
        "predict_calls": round(predict_calls),
        "images_by_batch_size": {
            str(b): c for b, c in sorted(Counter(r.batch_size for r in results).items())
        },
        "worker_inference_ms_per_image": statistics.mean(r.inference_ms for r in results),
        "direct_predict_ms_per_image": 1000.0 * direct.predict_s / direct.images,
        "direct_decode_ms_per_image": 1000.0 * direct.decode_s / direct.images,
        "worker_predict_busy_fraction": sum(r.inference_ms for r in results) / 1000.0 / pipeline.wall_s,
        "first_analysis_started_s": min(r.started_s for r in results),
        "last_analysis_finished_s": max(r.finished_s for r in results),
        "pipeline_cpu_ms_per_image": sum(cpu.values()),
        "pipeline_cpu_ms_per_image_by_process": cpu,
        "image_server_cpu_ms_per_image_excluded": image_server_ms,
        "direct_cpu_ms_per_image": 1000.0 * direct.cpu_s / direct.images,
    }


# --- the report ---------------------------------------------------------------------------------------


def format_report(result: dict[str, Any]) -> str:
    m = result["machine"]
    threads = ", ".join(f"{k}={v or 'unset'}" for k, v in m["thread_variables"].items())
    head = (
        f"{m['cpu_cores']} CPU cores, {m['platform']}, Python {m['python']}, TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}; TF threads intra {m['tf_intra_op_threads']} inter {m['tf_inter_op_threads']} "
        f"(0 = one per core); {threads}"
    )
    sections = (_alone_lines(result["alone"]), _seed_lines(result["seed_comparison"]))
    return "\n".join([head, "", *sections[0], "", *sections[1], "", *_worker_lines(result["worker"])])


def _alone_lines(a: dict[str, Any]) -> list[str]:
    rows = [
        (
            size,
            str(r["images"]),
            f"{r['images_per_s']:.2f}",
            f"{r['ms_per_image']:.0f}",
            f"{r['ratio_to_batch_1']:.2f}",
            " ".join(f"{v:.2f}" for v in r["round_images_per_s"]),
        )
        for size, r in a["batch_sizes"].items()
    ]
    header = ("batch", "images", "images/s", "ms/image", "vs batch 1", "images/s by round")
    width, height = a["image_size"]
    batch_1_ms = a["batch_sizes"]["1"]["ms_per_image"]
    notes = [
        f"preprocess ({width}x{height} -> {CONFIG.input_size[0]}x{CONFIG.input_size[1]}, BGR, mean): "
        f"{a['preprocess_ms_per_image']:.1f} ms/image = {a['preprocess_ms_per_image'] / batch_1_ms:.1%} "
        f"of a batch-1 forward; decode_image of the JPEG: {a['decode_ms_per_image']:.1f} ms/image",
    ]
    title = (
        "(1) classifier alone: multi-head VGG19 (7 heads, 512-d embedding), 224x224, "
        "ClassifierModel.predict_arrays on preprocessed arrays"
    )
    return [title, *_table(header, rows), *notes]


def _seed_lines(s: dict[str, Any]) -> list[str]:
    rows = [
        (
            f"seed: {len(SEED_GROUPS)} VGG19s x {s['images_per_workload']} images, batch 1",
            str(s["seed_forward_passes"]),
            f"{s['seed_s_per_workload']:.2f}",
            " ".join(f"{v:.2f}" for v in s["seed_s_rounds"]),
        ),
        (
            f"ours: 1 network, one batch of {s['images_per_workload']}",
            str(s["ours_forward_passes"]),
            f"{s['ours_s_per_workload']:.2f}",
            " ".join(f"{v:.2f}" for v in s["ours_s_rounds"]),
        ),
    ]
    verdict = "meets" if s["meets_target"] else "misses"
    rounds = ", ".join(f"{v:.2f}" for v in s["round_ratios"])
    title = "(2) whole image + 3 garment crops (512x512 flat lay), A/B alternated"
    header = ("", "forward passes", "s/workload", "s by round")
    target = f"{verdict} the {s['target_ratio']:.0f}x target"
    ratio = f"ratio seed/ours {s['ratio']:.2f}x ({target}); by round {rounds}"
    return [title, *_table(header, rows), ratio]


def _worker_lines(w: dict[str, Any]) -> list[str]:
    by_process = ", ".join(f"{k} {v:.0f}" for k, v in w["pipeline_cpu_ms_per_image_by_process"].items())
    histogram = ", ".join(f"{b}: {c}" for b, c in w["images_by_batch_size"].items())
    before, after = w["direct_images_per_s_before_after"]
    rows = [
        (
            "wall images/s",
            f"{w['pipeline_images_per_s']:.2f}",
            f"pipeline; direct {w['direct_images_per_s']:.2f} (decode + predict, batch {w['direct_batch']}; "
            f"half before the job {before:.2f}, half after {after:.2f}); "
            f"ratio pipeline/direct {w['ratio_pipeline_to_direct']:.2f}",
        ),
        (
            "batch_size",
            f"{w['mean_batch_size_per_image']:.2f}",
            f"mean over images (model_results); {w['mean_images_per_predict_call']:.2f} images per predict "
            f"call, {w['predict_calls']} calls; images by batch size {{{histogram}}}",
        ),
        (
            "inference_ms",
            f"{w['worker_inference_ms_per_image']:.0f}",
            f"per image in the worker; direct predict {w['direct_predict_ms_per_image']:.0f} "
            f"at batch {w['direct_batch']}, direct decode {w['direct_decode_ms_per_image']:.1f}",
        ),
        (
            "predict busy",
            f"{w['worker_predict_busy_fraction']:.1%}",
            f"of the job's wall time ({w['pipeline_wall_s']:.1f} s) inside the worker's predict()",
        ),
        (
            "analysis span",
            f"{w['first_analysis_started_s']:.1f} s",
            "first analysis started after the job's creation; the last finished at "
            f"{w['last_analysis_finished_s']:.1f} s",
        ),
        (
            "CPU ms/image",
            f"{w['pipeline_cpu_ms_per_image']:.0f}",
            f"pipeline ({by_process}); direct {w['direct_cpu_ms_per_image']:.0f}; image server "
            f"{w['image_server_cpu_ms_per_image_excluded']:.1f} not counted",
        ),
    ]
    title = f"(3) through the worker: one job of {w['images']} 512x512 JPEGs, models=['classifier']"
    return [title, *_table(("", "value", "note"), rows)]


if __name__ == "__main__":
    main()

"""What the pipeline costs beyond the models, measured side by side in one run on a fresh embedded stack.

    python -m bench.pipeline [--images N] [--requests R] [--json PATH]

(a) orchestration CPU per image for the ``properties`` analyser, against the same analysis run
directly; (b) items per second the gateway process accepts. Every number is a ratio or a per-item
cost taken in this one run: the absolute values move with the machine's load. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import ingest, orchestration
from bench.cpu import CpuMeter
from bench.servers import bench_home, configure, embedded_servers
from bench.synthetic import garment_jpegs
from synthetic.imageserver import serve

DEFAULT_JSON = Path(__file__).with_name("results") / "pipeline.json"
WARMUP_IMAGES = 10
# numpy's OpenBLAS threads busy-wait between calls: how many there are changes the analysers' CPU a lot,
# so the report names the setting every process of the run inherited
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    # a SIGTERM unwinds like Ctrl-C, so the context managers below stop every process they started
    signal.signal(signal.SIGTERM, _interrupt)
    emit(args, _machine(), _measure(args), format_report)


def emit(
    args: argparse.Namespace,
    machine: dict[str, Any],
    measured: dict[str, Any],
    report: Callable[[dict[str, Any]], str],
) -> None:
    """Print a benchmark's report and write the same numbers, with the machine and flags, as JSON."""
    result = {"machine": machine, "config": vars(args) | {"json": str(args.json)}, **measured}
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {args.json}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images in the metered job (a)")
    parser.add_argument("--requests", type=int, default=20, help="POSTs of 1,000 items per phase (b)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    _progress(f"generating {args.images + WARMUP_IMAGES} JPEGs")
    images = garment_jpegs(WARMUP_IMAGES + args.images, seed=args.seed)
    warmup, measured = images[:WARMUP_IMAGES], images[WARMUP_IMAGES:]
    with bench_home() as home, serve() as image_server, embedded_servers(home) as servers:
        configure(home, servers, allow_hosts=[image_server.authority])
        meter = CpuMeter(servers.postmaster_pid)
        urls = orchestration.serve_images(image_server, images)
        _progress(f"(a) pipeline: warm-up job of {len(warmup)}, then the metered job of {len(measured)}")
        pipeline = orchestration.run_pipeline(home, urls[:WARMUP_IMAGES], urls[WARMUP_IMAGES:], meter)
        _progress("(a) direct: decode_image + PropertiesModel.predict in this process")
        direct = orchestration.run_direct(measured, warmup)
        _progress(f"(b) gateway ingest: {args.requests} requests per phase")
        phases = ingest.run_ingest(home, meter, args.requests)
    return {
        "orchestration": orchestration.summarise(pipeline, direct),
        "ingest": [ingest.summarise(phase) for phase in phases],
    }


def _progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    return {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def format_report(result: dict[str, Any]) -> str:
    machine = result["machine"]
    threads = ", ".join(f"{k}={v or 'unset'}" for k, v in machine["thread_variables"].items())
    head = f"{machine['cpu_cores']} CPU cores, {machine['platform']}, Python {machine['python']}; {threads}"
    lines = [head, "", *_orchestration_lines(result), "", *_ingest_lines(result["ingest"])]
    return "\n".join(lines)


def _orchestration_lines(result: dict[str, Any]) -> list[str]:
    a = result["orchestration"]
    by_process = a["pipeline_cpu_ms_per_image_by_process"]
    processes = ", ".join(f"{name} {ms:.1f}" for name, ms in by_process.items())
    kept = "; ".join(
        f"{name} ({m['model_cpu_ms_per_image']:.0f} ms) {m['fraction']:.1%}"
        for name, m in a["kept_fraction_of_direct_throughput"].items()
    )
    rows = [
        ("pipeline CPU per image", f"{a['pipeline_cpu_ms_per_image']:.1f} ms", processes),
        ("direct CPU per image", f"{a['direct_cpu_ms_per_image']:.1f} ms", "decode_image + predict"),
        ("orchestration per image", f"{a['orchestration_cpu_ms_per_image']:.1f} ms", "pipeline - direct"),
        (
            "orchestration per hop",
            f"{a['orchestration_cpu_ms_per_hop']:.1f} ms",
            f"per image / {a['hops_per_image']} (fetch+dispatch, properties analysis)",
        ),
        (
            "target per hop",
            f"{a['target_ms_per_hop']:.1f} ms",
            f"ratio cost/target {a['ratio_to_target']:.2f}",
        ),
        (
            "wall images/s",
            f"{a['pipeline_images_per_s']:.1f}",
            f"pipeline; direct {a['direct_images_per_s']:.1f} (1 thread), "
            f"ratio {a['pipeline_images_per_s'] / a['direct_images_per_s']:.2f}",
        ),
        (
            "wall per image",
            f"{a['pipeline_wall_ms_per_image']:.0f} ms",
            f"pipeline (one solo properties worker, serial), predict() inside it "
            f"{a['pipeline_predict_wall_ms_per_image']:.0f} ms; direct decode+predict "
            f"{a['direct_wall_ms_per_image']:.0f} ms",
        ),
        ("kept throughput", "", kept),
        (
            "not counted",
            f"{a['image_server_cpu_ms_per_image_excluded']:.1f} ms",
            f"image server (stands in for remote hosts); fetcher's decode alone "
            f"{a['direct_decode_cpu_ms_per_image']:.1f} ms is inside the orchestration cost",
        ),
    ]
    title = (
        f"(a) orchestration cost, properties analyser, {a['images']} images 512x512 JPEG "
        "(CPU ms per image; by process in the note)"
    )
    return [title, *_table(("", "value", "note"), rows)]


def _ingest_lines(phases: list[dict[str, Any]]) -> list[str]:
    rows = [
        (
            p["phase"],
            f"{p['items_per_s']:.0f}",
            f"{p['ratio_to_target']:.2f}",
            f"{p['latency_p50_ms']:.0f}",
            f"{p['latency_p99_ms']:.0f}",
            f"{p['server_cpu_ms_per_1000_items']:.0f}",
            ", ".join(f"{k} {v:.0f}" for k, v in p["server_cpu_ms_per_1000_items_by_process"].items()),
        )
        for p in phases
    ]
    target = phases[0]["target_items_per_s"]
    title = (
        f"(b) gateway ingest, POST /v1/jobs of 1,000 items, {phases[0]['requests']} requests per phase, "
        f"no worker consuming (target >= {target:.0f} items/s)"
    )
    header = ("phase", "items/s", "/target", "p50 ms", "p99 ms", "server CPU ms/1k", "by process")
    return [title, *_table(header, rows)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    rule = "  ".join("-" * w for w in widths)
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)).rstrip()
    return [head, rule, *lines]


if __name__ == "__main__":
    main()

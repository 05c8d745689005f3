"""Part (b): how many items per second the real gateway process accepts on ``POST /v1/jobs``.

The gateway runs as its own process (``atelier gateway``, uvicorn) on the benchmark's PostgreSQL and
Valkey, with no worker consuming: this measures ingest alone (rows committed, dispatch task published),
and the published tasks simply wait in Valkey.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from atelier.stack import Stack
from bench.cpu import GATEWAY, POSTGRES, VALKEY, CpuMeter, CpuSeconds, spent

ITEMS_PER_REQUEST = 1000
WARMUP_REQUESTS = 2
CONCURRENT_CLIENTS = 4
TARGET_ITEMS_PER_S = 2000.0
REQUEST_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0
SERVER_SIDE = (GATEWAY, POSTGRES, VALKEY)


@dataclass(frozen=True)
class IngestPhase:
    name: str
    clients: int
    requests: int
    items: int
    wall_s: float
    latencies_s: list[float]
    cpu_s: CpuSeconds


def run_ingest(home: Path, meter: CpuMeter, requests: int) -> list[IngestPhase]:
    """Warm up, then ``requests`` POSTs one after another, then ``requests`` from concurrent clients."""
    port = _free_port()
    with Stack(home, workers=(), gateway_port=port) as stack:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(stack, url)
        bodies = _job_bodies(WARMUP_REQUESTS + 2 * requests)
        warmup, sequential, concurrent = (
            bodies[:WARMUP_REQUESTS],
            bodies[WARMUP_REQUESTS : WARMUP_REQUESTS + requests],
            bodies[WARMUP_REQUESTS + requests :],
        )
        _post_all(f"{url}/v1/jobs", warmup, clients=1)
        return [
            _phase("sequential", f"{url}/v1/jobs", sequential, 1, meter),
            _phase(f"{CONCURRENT_CLIENTS} clients", f"{url}/v1/jobs", concurrent, CONCURRENT_CLIENTS, meter),
        ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(stack: Stack, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway at {url} not up after {READY_TIMEOUT_S:.0f} s")
        stack.check_processes()
        time.sleep(0.2)


def _job_bodies(count: int) -> list[bytes]:
    """Serialised ``JobIn`` bodies of ITEMS_PER_REQUEST distinct URLs each (never fetched: no worker)."""
    return [
        json.dumps(
            {
                "models": ["properties"],
                "items": [
                    {"url": f"https://images.bench.invalid/{r}/{i}.jpg", "external_id": f"sku-{r}-{i}"}
                    for i in range(ITEMS_PER_REQUEST)
                ],
            }
        ).encode()
        for r in range(count)
    ]


def _phase(name: str, url: str, bodies: list[bytes], clients: int, meter: CpuMeter) -> IngestPhase:
    before, started = meter.snapshot(), time.perf_counter()
    latencies = _post_all(url, bodies, clients)
    wall_s, after = time.perf_counter() - started, meter.snapshot()
    items = len(bodies) * ITEMS_PER_REQUEST
    return IngestPhase(name, clients, len(bodies), items, wall_s, latencies, spent(before, after))


def _post_all(url: str, bodies: list[bytes], clients: int) -> list[float]:
    """POST every body, spread over ``clients`` threads with a connection each; the latencies in s."""
    if clients == 1:
        return _post_each(url, bodies)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        shares = pool.map(_post_each, repeat(url), [bodies[i::clients] for i in range(clients)])
        return [latency for share in shares for latency in share]


def _post_each(url: str, bodies: Sequence[bytes]) -> list[float]:
    latencies = []
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, headers=headers) as client:
        for body in bodies:
            started = time.perf_counter()
            response = client.post(url, content=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    return latencies


def summarise(phase: IngestPhase) -> dict[str, Any]:
    items_per_s = phase.items / phase.wall_s
    server_cpu_s = sum(phase.cpu_s.get(name, 0.0) for name in SERVER_SIDE)
    return {
        "phase": phase.name,
        "clients": phase.clients,
        "requests": phase.requests,
        "items": phase.items,
        "wall_s": phase.wall_s,
        "items_per_s": items_per_s,
        "target_items_per_s": TARGET_ITEMS_PER_S,
        "ratio_to_target": items_per_s / TARGET_ITEMS_PER_S,
        "latency_p50_ms": 1000.0 * float(np.percentile(phase.latencies_s, 50)),
        "latency_p99_ms": 1000.0 * float(np.percentile(phase.latencies_s, 99)),
        "server_cpu_ms_per_1000_items": 1e6 * server_cpu_s / phase.items,
        "server_cpu_ms_per_1000_items_by_process": {
            name: 1e6 * phase.cpu_s.get(name, 0.0) / phase.items for name in SERVER_SIDE
        },
    }

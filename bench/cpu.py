"""CPU seconds (user + system) of the processes a benchmark drives, from the kernel's accounting.

A snapshot names each component: every child process of this one by its command line (the workers,
the gateway, Valkey), the embedded PostgreSQL server's whole process tree, and this process split into
its main thread and its other threads. The difference of two snapshots is what each spent in between.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import psutil

CpuSeconds = dict[str, float]

MAIN_THREAD = "main thread"
OTHER_THREADS = "other threads"
POSTGRES = "postgres"
VALKEY = "valkey"
GATEWAY = "gateway"


def tree_cpu_s(root: psutil.Process) -> float:
    """CPU seconds of ``root`` and all its descendants, including those that already exited.

    A reaped child's times are added to its parent's ``children_*`` fields, so summing own plus
    ``children_*`` over the live tree counts short-lived processes (PostgreSQL backends) exactly once.
    """
    total = 0.0
    for process in [*root.children(recursive=True), root]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # exited since the listing: now in its parent's children_*
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def component(process: psutil.Process) -> str:
    """The name of the component a child process of this one is, read from its command line."""
    cmdline = process.cmdline()
    if "atelier" in cmdline and "worker" in cmdline:
        service = cmdline[cmdline.index("--service") + 1] if "--service" in cmdline else "orchestrator"
        return f"worker {service}"
    if "atelier" in cmdline and GATEWAY in cmdline:
        return GATEWAY
    name = process.name()
    return VALKEY if VALKEY in name else name


class CpuMeter:
    """Snapshots of CPU seconds per component; call ``snapshot`` from the main thread."""

    def __init__(self, postmaster_pid: int) -> None:
        self._postmaster = psutil.Process(postmaster_pid)

    def snapshot(self) -> CpuSeconds:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("CpuMeter.snapshot() reads the main thread's time; call it from there")
        cpu: CpuSeconds = defaultdict(float)
        for child in psutil.Process().children():
            cpu[component(child)] += tree_cpu_s(child)
        cpu[POSTGRES] = tree_cpu_s(self._postmaster)
        main = time.thread_time()
        cpu[MAIN_THREAD] = main
        cpu[OTHER_THREADS] = time.process_time() - main
        return dict(cpu)


def spent(before: CpuSeconds, after: CpuSeconds) -> CpuSeconds:
    """What each component spent between two snapshots (a component born in between started at 0)."""
    return {name: after[name] - before.get(name, 0.0) for name in after}

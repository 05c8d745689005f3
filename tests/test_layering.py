"""What each deployable loads: the gateway and the orchestrator never a deep-learning framework, and the
gateway not even the image stack (its image installs only the `gateway` extra)."""

from __future__ import annotations

import subprocess
import sys


def _loaded(imports: str, roots: set[str]) -> list[str]:
    """Top-level packages among ``roots`` that importing ``imports`` loads, in a fresh interpreter."""
    loaded = f"{{m.split('.')[0] for m in sys.modules}} & {roots!r}"
    code = f"import sys, {imports}\nprint(','.join(sorted({loaded})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.strip().split(",") if name]


def test_gateway_and_worker_import_without_tensorflow_or_torch() -> None:
    frameworks = {"tensorflow", "keras", "torch", "detectron2"}
    assert _loaded("gateway.app, worker.tasks, atelier.cli", frameworks) == []


def test_gateway_imports_without_the_image_stack() -> None:
    assert _loaded("gateway.app", {"PIL", "scipy", "imagehash"}) == []
    assert _loaded("worker.tasks", {"PIL"}) == ["PIL"]  # the check itself can see a loaded package

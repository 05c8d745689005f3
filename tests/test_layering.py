"""The gateway and the orchestrating worker never load a deep-learning framework."""

from __future__ import annotations

import subprocess
import sys


def test_gateway_and_worker_import_without_tensorflow_or_torch() -> None:
    code = (
        "import sys, gateway.app, worker.tasks, atelier.cli\n"
        "frameworks = {'tensorflow', 'keras', 'torch', 'detectron2'}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in frameworks)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_gateway_imports_without_the_image_stack() -> None:
    """The gateway image installs only the `gateway` extra: no Pillow, no httpx fetcher, no analysers."""
    code = (
        "import sys, gateway.app\n"
        "image_stack = {'PIL', 'scipy', 'imagehash'}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in image_stack)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""

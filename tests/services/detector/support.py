"""What the detector's fixtures (conftest.py) give its tests, and the sizes they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SIZE = 192  # generated scenes, shorter side at training and test time

# ``atelier <args>`` in the classifier's environment, with this session's settings; returns its stdout
RunClassifier = Callable[..., str]


@dataclass(frozen=True)
class TrainedDetector:
    version_dir: Path
    test_json: Path
    test_images: Path

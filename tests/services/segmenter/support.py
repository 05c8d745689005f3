"""What the segmenter's fixtures (conftest.py) give its tests, and the size they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SIZE = 192  # generated scenes, shorter side at training and test time


@dataclass(frozen=True)
class TrainedSegmenter:
    version_dir: Path
    test_json: Path
    test_images: Path

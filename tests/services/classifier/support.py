"""What the classifier's fixtures (conftest.py) give its tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.classifier.config import TrainConfig


@dataclass(frozen=True)
class Trained:
    version_dir: Path
    data_dir: Path
    heldout_dir: Path
    config: TrainConfig

"""What the detector's and the segmenter's tests share: a short CPU training config and the timeout of
the test that trains."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

TRAINING_TIMEOUT_S = 1800
Config = TypeVar("Config", bound=BaseModel)


def shortened(preset: Config, size: int, iterations: int = 300) -> Config:
    """The CPU preset (R18-FPN, GroupNorm, light heads, from scratch) at ``size`` px for ``iterations``:
    ~1.5 s per iteration on 2 cores at 192 px."""
    return preset.model_copy(
        update={
            "max_iter": iterations,
            "steps": (),
            "checkpoint_period": iterations // 2,
            "min_size_train": (size,),
            "max_size_train": size,
            "min_size_test": size,
            "max_size_test": size,
            "score_threshold": 0.3,
        }
    )


def allow_training_time(items: list[pytest.Item], directory: Path) -> None:
    """The first test to ask for the trained model trains it (~10 min on 2 cores): a longer timeout
    for the tests of ``directory``."""
    for item in items:
        if item.path.parent == directory:
            item.add_marker(pytest.mark.timeout(TRAINING_TIMEOUT_S))

"""Settings a new model service needs nothing from: its queue is named after it unless overridden."""

from __future__ import annotations

import pytest

from common.settings import CoreSettings


def test_a_service_not_named_in_the_settings_has_a_queue_of_its_own_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATELIER_QUEUES__CLASSIFIER", "gpu-classifier")
    monkeypatch.setenv("ATELIER_QUEUES__PATTERNS", "patterns-eu")
    queues = CoreSettings().queues
    assert queues.for_service("classifier") == "gpu-classifier"
    assert queues.for_service("patterns") == "patterns-eu"
    assert queues.for_service("fabrics") == "fabrics"

"""One contract for every registered model service: the spec the pipeline reads, and the model it builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import ArtifactError
from common.settings import QueueSettings
from services.base import Model, Prediction
from services.registry import SERVICES, get_spec

BUILTIN = [name for name, spec in SERVICES.items() if spec.builtin_version is not None]
WITH_ARTIFACTS = [name for name, spec in SERVICES.items() if spec.builtin_version is None]


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_service_has_its_own_declared_queue(name: str) -> None:
    queues = QueueSettings()
    assert get_spec(name).queue(queues) in queues.model_dump().values()
    assert len({get_spec(n).queue(queues) for n in SERVICES}) == len(SERVICES)


@pytest.mark.parametrize("name", WITH_ARTIFACTS)
def test_a_service_without_its_artifact_is_unavailable_and_refuses_to_build(
    name: str, tmp_path: Path
) -> None:
    spec = get_spec(name)
    availability = spec.local_version(tmp_path)
    assert not availability.available
    assert str(tmp_path / name) in (availability.reason or "")
    with pytest.raises(ArtifactError, match=f"cannot serve {name}"):
        spec.build(tmp_path)


@pytest.mark.parametrize("name", WITH_ARTIFACTS)
def test_the_newest_numbered_version_with_a_manifest_is_served(name: str, tmp_path: Path) -> None:
    for version in ("1", "12", "3"):
        (tmp_path / name / version).mkdir(parents=True)
        (tmp_path / name / version / "manifest.json").write_text(json.dumps({"version": version}))
    (tmp_path / name / "latest-draft").mkdir()
    assert get_spec(name).local_version(tmp_path).version == "12"
    (tmp_path / name / "12" / "manifest.json").write_text("{not json")
    assert "unreadable manifest" in (get_spec(name).local_version(tmp_path).reason or "")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_services_build_without_artifacts_and_answer_in_batches(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    model = spec.build(tmp_path)
    assert isinstance(model, Model)
    assert (model.name, model.version) == (name, spec.builtin_version)
    model.load()
    model.load()  # idempotent
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(3)]
    predictions = model.predict(images)
    assert len(predictions) == 3 and all(isinstance(p, Prediction) for p in predictions)
    json.dumps([p.output for p in predictions])  # the output goes into a JSONB column as it is


def test_a_worker_for_an_absent_model_stops_at_startup_with_the_reason(tmp_path: Path) -> None:
    env = {"ATELIER_MODEL_REPOSITORY": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "atelier", "worker", "--service", "classifier"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert f"no model artifact in {tmp_path / 'classifier'}" in done.stderr

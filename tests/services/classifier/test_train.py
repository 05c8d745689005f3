"""Training on generated garments: the published version predicts held-out garments right, head by head."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.classifier.data import read_styles
from services.classifier.model import ClassifierModel
from synthetic.garments import HEADS, write_dataset
from tests.services.classifier.support import Trained

# stated accuracies on 100 held-out generated garments (measured 1.0 on every head when written)
REQUIRED_ACCURACY = {"articleType": 0.9, "baseColour": 0.95, "gender": 0.85, "usage": 0.85}


def test_published_version_has_its_manifest_and_reports(trained: Trained) -> None:
    manifest = json.loads((trained.version_dir / "manifest.json").read_text())
    assert trained.version_dir.name.isdigit()
    assert list(manifest["heads"]) == HEADS
    assert manifest["heads"]["articleType"] == ["Dresses", "Handbags", "Trousers", "Tshirts"]
    assert manifest["input_size"] == [64, 64] and manifest["embedding_dim"] == 512
    assert manifest["training_data_hash"] and manifest["train_config"]["pooling"] == "flatten"
    for head in HEADS:
        assert {f"confusion_{head}.csv", f"confusion_{head}.png"} <= set(manifest["files"])
        assert 0.0 <= manifest["metrics"][head]["macro_f1"] <= 1.0
    png = Image.open(trained.version_dir / "confusion_articleType.png")
    assert png.width > 200 and png.height > 200


def test_the_malformed_rows_were_reported_not_trained_on(trained: Trained) -> None:
    samples, report = read_styles(
        trained.data_dir / "styles.csv", trained.data_dir / "images", HEADS, min_images_per_class=10
    )
    assert len(samples) == 500
    assert report.dropped == {"missing_label:baseColour": 1, "malformed": 1}
    assert report.repaired_commas == len(range(0, 500, 7))


def test_held_out_garments_are_classified_right(trained: Trained) -> None:
    # given: 100 garments drawn with another seed, never seen in training
    samples, _ = read_styles(
        trained.heldout_dir / "styles.csv", trained.heldout_dir / "images", HEADS, min_images_per_class=1
    )
    model = ClassifierModel(trained.version_dir)
    model.load()

    # when
    predictions = model.predict([Image.open(s.image_path) for s in samples])

    # then
    for head, required in REQUIRED_ACCURACY.items():
        accuracy = np.mean(
            [p.output[head]["label"] == s.labels[head] for p, s in zip(predictions, samples, strict=True)]
        )
        assert accuracy >= required, f"{head}: {accuracy:.2f} < {required}"
    norms = [np.linalg.norm(np.asarray(p.embedding)) for p in predictions]
    assert np.allclose(norms, 1.0, atol=1e-4)


@pytest.fixture
def model_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from common.settings import get_settings

    repository = tmp_path / "models"
    monkeypatch.setenv("ATELIER_MODEL_REPOSITORY", str(repository))
    get_settings.cache_clear()
    yield repository
    monkeypatch.undo()
    get_settings.cache_clear()


def test_cli_refuses_to_train_heads_the_rare_class_rule_leaves_one_class(
    tmp_path: Path, model_repository: Path
) -> None:
    # given: 40 generated garments, 10 or 20 per class, and the default --min-images-per-class 500
    from atelier.cli import app

    data_dir = tmp_path / "garments"
    write_dataset(data_dir, 40, seed=0)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"heads": HEADS}))  # the generated data's heads (season is all Summer)
    command = ["classifier", "train", str(data_dir), "--config", str(config), "--weights", "none"]

    # when
    result = CliRunner().invoke(app, command)

    # then: a message naming each head's classes and a threshold that works; nothing published
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # rich wraps long lines at the terminal's width
    assert "refused: with min_images_per_class=500 (classes with fewer images mapped to Other)" in output
    assert f"{len(HEADS)} of {len(HEADS)} heads would be left with fewer than 2 classes" in output
    for head in HEADS:
        assert f"{head}: 1 class left (Other 40); images per class before the rule:" in output
    assert "gender: 1 class left (Other 40); images per class before the rule: Women 24, Men 16" in output
    threshold = re.search(r"--min-images-per-class (\d+) \(or lower\) keeps at least 2 classes", output)
    assert threshold is not None, output
    assert not (model_repository / "classifier").exists()
    # and the advice holds: the data reader accepts the suggested threshold
    _, report = read_styles(
        data_dir / "styles.csv", data_dir / "images", HEADS, min_images_per_class=int(threshold[1])
    )
    assert all(len(counts) >= 2 for counts in report.kept_class_counts.values())

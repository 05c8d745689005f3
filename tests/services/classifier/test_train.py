"""Training on generated garments: the published version predicts held-out garments right, head by head."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from services.classifier.data import read_styles
from services.classifier.model import ClassifierModel
from synthetic.garments import HEADS
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

"""A bad classifier artifact fails at load, with a message that says what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from common.errors import ArtifactError
from services.classifier.model import ClassifierModel
from services.classifier.preprocess import crop, preprocess
from tests.services.classifier.support import Trained


@pytest.fixture
def copy(trained: Trained, tmp_path: Path) -> Path:
    target = tmp_path / "7"
    shutil.copytree(trained.version_dir, target)
    return target


def _manifest(version_dir: Path) -> dict[str, Any]:
    return dict(json.loads((version_dir / "manifest.json").read_text()))


def test_a_missing_model_file_is_refused(copy: Path) -> None:
    (copy / "model.keras").unlink()
    with pytest.raises(ArtifactError, match="model.keras is missing"):
        ClassifierModel(copy).load()


def test_a_file_that_does_not_match_its_hash_is_refused(copy: Path) -> None:
    with (copy / "model.keras").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="has sha256"):
        ClassifierModel(copy).load()


def test_a_label_list_that_does_not_fit_its_head_is_refused(copy: Path) -> None:
    manifest = _manifest(copy)
    manifest["heads"]["articleType"].append("Sarees")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError, match="head 'articleType' has 4 outputs but the manifest lists 5 labels"
    ):
        ClassifierModel(copy).load()


def test_a_missing_manifest_is_refused(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        ClassifierModel(copy).load()


def test_serving_preprocessing_is_keras_vgg19_preprocessing() -> None:
    import keras

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8))
    resized = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    expected = keras.applications.vgg19.preprocess_input(resized.copy())
    assert np.allclose(preprocess(image, (64, 64)), expected, atol=1e-4)


def test_crops_and_whole_images_take_the_same_path(trained: Trained) -> None:
    from services.classifier.config import ClassifierSettings

    model = ClassifierModel(trained.version_dir, ClassifierSettings(crop_margin=0.0))
    model.load()
    image = Image.open(next((trained.heldout_dir / "images").iterdir())).convert("RGB")
    canvas = Image.new("RGB", (200, 150), (240, 240, 240))
    canvas.paste(image, (100, 50))
    # the garment pasted into a larger scene, cropped back with no margin, predicts like the original
    [whole] = model.predict([image])
    [cropped] = model.predict_crops(canvas, [(100, 50, 164, 114)])
    assert cropped.output == whole.output
    assert crop(canvas, (100, 50, 164, 114), 0.5).size == (128, 128)


def test_the_zoo_file_is_taken_from_the_cache_without_a_download(
    random_imagenet_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    from services.classifier.zoo import weights_path

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the zoo tried to download")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert weights_path("vgg19-imagenet-notop") == random_imagenet_weights


def test_gradcam_highlights_the_garment(trained: Trained, tmp_path: Path) -> None:
    from services.classifier.explain import gradcam, overlay_png

    model = ClassifierModel(trained.version_dir)
    model.load()
    image = Image.open(next((trained.heldout_dir / "images").iterdir())).convert("RGB")
    heat = gradcam(model, image, "articleType")
    assert heat.shape == (image.height, image.width) and 0.0 <= heat.min() <= heat.max() <= 1.0
    (tmp_path / "cam.png").write_bytes(overlay_png(image, heat))
    assert Image.open(tmp_path / "cam.png").size == image.size

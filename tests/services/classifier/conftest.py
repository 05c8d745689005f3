"""The classifier's tests that need TensorFlow run in its own environment (.venv-classifier); elsewhere
pytest leaves them out. The others (the training data's reader) need no framework and run in .venv
(scripts/test.sh). One small model is trained per run and shared by every test that needs it."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.classifier.config import TrainConfig
from synthetic.garments import HEADS, write_dataset
from tests.services.classifier.support import Trained
from tests.support.infra import Infra

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
NEEDS_TENSORFLOW = ["test_artifacts.py", "test_pipeline.py", "test_train.py"]
collect_ignore = [] if importlib.util.find_spec("tensorflow") else NEEDS_TENSORFLOW

NOTOP = "vgg19-imagenet-notop"


@pytest.fixture(scope="session")
def random_imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A randomly initialised VGG19 weights file where Keras' cache expects the ImageNet one, registered
    in the zoo under its own hash: the real download-and-cache path, offline."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format  # the format Keras' published weights use

    from common.blobstore import sha256_file
    from services.classifier import zoo

    cache = tmp_path_factory.mktemp("keras-cache")
    entry = zoo.ZOO[NOTOP]
    path = cache / entry.cache_subdir / entry.fname
    path.parent.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(
            handle, keras.applications.VGG19(include_top=False, weights=None)
        )
    zoo.ZOO[NOTOP] = zoo.ZooEntry(entry.fname, entry.origin, sha256_file(path), entry.cache_subdir)
    os.environ["ATELIER_CLASSIFIER_KERAS_CACHE_DIR"] = str(cache)
    from services.classifier.config import get_classifier_settings

    get_classifier_settings.cache_clear()
    yield path
    zoo.ZOO[NOTOP] = entry


@pytest.fixture(scope="session")
def trained(infra: Infra, random_imagenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A classifier trained on 500 generated garments, published into the test model repository."""
    from common.settings import get_settings
    from services.classifier.train import train

    data_dir = tmp_path_factory.mktemp("garments")
    write_dataset(data_dir, 500, seed=0)
    heldout_dir = tmp_path_factory.mktemp("heldout")
    write_dataset(heldout_dir, 100, seed=1, first_id=9000)
    config = TrainConfig(
        heads=HEADS,
        input_size=(64, 64),
        pooling="flatten",
        min_images_per_class=10,
        batch_size=32,
        head_epochs=60,
        patience=10,
        finetune_blocks=1,
        finetune_epochs=1,
    )
    version_dir = train(data_dir, config, get_settings().model_repository)
    return Trained(version_dir, data_dir, heldout_dir, config)

"""Public weights the classifier starts from: a table of names → URL + hash, fetched through Keras' own
cached, hash-checked downloader (``keras.utils.get_file``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras

from services.classifier.config import get_classifier_settings


@dataclass(frozen=True)
class ZooEntry:
    fname: str
    origin: str
    file_hash: str  # md5 or sha256, as keras.utils.get_file accepts
    cache_subdir: str = "models"


ZOO: dict[str, ZooEntry] = {
    # keras.applications.VGG19(include_top=False, weights="imagenet") loads exactly this file
    "vgg19-imagenet-notop": ZooEntry(
        fname="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        origin=(
            "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ),
        file_hash="253f8cb515780f3b799900260a226db6",
    ),
}


def weights_path(name: str, cache_dir: Path | None = None) -> Path:
    """The cached file of a zoo entry, downloaded and hash-checked on first use."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo entry {name!r}; expected one of {sorted(ZOO)}") from None
    cache = cache_dir or get_classifier_settings().keras_cache_dir
    path = keras.utils.get_file(
        entry.fname,
        entry.origin,
        file_hash=entry.file_hash,
        cache_subdir=entry.cache_subdir,
        cache_dir=str(cache) if cache else None,
    )
    return Path(path)

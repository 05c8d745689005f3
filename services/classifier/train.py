"""``atelier classifier train``: Fashion Product Images layout in, a new model-repository version out.

Transfer learning in two stages: the heads first, on backbone features computed once (the backbone is
frozen, so its features do not change between epochs), then the last N VGG blocks fine-tuned end to end
on augmented images through a ``tf.data`` pipeline. Early stopping on validation loss in both; a run
interrupted in either stage resumes from its backup. The version is evaluated through the serving code
(the saved artifact loaded by ``ClassifierModel``) on the held-out split.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from PIL import Image

from services.artifacts import PREDICTIONS, hash_files, publish_version, staging_dir, write_manifest
from services.classifier.config import MODEL_FILE, TrainConfig
from services.classifier.data import Sample, dataset_hash, labels_of, read_styles, stratified_split
from services.classifier.evaluate import evaluate_outputs, predict_samples, write_reports
from services.classifier.model import ClassifierModel, build_network, network_manifest
from services.classifier.preprocess import augment, preprocess
from services.classifier.zoo import weights_path

log = logging.getLogger(__name__)

Targets = dict[str, NDArray[np.int64]]


def train(data_dir: Path, config: TrainConfig, repository: Path, work_dir: Path | None = None) -> Path:
    """Train, evaluate and publish a new version; returns its directory ``<repository>/classifier/<N>``.

    Raises ``UntrainableHeadError`` (nothing trained, nothing published) when the rare-class rule leaves a
    head fewer than two classes."""
    samples, report = read_styles(
        data_dir / "styles.csv",
        data_dir / "images",
        config.heads,
        min_images_per_class=config.min_images_per_class,
        rare=config.rare,
    )
    log.info("dataset %s:\n%s", data_dir, report.summary())
    log.info("images per class kept, by head:\n%s", report.classes_summary())
    heads = labels_of(samples, config.heads)
    train_set, val_set, test_set = stratified_split(samples, config.key_head, config.split, config.seed)
    log.info("split: %d train, %d validation, %d test", len(train_set), len(val_set), len(test_set))
    keras.utils.set_random_seed(config.seed)
    batch_size = _use_accelerator(config.batch_size)
    backbone_weights = weights_path("vgg19-imagenet-notop") if config.weights == "imagenet" else None
    net, backbone, top = build_network(
        heads,
        config.input_size,
        embedding_dim=config.embedding_dim,
        pooling=config.pooling,
        dropout=config.dropout,
        backbone_weights=backbone_weights,
    )
    work = work_dir or repository / "classifier" / ".training"
    started = time.monotonic()
    _train_heads(backbone, top, heads, config, train_set, val_set, batch_size, work / "heads")
    _fine_tune(net, backbone, heads, config, train_set, val_set, batch_size, work / "finetune")
    version_dir = _publish(net, heads, config, samples, test_set, repository, time.monotonic() - started)
    shutil.rmtree(work, ignore_errors=True)
    return version_dir


def _use_accelerator(batch_size: int) -> int:
    """Mixed precision and a larger batch when a GPU is present."""
    if not tf.config.list_physical_devices("GPU"):
        return batch_size
    keras.mixed_precision.set_global_policy("mixed_float16")
    return batch_size * 4


def _targets(samples: Sequence[Sample], heads: Mapping[str, Sequence[str]]) -> Targets:
    index = {head: {label: i for i, label in enumerate(labels)} for head, labels in heads.items()}
    return {head: np.array([index[head][s.labels[head]] for s in samples], dtype=np.int64) for head in heads}


def _class_weights(
    targets: Targets, heads: Mapping[str, Sequence[str]], enabled: bool
) -> dict[str, NDArray[np.float32]]:
    """Per-sample weights per head, inversely proportional to class frequency (mean weight 1)."""
    weights = {}
    for head, y in targets.items():
        if not enabled:
            weights[head] = np.ones(len(y), dtype=np.float32)
            continue
        counts = np.bincount(y, minlength=len(heads[head])).astype(np.float64)
        per_class = np.divide(len(y), len(counts) * counts, out=np.zeros_like(counts), where=counts > 0)
        weights[head] = per_class[y].astype(np.float32)
    return weights


def _compile(model: keras.Model, heads: Mapping[str, Sequence[str]], learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={head: "sparse_categorical_crossentropy" for head in heads},
        metrics={head: ["accuracy"] for head in heads},
    )


def _callbacks(config: TrainConfig, backup: Path) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True),
        keras.callbacks.BackupAndRestore(str(backup)),
    ]


def _train_heads(
    backbone: keras.Model,
    top: keras.Model,
    heads: Mapping[str, Sequence[str]],
    config: TrainConfig,
    train_set: Sequence[Sample],
    val_set: Sequence[Sample],
    batch_size: int,
    backup: Path,
) -> None:
    if config.head_epochs <= 0:
        return
    backbone.trainable = False
    features = {
        name: backbone.predict(_images(part, config, batch_size, augmented=False), verbose=0)
        for name, part in (("train", train_set), ("val", val_set))
    }
    heads_only = keras.Model(top.input, {head: top.output[head] for head in heads})
    _compile(heads_only, heads, config.head_lr)
    y_train, y_val = _targets(train_set, heads), _targets(val_set, heads)
    heads_only.fit(
        features["train"],
        y_train,
        sample_weight=_class_weights(y_train, heads, config.class_weighting),
        validation_data=(features["val"], y_val) if len(val_set) else None,
        epochs=config.head_epochs,
        batch_size=batch_size,
        callbacks=_callbacks(config, backup),
        verbose=2,
    )


def _fine_tune(
    net: keras.Model,
    backbone: keras.Model,
    heads: Mapping[str, Sequence[str]],
    config: TrainConfig,
    train_set: Sequence[Sample],
    val_set: Sequence[Sample],
    batch_size: int,
    backup: Path,
) -> None:
    if config.finetune_epochs <= 0 or config.finetune_blocks <= 0:
        return
    trainable_blocks = {f"block{5 - i}" for i in range(config.finetune_blocks)}
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = layer.name.split("_")[0] in trainable_blocks
    whole = keras.Model(net.input, {head: net.output[head] for head in heads})
    _compile(whole, heads, config.finetune_lr)
    y_train, y_val = _targets(train_set, heads), _targets(val_set, heads)
    weights = _class_weights(y_train, heads, config.class_weighting)
    whole.fit(
        _images(train_set, config, batch_size, augmented=config.augment, targets=y_train, weights=weights),
        validation_data=_images(val_set, config, batch_size, augmented=False, targets=y_val)
        if len(val_set)
        else None,
        epochs=config.finetune_epochs,
        callbacks=_callbacks(config, backup),
        verbose=2,
    )


def _images(
    samples: Sequence[Sample],
    config: TrainConfig,
    batch_size: int,
    *,
    augmented: bool,
    targets: Targets | None = None,
    weights: Mapping[str, NDArray[np.float32]] | None = None,
) -> tf.data.Dataset:
    """The input pipeline: decode, (augment,) the shared ``preprocess``, batch, prefetch."""
    paths = [str(s.image_path) for s in samples]
    draws = itertools.count()

    def load(index: np.int64) -> NDArray[np.float32]:
        image = Image.open(paths[int(index)]).convert("RGB")
        if augmented:
            rng = np.random.default_rng([config.seed, int(index), next(draws)])
            image = augment(image, rng)
        return preprocess(image, config.input_size)

    def to_input(index: tf.Tensor) -> tf.Tensor:
        array = tf.numpy_function(load, [index], tf.float32)
        return tf.ensure_shape(array, (*config.input_size, 3))

    # labels (and weights) travel with their image's index, so shuffling keeps them aligned
    columns = [tf.data.Dataset.from_tensor_slices(np.arange(len(samples)))]
    if targets is not None:
        columns.append(tf.data.Dataset.from_tensor_slices(dict(targets)))
    if weights is not None:
        columns.append(tf.data.Dataset.from_tensor_slices(dict(weights)))
    dataset = tf.data.Dataset.zip(tuple(columns)) if len(columns) > 1 else columns[0]
    if augmented:
        dataset = dataset.shuffle(len(samples), seed=config.seed, reshuffle_each_iteration=True)
    if len(columns) > 1:
        dataset = dataset.map(lambda i, *rest: (to_input(i), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(to_input, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _publish(
    net: keras.Model,
    heads: Mapping[str, Sequence[str]],
    config: TrainConfig,
    samples: Sequence[Sample],
    test_set: Sequence[Sample],
    repository: Path,
    train_seconds: float,
) -> Path:
    """Write the version in a temporary directory, evaluate it through the serving code, then rename it
    into place: readers never see a half-written version."""
    model_dir = repository / "classifier"
    staging = staging_dir(model_dir)
    net.save(staging / MODEL_FILE)
    manifest = network_manifest(
        heads,
        config,
        hash_files(staging, [MODEL_FILE]),
        training_data_hash=dataset_hash(samples),
        train_seconds=round(train_seconds, 1),
    )
    write_manifest(staging, manifest)  # the serving code below loads the staged version
    served = ClassifierModel(staging)
    served.load()
    outputs = predict_samples(served.predict_arrays, test_set, served.input_size)
    metrics = evaluate_outputs(outputs, test_set, heads)
    reports = write_reports(staging, metrics, heads)
    (staging / PREDICTIONS).write_text(json.dumps(outputs))
    manifest.metrics = {h: {k: v for k, v in m.items() if k != "confusion"} for h, m in metrics.items()}
    manifest.files.update(hash_files(staging, [*reports, PREDICTIONS]))
    write_manifest(staging, manifest)
    return publish_version(staging, model_dir)

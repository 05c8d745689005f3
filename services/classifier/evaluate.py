"""Metrics of a classifier version: accuracy, macro-F1 and a confusion matrix per head (CSV and PNG)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from services.artifacts import METRICS
from services.classifier.data import Sample
from services.classifier.preprocess import preprocess_batch


def confusion(y_true: NDArray[np.int64], y_pred: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def head_metrics(matrix: NDArray[np.int64]) -> dict[str, float]:
    """Accuracy and macro-F1 (classes absent from both truth and prediction are left out of the mean)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    present = (predicted + actual) > 0
    f1 = np.divide(2 * true_positive, predicted + actual, out=np.zeros_like(true_positive), where=present)
    return {
        "accuracy": float(true_positive.sum() / max(matrix.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "support": int(matrix.sum()),
    }


def predict_samples(
    predict: Any, samples: Sequence[Sample], input_size: tuple[int, int], batch_size: int = 32
) -> dict[str, dict[str, Any]]:
    """``predict(batch_array)`` → per sample id, the output the served model stores for that image."""
    outputs: dict[str, dict[str, Any]] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [Image.open(s.image_path).convert("RGB") for s in chunk]
        for sample, prediction in zip(chunk, predict(preprocess_batch(images, input_size)), strict=True):
            outputs[sample.id] = prediction.output
    return outputs


def evaluate_outputs(
    outputs: Mapping[str, Mapping[str, Any]], samples: Sequence[Sample], heads: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    metrics: dict[str, dict[str, Any]] = {}
    for head, labels in heads.items():
        index = {label: i for i, label in enumerate(labels)}
        y_true = np.array([index[s.labels[head]] for s in samples], dtype=np.int64)
        y_pred = np.array([index[outputs[s.id][head]["label"]] for s in samples], dtype=np.int64)
        matrix = confusion(y_true, y_pred, len(labels))
        metrics[head] = {**head_metrics(matrix), "confusion": matrix.tolist()}
    return metrics


def write_reports(
    directory: Path, metrics: Mapping[str, Mapping[str, Any]], heads: Mapping[str, Sequence[str]]
) -> list[str]:
    """``metrics.json`` plus ``confusion_<head>.csv`` and ``.png``; returns the file names written."""
    written = [METRICS]
    summary = {head: {k: v for k, v in m.items() if k != "confusion"} for head, m in metrics.items()}
    (directory / METRICS).write_text(json.dumps(summary, indent=2))
    for head, labels in heads.items():
        matrix = np.asarray(metrics[head]["confusion"])
        with (directory / f"confusion_{head}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["true \\ predicted", *labels])
            writer.writerows([label, *row] for label, row in zip(labels, matrix.tolist(), strict=True))
        _plot_confusion(directory / f"confusion_{head}.png", head, matrix, labels)
        written += [f"confusion_{head}.csv", f"confusion_{head}.png"]
    return written


def _plot_confusion(path: Path, head: str, matrix: NDArray[np.int64], labels: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(f"{head}: accuracy {accuracy:.3f}")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            axes.text(
                j, i, str(count), ha="center", va="center", color="white" if rows[i, j] > 0.5 else "black"
            )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

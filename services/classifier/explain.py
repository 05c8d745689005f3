"""Grad-CAM (Selvaraju et al. 2017) per head: where in the image the last convolutional block looked when
the head chose its label, as a heat map and a PNG overlay for people to look at."""

from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from PIL import Image

from services.classifier.model import LAST_CONV, ClassifierModel
from services.classifier.preprocess import preprocess


def gradcam(
    model: ClassifierModel, image: Image.Image, head: str, label: str | None = None
) -> NDArray[np.float32]:
    """A heat map in [0, 1] of the image's size for ``label`` (the predicted one by default) of ``head``."""
    if model.net is None:
        raise RuntimeError("call load() before gradcam()")
    if head not in model.heads:
        raise ValueError(f"unknown head {head!r}; expected one of {list(model.heads)}")
    backbone, top = model.net.get_layer("vgg19"), model.net.get_layer("top")
    probe = keras.Model(backbone.inputs, [backbone.get_layer(LAST_CONV).output, backbone.output])
    batch = tf.convert_to_tensor(preprocess(image, model.input_size)[None])
    with tf.GradientTape() as tape:
        conv, features = probe(batch, training=False)
        probabilities = top(features, training=False)[head]
        index = int(tf.argmax(probabilities[0])) if label is None else model.heads[head].index(label)
        score = probabilities[:, index]
    gradients = tape.gradient(score, conv)
    weights = tf.reduce_mean(gradients, axis=(1, 2))  # one weight per channel: its mean gradient
    cam = tf.nn.relu(tf.reduce_sum(conv[0] * weights[0], axis=-1)).numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    heat = Image.fromarray((cam * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    return np.asarray(heat, dtype=np.float32) / 255.0


def overlay_png(image: Image.Image, heat: NDArray[np.float32], alpha: float = 0.45) -> bytes:
    """The heat map in the 'jet' colours over the image, as PNG bytes."""
    from matplotlib import colormaps

    colours = (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    blended = Image.blend(image.convert("RGB"), Image.fromarray(colours), alpha)
    buffer = io.BytesIO()
    blended.save(buffer, "PNG")
    return buffer.getvalue()

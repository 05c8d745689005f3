"""The classifier service as the pipeline sees it, without importing its framework.

Available once a model version exists in the model repository (``<repo>/classifier/<version>/manifest.json``);
until then every job records classifier as skipped with that reason.
"""

from services.base import ServiceSpec

SPEC = ServiceSpec(
    name="classifier",
    model_path="services.classifier.model:build",
    description=(
        "VGG19 multi-head classifier (gender, masterCategory, subCategory, articleType) w"
        "ith a search embedding; TensorFlow/Keras, its own environment"
    ),
)

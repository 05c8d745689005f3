"""The detector service as the pipeline sees it, without importing its framework.

Available once a model version exists in the model repository (``<repo>/detector/<version>/manifest.json``);
until then every job records detector as skipped with that reason.
"""

from services.base import ServiceSpec

SPEC = ServiceSpec(
    name="detector",
    model_path="services.detector.model:build",
    description=(
        "Detectron2 Mask R-CNN on DeepFashion2: 13 garment categories with boxes and masks; torch environment"
    ),
)

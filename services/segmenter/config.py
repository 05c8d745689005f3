"""The segmenter service as the pipeline sees it, without importing its framework.

Available once a model version exists in the model repository (``<repo>/segmenter/<version>/manifest.json``);
until then every job records segmenter as skipped with that reason.
"""

from services.base import ServiceSpec

SPEC = ServiceSpec(
    name="segmenter",
    model_path="services.segmenter.model:build",
    description=(
        "Attribute Mask R-CNN (Fashionpedia-style): per-garment masks, style attributes, "
        "cut-outs, body regions; torch environment"
    ),
)

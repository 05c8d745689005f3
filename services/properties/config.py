"""The properties analyser as the pipeline sees it; cheap to import (the gateway reads it)."""

from __future__ import annotations

from services.base import ServiceSpec

# Results are stored keyed by (image, model, version): bump this whenever the algorithm or one of its
# constants changes, so that old rows are recognisably computed by the old code.
PROPERTIES_VERSION = "1.0.0"

# model-free image properties: size, dominant colours named by CIEDE2000, sharpness, brightness,
# perceptual hash and whether the background is plain
SPEC = ServiceSpec(
    name="properties", model_path="services.properties.model:build", builtin_version=PROPERTIES_VERSION
)

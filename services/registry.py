"""Every model service the pipeline knows. Adding a service means adding its ``SPEC`` here."""

from __future__ import annotations

from services.base import ServiceSpec
from services.classifier.config import SPEC as CLASSIFIER
from services.detector.config import SPEC as DETECTOR
from services.properties.config import SPEC as PROPERTIES
from services.segmenter.config import SPEC as SEGMENTER

SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (PROPERTIES, CLASSIFIER, DETECTOR, SEGMENTER)}
DEFAULT_MODELS: tuple[str, ...] = tuple(SERVICES)


def get_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown model service {name!r}; expected one of {sorted(SERVICES)}") from None

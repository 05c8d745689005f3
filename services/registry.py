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


def check_models(models: list[str] | None) -> list[str] | None:
    """The requested services in order without repeats; None (all of them) when none were named."""
    if models is None:
        return None
    unknown = [m for m in models if m not in SERVICES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; expected a subset of {sorted(SERVICES)}")
    if not models:
        raise ValueError("models must name at least one model (or be left out for all)")
    return list(dict.fromkeys(models))

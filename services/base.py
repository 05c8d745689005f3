"""The one interface every model service plugs in through.

A service has two halves so that the orchestrator and the gateway never import a heavy framework:

* ``ServiceSpec`` (cheap, importable anywhere): name, queue, the model version it would serve, and
  whether its artifact is present. The gateway's ``/readyz`` and the fetch step read only this.
* ``Model`` (heavy, imported only inside the service's own worker process through ``spec.model_path``):
  ``load()`` once at startup, then a pure batched ``predict``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_settings import BaseSettings

from common.errors import ArtifactError
from common.settings import QueueSettings
from services.artifacts import latest_version_dir, manifest_problem

__all__ = [
    "LocalVersion",
    "Model",
    "Prediction",
    "ServiceSpec",
    "latest_version_factory",
]

if TYPE_CHECKING:  # the gateway reads specs without Pillow installed
    from PIL import Image


@dataclass(frozen=True)
class LocalVersion:
    """The version a worker of this service would load from the model repository, or why none.
    (Which version the pipeline routes to is another question: ``db.versions``.)"""

    available: bool
    version: str | None
    reason: str | None = None


@dataclass(frozen=True)
class Prediction:
    """One image's output: a JSON-able dict, and optionally an embedding for the pgvector column."""

    output: dict[str, Any]
    embedding: Sequence[float] | None = None
    # pictures for the blob store by name (e.g. "cutout-0.png"); the worker stores them and puts their
    # keys in the output under "files"
    files: dict[str, bytes] = field(default_factory=dict)


class Model(ABC):
    """A loaded model. ``load()`` is idempotent; ``predict`` is batched and has no side effects."""

    name: str
    version: str

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]: ...

    def predict_crops(self, image: Image.Image, boxes: Sequence[Sequence[float]]) -> list[Prediction]:
        """Each box ``[x1, y1, x2, y2]`` of ``image`` cropped and predicted, in one batch."""
        return self.predict([image.crop((box[0], box[1], box[2], box[3])) for box in boxes])

    def explain(self, image: Image.Image, prediction: Prediction) -> dict[str, bytes]:
        """PNG pictures that show why ``prediction`` came out as it did, by name; none by default."""
        return {}


@dataclass(frozen=True)
class ServiceSpec:
    """What the pipeline knows about a model service without loading it."""

    name: str
    model_path: str  # "package.module:Factory"; the factory takes (spec, repository) and returns a Model
    builtin_version: str | None = None  # model-free analysers have a code version instead of an artifact
    explains: bool = False  # its Model.explain gives pictures for people (Grad-CAM)
    # its settings class (ATELIER_<NAME>_*), if it has one: the deploy files are generated from it
    settings: type[BaseSettings] | None = None
    # the service that classifies the garment crops of this one's output ("garments", each with a "box")
    crops_to: str | None = None

    def queue(self, queues: QueueSettings) -> str:
        """Its queue's name: its own, unless ``ATELIER_QUEUES__<NAME>`` says otherwise."""
        return queues.for_service(self.name)

    def local_version(self, repository: Path) -> LocalVersion:
        """Built-in analysers are always available; model services need ``<repo>/<name>/<version>/``."""
        if self.builtin_version is not None:
            return LocalVersion(True, self.builtin_version)
        version_dir = latest_version_dir(repository / self.name)
        if version_dir is None:
            return LocalVersion(False, None, f"no model artifact in {repository / self.name}")
        if (problem := manifest_problem(version_dir)) is not None:
            return LocalVersion(False, None, problem)
        return LocalVersion(True, version_dir.name)

    def build(self, repository: Path) -> Model:
        """Import and construct the model; refuses at once when its artifact is not there."""
        local = self.local_version(repository)
        if not local.available:
            raise ArtifactError(f"cannot serve {self.name}: {local.reason}")
        module_name, _, attr = self.model_path.partition(":")
        factory: Callable[[ServiceSpec, Path], Model] = getattr(importlib.import_module(module_name), attr)
        return factory(self, repository)


ModelT = TypeVar("ModelT", bound=Model)


def latest_version_factory(model: Callable[[Path], ModelT]) -> Callable[[ServiceSpec, Path], ModelT]:
    """The factory ``ServiceSpec.model_path`` names for a model served from the repository: ``model``
    built on the newest version of the spec's service."""

    def build(spec: ServiceSpec, repository: Path) -> ModelT:
        version_dir = latest_version_dir(repository / spec.name)
        if version_dir is None:
            raise ArtifactError(f"no {spec.name} version in {repository / spec.name}")
        return model(version_dir)

    return build

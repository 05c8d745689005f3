"""The one interface every model service plugs in through.

A service has two halves so that the orchestrator and the gateway never import a heavy framework:

* ``ServiceSpec`` (cheap, importable anywhere): name, queue, the model version it would serve, and
  whether its artifact is present. The gateway's ``/readyz`` and the fetch step read only this.
* ``Model`` (heavy, imported only inside the service's own worker process through ``spec.model_path``):
  ``load()`` once at startup, then a pure batched ``predict``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import ArtifactError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the gateway reads specs without Pillow installed
    from PIL import Image


@dataclass(frozen=True)
class Availability:
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
    description: str = ""
    explains: bool = False  # its Model.explain gives pictures for people (Grad-CAM)
    # the service that classifies the garment crops of this one's output ("garments", each with a "box")
    crops_to: str | None = None
    queue_attr: str = field(default="")  # attribute of QueueSettings; defaults to the service name

    def queue(self, queues: Any) -> str:
        return str(getattr(queues, self.queue_attr or self.name))

    def availability(self, repository: Path) -> Availability:
        """Built-in analysers are always available; model services need ``<repo>/<name>/<version>/``."""
        if self.builtin_version is not None:
            return Availability(True, self.builtin_version)
        version_dir = latest_version_dir(repository / self.name)
        if version_dir is None:
            return Availability(False, None, f"no model artifact in {repository / self.name}")
        manifest = version_dir / "manifest.json"
        if not manifest.is_file():
            return Availability(False, None, f"no manifest.json in {version_dir}")
        try:
            json.loads(manifest.read_text())
        except json.JSONDecodeError as exc:
            return Availability(False, None, f"unreadable manifest {manifest}: {exc}")
        return Availability(True, version_dir.name)

    def build(self, repository: Path) -> Model:
        """Import and construct the model; refuses at once when its artifact is not there."""
        availability = self.availability(repository)
        if not availability.available:
            raise ArtifactError(f"cannot serve {self.name}: {availability.reason}")
        module_name, _, attr = self.model_path.partition(":")
        factory: Callable[[ServiceSpec, Path], Model] = getattr(importlib.import_module(module_name), attr)
        return factory(self, repository)


def read_manifest(service: str, version_dir: Path, required: Sequence[str]) -> dict[str, Any]:
    """A version's ``manifest.json``, refused with the reason when absent, unreadable or incomplete."""
    path = version_dir / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{service} artifact {version_dir} has no manifest.json") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"unreadable manifest {path}: {exc}") from exc
    missing = [key for key in ("files", *required) if key not in manifest]
    if missing:
        raise ArtifactError(f"manifest {path} lacks {missing}")
    return manifest


def verify_files(
    service: str, version_dir: Path, manifest: Mapping[str, Any], required: Sequence[str]
) -> None:
    """Every file the manifest lists exists with its recorded sha256, and the ``required`` ones are listed."""
    from common.blobstore import sha256_file

    for name in required:
        if name not in manifest["files"]:
            raise ArtifactError(f"manifest of {version_dir} lists no {name}")
    for name, expected in manifest["files"].items():
        path = version_dir / name
        if not path.is_file():
            raise ArtifactError(f"{service} artifact file {path} is missing")
        if (actual := sha256_file(path)) != expected:
            raise ArtifactError(f"{path} has sha256 {actual}, the manifest says {expected}")


def publish_version(staging: Path, model_dir: Path) -> Path:
    """Rename a fully written staging directory to the next version number: readers of the repository
    never see a half-written version, and two trainers never take the same number."""
    while True:
        versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        target = model_dir / str(max(versions, default=0) + 1)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            continue  # another run took that number first
        log.info("published %s", target)
        return target


def latest_version_dir(model_dir: Path) -> Path | None:
    """Triton-style layout: ``<repo>/<model>/<version>/``; the highest numeric version wins."""
    if not model_dir.is_dir():
        return None
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name), default=None)

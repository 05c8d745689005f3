"""The model repository: ``<repo>/<service>/<version>/`` with a ``manifest.json`` (Triton's layout).

The one place a manifest is written and read. ``Manifest`` holds what every version records (service,
framework, training config and time, metrics, the sha256 of every file); each service subclasses it
with its own typed fields (``ClassifierManifest``, ``RCNNManifest``, ``SegmenterManifest``) beside its
settings. Versions are written into a staging directory and renamed into place (``publish_version``):
readers never see a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.blobstore import sha256_file
from common.errors import ArtifactError

log = logging.getLogger(__name__)

# file names every version directory shares; the model files are named by each service's config
MANIFEST = "manifest.json"
PREDICTIONS = "predictions_test.json"  # the version's own predictions on its test split
METRICS = "metrics.json"
STAGING_PREFIX = ".staging-"


class Manifest(BaseModel):
    """What every version's ``manifest.json`` holds. Keys a service adds without declaring them are kept
    (``extra="allow"``), so a version written by newer code still loads and round-trips."""

    model_config = ConfigDict(extra="allow")

    name: str  # the service
    framework: str
    files: dict[str, str]  # file name → sha256, every file of the version but the manifest
    train_config: dict[str, Any] = Field(default_factory=dict)
    train_seconds: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


M = TypeVar("M", bound=Manifest)


def read_manifest(service: str, version_dir: Path, kind: type[M]) -> M:
    """A version's manifest as ``kind``, refused with the reason when absent, unreadable or incomplete."""
    path = version_dir / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ArtifactError(f"{service} artifact {version_dir} has no {MANIFEST}") from None
    try:
        return kind.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"unreadable manifest {path}: {exc}") from exc
    except ValidationError as exc:
        missing = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing"]
        if missing:
            raise ArtifactError(f"manifest {path} lacks {missing}") from exc
        raise ArtifactError(f"invalid manifest {path}: {exc}") from exc


def manifest_problem(version_dir: Path) -> str | None:
    """Why ``version_dir`` cannot be offered (no or unreadable manifest), or None; cheap: the full check
    is the loading worker's (``read_manifest``, ``verify_files``)."""
    path = version_dir / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST} in {version_dir}"
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return f"unreadable manifest {path}: {exc}"
    return None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))


def hash_files(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """File name → sha256, for a manifest's ``files``."""
    return {name: sha256_file(directory / name) for name in names}


def verify_files(service: str, version_dir: Path, manifest: Manifest, required: Sequence[str]) -> None:
    """Every file the manifest lists exists with its recorded sha256, and the ``required`` ones are listed."""
    for name in required:
        if name not in manifest.files:
            raise ArtifactError(f"manifest of {version_dir} lists no {name}")
    for name, expected in manifest.files.items():
        path = version_dir / name
        if not path.is_file():
            raise ArtifactError(f"{service} artifact file {path} is missing")
        if (actual := sha256_file(path)) != expected:
            raise ArtifactError(f"{path} has sha256 {actual}, the manifest says {expected}")


def staging_dir(model_dir: Path) -> Path:
    """A fresh directory beside the versions to write the next one into (then ``publish_version``)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))


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

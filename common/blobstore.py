"""Where image bytes live. Content-addressed keys make a second put of the same bytes a no-op.

The pipeline only talks to ``BlobStore``; ``LocalBlobStore`` is the default. An S3-compatible store
implements the same methods (``put`` with If-None-Match, ``get``, ``exists``, ``delete``, and ``writer``
for a blob streamed in pieces: a multipart upload).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobWriter(Protocol):
    """A blob written in pieces: invisible under its key until ``commit``; ``abort`` leaves nothing."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def writer(self, key: str) -> BlobWriter: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (model artifacts are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_key(sha256: str) -> str:
    """``images/ab/cd/abcd...``: two fan-out levels keep directories small on a local disk."""
    return f"images/{sha256[:2]}/{sha256[2:4]}/{sha256}"


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"blob key {key!r} escapes the store root {self.root}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: readers never see a half-written blob, and concurrent writers of the same
        # content-addressed key both end with the same complete file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def writer(self, key: str) -> BlobWriter:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _LocalWriter(path)


class _LocalWriter:
    """A temporary file beside the blob, renamed onto it on commit (readers never see half a blob)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        self._tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def commit(self) -> None:
        self._handle.close()
        os.replace(self._tmp, self._path)

    def abort(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)


def blob_store(root: Path) -> BlobStore:
    return LocalBlobStore(root)

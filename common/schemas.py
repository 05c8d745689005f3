"""The wire contract of the public API (gateway) — shared so that clients and the CLI use the same types."""

from __future__ import annotations

import enum
import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ITEMS_PER_JOB = 10_000
MAX_EXTERNAL_ID_CHARS = 256  # the column's width
MAX_FILENAME_CHARS = 255  # what file systems allow

# PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8: both are refused as
# bad input where a client sends them, not discovered by the database driver
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL character, a lone surrogate), or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    what = "a NUL character" if found.group() == "\x00" else "a lone surrogate"
    return f"contains {what} at offset {found.start()}"


def check_text(value: str) -> str:
    problem = unstorable_text(value)
    if problem is not None:
        raise ValueError(f"text {problem}")
    return value


def _check_json_text(value: Any, path: str) -> None:
    """Every key and string of a JSON value, with the path of the first that cannot be stored."""
    if isinstance(value, str):
        if (problem := unstorable_text(value)) is not None:
            raise ValueError(f"value at {path or '/'} {problem}")
    elif isinstance(value, dict):
        for key, inner in value.items():
            if (problem := unstorable_text(key)) is not None:
                raise ValueError(f"key {path}/{key.encode('unicode_escape').decode()} {problem}")
            _check_json_text(inner, f"{path}/{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_json_text(inner, f"{path}/{i}")


class ItemStatus(enum.StrEnum):
    """Where a submitted item is: queued → fetching → analysing → done | failed (the two terminal ones)."""

    queued = "queued"
    fetching = "fetching"
    analysing = "analysing"
    done = "done"
    failed = "failed"


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # any string is accepted here; what the fetcher refuses (file://, private addresses...) ends the
    # item as failed with an error code, so every submitted URL leaves a recorded state
    url: str = Field(min_length=1, max_length=4096)
    external_id: str | None = Field(default=None, max_length=MAX_EXTERNAL_ID_CHARS)
    metadata: dict[str, Any] | None = Field(
        default=None, description="any JSON object, returned with the image (size limited by the gateway)"
    )

    @field_validator("url", "external_id")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_json_text(value, "")
        return value


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_JOB)
    # checked against the service registry where a job is created (``services.registry.check_models``):
    # the wire contract does not depend on the services
    models: list[str] | None = Field(
        default=None, min_length=1, description="subset of the model services; all by default"
    )
    explain: bool = Field(
        default=False,
        description="also store a Grad-CAM overlay (PNG) per classifier head, for people to look at",
    )


class ItemRef(BaseModel):
    id: uuid.UUID
    position: int
    url: str | None = None
    filename: str | None = None
    external_id: str | None = None


class JobCreated(BaseModel):
    job_id: uuid.UUID
    models: list[str]
    items: list[ItemRef]


class ItemSummary(BaseModel):
    id: uuid.UUID
    position: int
    status: ItemStatus
    error_code: str | None = None


class JobView(BaseModel):
    id: uuid.UUID
    models: list[str]
    item_count: int
    counts: dict[ItemStatus, int]
    created_at: datetime
    dispatched_at: datetime | None
    finished_at: datetime | None
    items: list[ItemSummary] = Field(
        description="the first ``items_limit`` items (none by default); page through "
        "``/v1/jobs/{id}/items`` instead"
    )


class JobItemPage(BaseModel):
    """A page of a job's items in submission order; ``next_after`` is the ``after`` of the next page."""

    items: list[ItemSummary]
    next_after: int | None


class Problem(BaseModel):
    """An error answer other than 422."""

    detail: str


class Refusal(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class RefusedInput(BaseModel):
    """A 422: each refused field, where it is (``loc``) and why (``msg``)."""

    detail: list[Refusal]


class ModelState(BaseModel):
    status: Literal["pending", "done", "failed", "skipped"]
    version: str | None = None
    reason: str | None = None
    inference_ms: float | None = None


class ItemFailure(BaseModel):
    code: str
    detail: str | None


class ImageView(BaseModel):
    """One submitted image: its state, its stored image and the merged record of every model."""

    id: uuid.UUID
    job_id: uuid.UUID
    position: int
    url: str | None
    filename: str | None
    external_id: str | None
    metadata: dict[str, Any] | None
    status: ItemStatus
    error: ItemFailure | None
    sha256: str | None
    models: dict[str, ModelState]
    record: dict[str, Any] | None
    timestamps: dict[str, datetime | None]


class ImagePage(BaseModel):
    items: list[ImageView]
    next_cursor: str | None

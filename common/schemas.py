"""The wire contract of the public API (gateway) — shared so that clients and the CLI use the same types."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ITEMS_PER_JOB = 10_000


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
    external_id: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Any] | None = None


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_JOB)
    # checked against the service registry where a job is created (``services.registry.check_models``):
    # the wire contract does not depend on the services
    models: list[str] | None = Field(default=None, description="subset of the model services; all by default")
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
    items: list[ItemSummary]


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

"""The schema. Changes go through Alembic migrations in ``db/migrations``; tests use the migrations too."""

from __future__ import annotations

import enum
import os
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.outputs import EMBEDDING_DIM
from common.schemas import ItemStatus

_uuid7_lock = threading.Lock()
_uuid7_last = [0, 0]  # last millisecond, counter within it


def uuid7() -> uuid.UUID:
    """Time-ordered UUID (RFC 9562 version 7) with a 12-bit counter in ``rand_a`` (its method 1), so
    ids made by one process are strictly increasing: keyset pagination returns a job's items in order."""
    with _uuid7_lock:
        ms = max(time.time_ns() // 1_000_000, _uuid7_last[0])
        counter = _uuid7_last[1] + 1 if ms == _uuid7_last[0] else 0
        if counter > 0xFFF:
            ms, counter = ms + 1, 0
        _uuid7_last[:] = [ms, counter]
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand)


class ResultStatus(enum.StrEnum):
    pending = "pending"
    done = "done"
    failed = "failed"


class Base(DeclarativeBase):
    pass


def _ts(nullable: bool = True) -> Mapped[datetime | None]:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    models: Mapped[list[str]] = mapped_column(ARRAY(String(64)), nullable=False)
    item_count: Mapped[int] = mapped_column(Integer, nullable=False)
    # decremented once per item reaching done/failed; the update that reaches 0 stamps finished_at
    pending_items: Mapped[int] = mapped_column(Integer, nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # the outbox: set once the dispatch message was handed to the broker (by the gateway, else by the
    # reconciler); dispatched_at once the orchestrator expanded the job into fetches
    published_at: Mapped[datetime | None] = _ts()
    dispatched_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        Index("ix_jobs_undispatched", "created_at", postgresql_where=text("dispatched_at IS NULL")),
    )


class Item(Base):
    """One submitted URL or upload. Every item ends in ``done`` or ``failed`` with a reason."""

    __tablename__ = "items"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    url: Mapped[str | None] = mapped_column(Text)
    upload_key: Mapped[str | None] = mapped_column(String(200))
    filename: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(256))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    status: Mapped[ItemStatus] = mapped_column(
        Enum(ItemStatus, name="item_status"), nullable=False, default=ItemStatus.queued
    )
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    image_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("images.id"))
    # model name -> version this item waits for, fixed when its image is attached
    expected: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, default=dict, server_default="{}")
    # model name -> {"reason": ...} for requested models that were unavailable (never a made-up result)
    skipped: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict, server_default="{}")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    fetch_started_at: Mapped[datetime | None] = _ts()
    claimed_at: Mapped[datetime | None] = _ts()  # the latest delivery of its fetch
    fetched_at: Mapped[datetime | None] = _ts()
    analysed_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        Index("ix_items_job_position", "job_id", "position"),
        Index("ix_items_job_status_position", "job_id", "status", "position"),
        Index("ix_items_external_id", "external_id"),
        Index("ix_items_image_status", "image_id", "status"),
        Index("ix_items_status_id", "status", "id"),
    )


class Image(Base):
    """Content-addressed: one row per distinct byte string, whatever URL it came from."""

    __tablename__ = "images"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    blob_key: Mapped[str] = mapped_column(String(200), nullable=False)
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class ModelResult(Base):
    """One model's output for one image, keyed by (image, model, version): a redelivered task finds
    its row already ``done`` and changes nothing."""

    __tablename__ = "model_results"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), nullable=False)
    model_name: Mapped[str] = mapped_column(String(64), nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[ResultStatus] = mapped_column(Enum(ResultStatus, name="result_status"), nullable=False)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by_item: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # what the analysis was asked for beyond its output, e.g. {"explain": true} for Grad-CAM overlays
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict, server_default="{}")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    batch_size: Mapped[int | None] = mapped_column(Integer)
    inference_ms: Mapped[float | None]
    queued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        UniqueConstraint("image_id", "model_name", "model_version", name="uq_model_result"),
        Index("ix_model_results_pending", "model_name", postgresql_where=text("status = 'pending'")),
    )


class Embedding(Base):
    """Visual-search vectors (the classifier's penultimate layer), searchable by cosine distance."""

    __tablename__ = "embeddings"

    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIM), nullable=False)

    __table_args__ = (
        Index(
            "ix_embeddings_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )


class ImageRecord(Base):
    """The merged record: every finished model's output for an image, rebuilt by the last finisher."""

    __tablename__ = "image_records"

    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    model_versions: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class ServedVersion(Base):
    """A model version some worker serves (``db.versions``): the orchestrator routes new analyses to the
    version started most recently, and reads here instead of the model repository's files."""

    __tablename__ = "served_versions"

    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    # the last time a worker started serving it: the newest start is the current version
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # the last heartbeat of any worker serving it: live while recent
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ApiKey(Base):
    """A gateway API key (``db.keys``). The secret itself is never stored: only its SHA-256, which the
    gateway looks up, and a short prefix of it that people recognise the key by."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="", server_default="")
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # "submit", "read", "admin" (admin implies the others)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)), nullable=False)
    # this key's own limits; None: the gateway's defaults (ATELIER_GATEWAY_KEY_RATE_LIMIT, ..._ITEMS_PER_DAY)
    rate_limit: Mapped[str | None] = mapped_column(String(64))
    items_per_day: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    revoked_at: Mapped[datetime | None] = _ts()
    # refreshed at most once a minute per key (db.keys.TOUCH_INTERVAL), not on every request
    last_used_at: Mapped[datetime | None] = _ts()

    __table_args__ = (
        UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
        CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY['submit', 'read', 'admin']::varchar[]",
            name="ck_api_keys_scopes",
        ),
        CheckConstraint("items_per_day IS NULL OR items_per_day >= 0", name="ck_api_keys_items_per_day"),
    )

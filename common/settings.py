"""Settings shared by every deployable. Each deployable adds its own class with its own env prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"atelier", "change-me", "changeme", "secret", "password", "postgres"})


class FetchSettings(BaseModel):
    """Limits of the safe image fetcher (``common.fetch``)."""

    connect_timeout_s: float = Field(
        default=5.0, description="Seconds to wait for a connection to an image host."
    )
    read_timeout_s: float = Field(
        default=10.0, description="Seconds to wait between two reads of an image download."
    )
    deadline_s: float = Field(
        default=30.0,
        description="Seconds one whole download may take: DNS, connects, TLS, redirects and body.",
    )
    slow_after_s: float = Field(
        default=5.0,
        description="Seconds after which a download counts as slow: to go on it must take one of the "
        "process's slow slots, else it stops (slow_host, retried later). At or above DEADLINE_S: off.",
    )
    max_slow: int = Field(
        default=4,
        ge=0,
        description="Slow downloads one worker process runs at once; keep it below the orchestrator's "
        "threads, so slow or endless hosts never hold them all.",
    )
    max_slow_per_host: int = Field(
        default=2, ge=0, description="Slow downloads from one host name that one worker process runs at once."
    )
    max_bytes: int = Field(default=25 * 1024 * 1024, description="Largest image download, in bytes (25 MiB).")
    max_redirects: int = Field(default=5, description="Most redirects followed for one URL.")
    max_pixels: int = Field(default=64_000_000, description="Largest decoded image, in pixels.")
    user_agent: str = Field(
        default="AtelierFetcher/0.1 (+https://github.com/atelier)",
        description="User-Agent header of the fetcher.",
    )
    # tests put their local image server here. Only the exact authority is exempt: a redirect to another
    # port is refused.
    allow_hosts: list[str] = Field(
        default_factory=list,
        description='JSON list of "host:port" exempt from the private-address checks; empty in production.',
    )


class QueueSettings(BaseModel):
    """One Celery queue per concern, so operators scale each service on its own. A service not named
    here (a new one) has a queue of its own name, or ``ATELIER_QUEUES__<NAME>``."""

    model_config = ConfigDict(extra="allow")

    orchestrator: str = Field(
        default="orchestrator",
        description="Queue of the orchestrating worker: job dispatch and image fetching.",
    )
    properties: str = Field(default="properties", description="Queue of the properties service.")
    classifier: str = Field(default="classifier", description="Queue of the classifier service.")
    detector: str = Field(default="detector", description="Queue of the detector service.")
    segmenter: str = Field(default="segmenter", description="Queue of the segmenter service.")

    def for_service(self, name: str) -> str:
        """The queue of model service ``name``."""
        return str(getattr(self, name, None) or name)


class CoreSettings(BaseSettings):
    """``ATELIER_*``: where the shared infrastructure is."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", env_nested_delimiter="__", extra="ignore")

    environment: str = Field(
        default="development",
        description='"development" allows the placeholder database password; anything else refuses it.',
    )
    database_url: str = Field(
        default="postgresql+psycopg://atelier:atelier@localhost:5432/atelier",
        description="SQLAlchemy URL of Postgres with pgvector.",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0", description="The Celery broker (Valkey or Redis)."
    )
    blob_dir: Path = Field(
        default=Path(".atelier/blobs"), description="Where uploaded and fetched images are kept."
    )
    model_repository: Path = Field(
        default=Path(".atelier/models"), description="The model repository (<model>/<version>/manifest.json)."
    )
    # the gateway answers on anyio's 40 worker threads: 10 + 30 connections means a request never waits
    # for a connection while holding a thread (Postgres allows 100 by default; workers hold a few each)
    database_pool_size: int = Field(default=10, description="Database connections each process keeps open.")
    database_max_overflow: int = Field(
        default=30, description="Connections a process may open beyond the pool under load."
    )
    database_pool_timeout_s: float = Field(
        default=10.0, description="Seconds a request waits for a free database connection before failing."
    )
    queues: QueueSettings = Field(
        default_factory=QueueSettings,
        description="Queue names, one per concern; the gateway and every worker must agree.",
    )
    fetch: FetchSettings = Field(default_factory=FetchSettings, description="The image fetcher's limits.")
    log_level: str = Field(
        default="INFO",
        description="Log level of the gateway and the workers (`atelier worker --loglevel` overrides it).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description='"text" for people at a terminal; "json": one JSON object a line, with the job, item and '
        "result ids, for a log collector.",
    )

    @model_validator(mode="after")
    def _refuse_placeholder_credentials(self) -> CoreSettings:
        password = urlsplit(self.database_url).password
        if self.environment != "development" and password is not None and password in PLACEHOLDER_SECRETS:
            raise ValueError(
                f"refusing to start in {self.environment!r} with the placeholder database password "
                f"{password!r}; set a real one in ATELIER_DATABASE_URL"
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver named, whatever form the operator gave."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


@lru_cache
def get_settings() -> CoreSettings:
    """The process-wide settings, read once. The embedded stack and the tests set the environment
    first and call ``get_settings.cache_clear()`` when they change it."""
    return CoreSettings()

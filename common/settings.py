"""Settings shared by every deployable. Each deployable adds its own class with its own env prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"atelier", "change-me", "changeme", "secret", "password", "postgres"})


class FetchSettings(BaseModel):
    """Limits of the safe image fetcher (``common.fetch``)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    deadline_s: float = 30.0
    max_bytes: int = 25 * 1024 * 1024
    max_redirects: int = 5
    max_pixels: int = 64_000_000
    user_agent: str = "AtelierFetcher/0.1 (+https://github.com/atelier)"
    # "host:port" pairs exempt from the address checks. Empty in production; tests put their local
    # image server here. Only the exact authority is exempt: a redirect to another port is refused.
    allow_hosts: list[str] = Field(default_factory=list)


class QueueSettings(BaseModel):
    """One Celery queue per concern, so operators scale each service on its own."""

    orchestrator: str = "orchestrator"
    properties: str = "properties"
    classifier: str = "classifier"
    detector: str = "detector"
    segmenter: str = "segmenter"


class CoreSettings(BaseSettings):
    """``ATELIER_*``: where the shared infrastructure is."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", env_nested_delimiter="__", extra="ignore")

    environment: str = "development"
    database_url: str = "postgresql+psycopg://atelier:atelier@localhost:5432/atelier"
    redis_url: str = "redis://localhost:6379/0"
    blob_dir: Path = Path(".atelier/blobs")
    model_repository: Path = Path(".atelier/models")
    queues: QueueSettings = Field(default_factory=QueueSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    log_level: str = "INFO"
    # "text" for people at a terminal; "json" (one object a line, with job and item ids) for collectors
    log_format: Literal["text", "json"] = "text"

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

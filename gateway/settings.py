"""``ATELIER_GATEWAY_*``: the HTTP API."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_GATEWAY_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Listening address.")
    port: int = Field(default=8000, description="Listening port.")
    max_upload_bytes: int = Field(
        default=25 * 1024 * 1024, description="Largest uploaded file, in bytes (25 MiB)."
    )
    max_upload_files: int = Field(default=1000, description="Most files in one upload request.")
    page_size: int = Field(default=100, description="Default page size of the image listing.")
    max_page_size: int = Field(default=1000, description="Largest page size a client may ask for.")
    readiness_timeout_s: float = Field(default=2.0, description="Seconds /readyz waits for the broker.")


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    return GatewaySettings()

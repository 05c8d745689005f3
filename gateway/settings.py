"""``ATELIER_GATEWAY_*``: the HTTP API."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 25 * 1024 * 1024
    max_upload_files: int = 1000
    page_size: int = 100
    max_page_size: int = 1000
    readiness_timeout_s: float = 2.0


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    return GatewaySettings()

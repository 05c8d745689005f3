"""``ATELIER_GATEWAY_*``: the HTTP API."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.ratelimit import parse_rate


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_GATEWAY_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Listening address.")
    port: int = Field(default=8000, description="Listening port.")
    max_upload_bytes: int = Field(
        default=25 * 1024 * 1024, description="Largest uploaded file, in bytes (25 MiB)."
    )
    # 100 product photos per request is a catalogue page; more belong in several requests or in a URL
    # job (10,000 items). 1,000 x 25 MiB let one request hold 25 GB of a gateway's disk and memory.
    max_upload_files: int = Field(default=100, description="Most files in one upload request.")
    max_upload_request_bytes: int = Field(
        default=256 * 1024 * 1024,
        description="Largest upload request body, all files and fields together, in bytes (256 MiB); "
        "refused with 413 while it streams in.",
    )
    max_json_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        description="Largest JSON request body, in bytes (16 MiB: 10,000 items with URLs, ids and small "
        "metadata); refused with 413 while it streams in.",
    )
    max_metadata_bytes: int = Field(
        default=8 * 1024,
        description="Largest metadata of one item, as serialized JSON bytes (8 KiB); it is returned on every "
        "read of the item.",
    )
    max_form_field_bytes: int = Field(
        default=64 * 1024, description="Largest non-file field of an upload form, in bytes (64 KiB)."
    )
    page_size: int = Field(default=100, description="Default page size of the image listing.")
    max_page_size: int = Field(default=1000, description="Largest page size a client may ask for.")
    readiness_timeout_s: float = Field(default=2.0, description="Seconds /readyz waits for the broker.")
    # --- who may do what (gateway/auth.py) ---
    require_keys: bool | None = Field(
        default=None,
        description="Whether every route but /healthz, /readyz, /metrics and the API docs needs an API key "
        "(atelier keys create). Unset: required unless ATELIER_ENVIRONMENT is development.",
    )
    key_rate_limit: str = Field(
        default="50/second",
        description='Requests one API key may make, as "N/second" (or minute, hour, day), counted in a '
        "sliding window in Valkey; a key's own limit (keys create --rate-limit) replaces it.",
    )
    key_items_per_day: int = Field(
        default=100_000,
        ge=0,
        description="Items (URLs and files) one API key may submit in any 24 hours; a key's own quota "
        "(keys create --items-per-day) replaces it.",
    )
    anonymous_rate_limit: str = Field(
        default="1000/second",
        description="Requests one client address may make without a key, where keys are not required "
        "(development); the embedded stack and the tests stay far below it.",
    )
    rate_limit_timeout_s: float = Field(
        default=0.5,
        description="Seconds the gateway waits for Valkey to count a request; past it (or with Valkey "
        "down) the request is served uncounted and a warning logged.",
    )

    @field_validator("key_rate_limit", "anonymous_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    def keys_required(self, environment: str) -> bool:
        """``require_keys``, or when unset, whether ``environment`` (ATELIER_ENVIRONMENT) is not
        development."""
        return self.require_keys if self.require_keys is not None else environment != "development"


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    return GatewaySettings()

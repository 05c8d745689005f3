"""What the ``infra`` fixture (tests/conftest.py) gives a test: the servers it runs against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthetic.imageserver import ImageServer


@dataclass(frozen=True)
class Infra:
    database_url: str
    redis_url: str
    home: Path
    images: ImageServer
    silent_port: int

"""Rows for tests, made through the same code paths the application uses."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from common.schemas import ItemIn
from db import jobs, pipeline


def make_job(session: Session, n_items: int = 1, models: Sequence[str] = ("properties",)) -> list[uuid.UUID]:
    created = jobs.create_job(
        session, items=[ItemIn(url=f"http://img.example/{i}.jpg") for i in range(n_items)], models=models
    )
    return [ref.id for ref in created.items]


def stored_image(seed: str) -> pipeline.StoredImage:
    sha = hashlib.sha256(seed.encode()).hexdigest()
    return pipeline.StoredImage(sha, f"images/{sha}", "JPEG", 64, 48, 1234)

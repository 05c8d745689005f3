"""Log lines for people (``text``) or for collectors (``json``: one object a line, python-json-logger),
both carrying the ids of the job, item and result being worked on.

``log_context(job_id=..., item_id=...)`` binds ids for the code inside it (a context variable, so each
thread of a threads-pool worker has its own); every record logged meanwhile carries them.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("job_id", "item_id", "image_id", "result_id", "service")
_NONE: dict[str, str] = {}  # never mutated: bind() makes a new dict
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("atelier_log", default=_NONE)  # noqa: B039

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s"


def bind(**ids: Any) -> contextvars.Token[dict[str, str]]:
    """Bind ids (None values are left out) until ``unbind(token)``."""
    return _context.set({**_context.get(), **{k: str(v) for k, v in ids.items() if v is not None}})


def unbind(token: contextvars.Token[dict[str, str]]) -> None:
    _context.reset(token)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Bind ids for the records logged inside the block."""
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Puts the bound ids on each record: as attributes (JSON fields) and as ``ids`` (text suffix)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        for field in CONTEXT_FIELDS:
            if field in bound and not hasattr(record, field):
                setattr(record, field, bound[field])
        record.ids = "".join(f" {k}={bound[k]}" for k in CONTEXT_FIELDS if k in bound)
        return True


# the attributes every LogRecord has: not copied into the JSON object as extra fields
_RESERVED = list(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) + ["message", "asctime", "taskName"]


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        reserved_attrs=[*_RESERVED, "ids"],
        timestamp=False,
    )


def configure_logging(level: str | int, fmt: str) -> None:
    """One handler on the root logger, to stderr; replaces what was there. Celery's and uvicorn's own
    loggers propagate to it (the worker does not hijack the root logger, the gateway passes uvicorn no
    log config)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)

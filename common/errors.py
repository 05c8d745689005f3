"""Item-level failures with stable codes: what the pipeline stores on an item that could not be analysed."""

from __future__ import annotations


class ItemError(Exception):
    """A failure of one submitted item, identified by a stable machine-readable ``code``.

    ``transient`` errors (timeouts, 5xx, connection resets) are retried with backoff; the rest end
    the item as failed at once. ``detail`` quotes the value that was refused.
    """

    def __init__(self, code: str, detail: str, *, transient: bool = False) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.transient = transient


class ArtifactError(RuntimeError):
    """A model artifact is missing or does not match its manifest; raised at load time, never per request."""

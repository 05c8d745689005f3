"""What ``atelier analyze`` prints shows user input as given: URLs and file names are never Rich markup."""

from __future__ import annotations

import uuid
from io import StringIO
from typing import Any

import pytest
from rich.console import Console, Group

from atelier.cli import err
from atelier.report import analysis_report
from common.schemas import ImageView, ItemFailure, ItemStatus

HOSTILE_URL = "http://images.example/a[/x]b[red]c[/red]:x:[link=http://evil.example]d.jpg"
HOSTILE_FILE = "[bold]look[/]:smile:.png"


def view(position: int, **fields: Any) -> ImageView:
    base: dict[str, Any] = {
        "id": uuid.uuid4(),
        "job_id": uuid.uuid4(),
        "position": position,
        "url": None,
        "filename": None,
        "external_id": None,
        "metadata": None,
        "status": ItemStatus.done,
        "error": None,
        "sha256": None,
        "models": {},
        "record": None,
        "timestamps": {},
    }
    return ImageView(**(base | fields))


def rendered(renderable: Any) -> str:
    # a console with markup and emoji on, as Rich's defaults are: the table itself must be safe
    buffer = StringIO()
    Console(file=buffer, width=400, color_system=None).print(renderable)
    return buffer.getvalue()


def test_table_shows_urls_and_file_names_verbatim() -> None:
    # given a failed URL and a done upload whose names look like Rich markup and emoji codes
    views = [
        view(
            0,
            url=HOSTILE_URL,
            status=ItemStatus.failed,
            error=ItemFailure(code="http_error", detail="HTTP 404"),
        ),
        view(1, filename=HOSTILE_FILE),
    ]

    # when
    output = rendered(Group(*analysis_report([v.model_dump(mode="json") for v in views])))

    # then both appear character for character, and the error code too
    assert HOSTILE_URL in output
    assert HOSTILE_FILE in output
    assert "http_error" in output


def test_messages_on_stderr_are_not_markup(capsys: pytest.CaptureFixture[str]) -> None:
    err.print(f"failed {HOSTILE_URL}: http_error: HTTP 404")

    assert f"failed {HOSTILE_URL}: http_error: HTTP 404" in capsys.readouterr().err

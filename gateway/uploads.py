"""A multipart upload read as it arrives: each file is written straight into the blob store, its size
capped while it streams, and every blob of a request that fails is deleted.

Starlette's own form parser spools each file to a temporary file first (to disk past 1 MiB), and an
over-large file is only found once it has been spooled whole; here nothing is held but the part being
read, and the first byte past a cap ends the request."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import HTTPException, status
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from common.blobstore import BlobStore, BlobWriter
from common.schemas import MAX_FILENAME_CHARS, unstorable_text
from db.jobs import upload_key

FILES_FIELD = "files"
# the most header bytes of one part (Content-Disposition with a long file name, Content-Type)
_MAX_PART_HEADERS = 16 * 1024


def unprocessable(loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": loc, "msg": msg, "type": "value_error"}]
    )


@dataclass
class StoredFile:
    filename: str
    key: str
    size: int = 0


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    writer: BlobWriter | None = None
    stored: StoredFile | None = None


class UploadReader:
    """Feed it the body's chunks (``feed``, blocking: call it off the event loop), then ``finish``.
    ``files`` are in the blob store under their keys; ``fields`` hold every other form field's values.
    ``discard`` deletes what was written; it is what a failed request must call."""

    def __init__(
        self,
        store: BlobStore,
        content_type: str,
        *,
        max_files: int,
        max_file_bytes: int,
        max_field_bytes: int,
    ) -> None:
        media_type, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"expected multipart/form-data with a boundary, got {content_type!r}",
            )
        self.store = store
        self.max_files, self.max_file_bytes, self.max_field_bytes = max_files, max_file_bytes, max_field_bytes
        self.files: list[StoredFile] = []
        self.fields: dict[str, list[str]] = {}
        self._part = _Part()
        self._field_name, self._field_value = bytearray(), bytearray()
        self._header_bytes = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise unprocessable(["body"], f"malformed multipart body: {exc}") from exc

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise unprocessable(["body"], f"malformed multipart body: {exc}") from exc
        if self._part.writer is not None or self._part.name is not None:
            raise unprocessable(["body"], "the multipart body ends inside a part")

    def discard(self) -> None:
        if self._part.writer is not None:
            self._part.writer.abort()
            self._part.writer = None
        for stored in self.files:
            self.store.delete(stored.key)
        self.files.clear()

    # the parser's callbacks, in the order it calls them

    def _begin(self) -> None:
        self._part = _Part()
        self._header_bytes = 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > _MAX_PART_HEADERS:
            raise unprocessable(["body"], f"a part's headers exceed {_MAX_PART_HEADERS} bytes")

    def _header_end(self) -> None:
        self._part.headers.append((bytes(self._field_name).lower(), bytes(self._field_value)))
        self._field_name, self._field_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        part = self._part
        disposition = next((v for k, v in part.headers if k == b"content-disposition"), None)
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise unprocessable(["body"], "a part has no Content-Disposition: form-data with a name")
        part.name = self._text(options[b"name"], ["body"], "a field name")
        if b"filename" in options:
            part.filename = self._text(options[b"filename"], ["body", part.name, "filename"], "a file name")
        if part.name == FILES_FIELD:
            if part.filename is None:  # a text field under the files' name, not a file
                raise unprocessable(["body", FILES_FIELD, len(self.files)], "a file part needs a filename")
            self._open_file(part)

    def _open_file(self, part: _Part) -> None:
        index = len(self.files)
        if index >= self.max_files:
            raise unprocessable(["body", FILES_FIELD], f"at most {self.max_files} files per request")
        filename = part.filename or f"upload-{index}"
        if len(filename) > MAX_FILENAME_CHARS:
            raise unprocessable(
                ["body", FILES_FIELD, index, "filename"],
                f"file name of {len(filename)} characters; at most {MAX_FILENAME_CHARS}",
            )
        part.stored = StoredFile(filename, upload_key())
        part.writer = self.store.writer(part.stored.key)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.stored is not None and part.writer is not None:
            part.stored.size += end - start
            if part.stored.size > self.max_file_bytes:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"file {part.stored.filename!r} is larger than {self.max_file_bytes} bytes",
                    headers={"Connection": "close"},
                )
            part.writer.write(data[start:end])
        elif part.name is not None:
            part.text += data[start:end]
            if len(part.text) > self.max_field_bytes:
                raise unprocessable(
                    ["body", part.name], f"form field longer than {self.max_field_bytes} bytes"
                )

    def _end(self) -> None:
        part = self._part
        if part.writer is not None and part.stored is not None:
            part.writer.commit()
            part.writer = None
            self.files.append(part.stored)
        elif part.name is not None:
            value = self._text(bytes(part.text), ["body", part.name], "a form field")
            self.fields.setdefault(part.name, []).append(value)
        self._part = _Part()

    @staticmethod
    def _text(raw: bytes, loc: list[str | int], what: str) -> str:
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise unprocessable(loc, f"{what} is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
        if (problem := unstorable_text(value)) is not None:
            raise unprocessable(loc, f"{what} {problem}")
        return value

"""A local stand-in for the remote image hosts: the only part of the outside world the tests replace."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

Response = tuple[int, dict[str, str], bytes]


def jpeg_bytes(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def garment_photo(colour: tuple[int, int, int], size: int = 256, background: int = 245) -> Image.Image:
    """A studio-style shot: a plain light background with a garment-like shape in one colour."""
    arr = np.full((size, size, 3), background, dtype=np.uint8)
    s = size
    arr[s // 5 : s * 4 // 5, s // 3 : s * 2 // 3] = colour  # body
    arr[s // 5 : s * 2 // 5, s // 6 : s * 5 // 6] = colour  # sleeves
    return Image.fromarray(arr)


@dataclass
class ImageServer:
    host: str
    port: int
    routes: dict[str, Response | Callable[[], Response]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


@contextmanager
def serve() -> Iterator[ImageServer]:
    server_state = ImageServer("127.0.0.1", 0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?")[0]
            server_state.hits[path] = server_state.hits.get(path, 0) + 1
            route = server_state.routes.get(path)
            status, headers, body = (
                (route() if callable(route) else route) if route else (404, {}, b"not found")
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (through the backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()

"""The SSRF-safe fetcher against real local servers on 127.0.0.1 (and ::1 where the host has it).

No test sends a packet anywhere else: an autouse guard fails any connection to another address, and
records every connection so refused cases can prove they never connected at all.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from common.errors import ItemError
from common.fetch import Fetched, SlowLane, fetch_url
from common.images import decode_image
from common.settings import FetchSettings

Respond = Callable[[BaseHTTPRequestHandler], None]


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


JPEG = encode(Image.new("RGB", (32, 24), (10, 120, 200)), "JPEG")
PNG = encode(Image.new("RGB", (16, 16), (250, 0, 0)), "PNG")


# --- a real HTTP server ------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    """A threaded HTTP server whose routes each test sets; it records every request it receives."""

    httpd: ThreadingHTTPServer
    routes: dict[str, Respond] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        host = self.httpd.server_address[0]
        assert isinstance(host, str)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{path}"


def start_server(host: str = "127.0.0.1") -> Server:
    server: Server

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # http.server's naming
            self.close_connection = True  # one request per connection, like the fetcher's clients
            server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            respond = server.routes.get(self.path.split("?")[0])
            if respond is None:
                reply(self, 404, b"not found", "text/plain")
            else:
                respond(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Httpd(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server(Httpd((host, 0), Handler))
    threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop_server(server: Server) -> None:
    server.httpd.shutdown()
    server.httpd.server_close()


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    content_type: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def serve(body: bytes, content_type: str = "image/jpeg") -> Respond:
    return lambda handler: reply(handler, 200, body, content_type)


def status(code: int) -> Respond:
    return lambda handler: reply(handler, code, b"<h1>error</h1>", "text/html")


def redirect(location: str, headers: dict[str, str] | None = None) -> Respond:
    return lambda handler: reply(handler, 302, headers={"Location": location, **(headers or {})})


def chain(handler: BaseHTTPRequestHandler) -> None:
    """``/chain?left=N`` redirects (relatively) N more times, then serves the JPEG."""
    left = int(handler.path.partition("left=")[2])
    if left == 0:
        reply(handler, 200, JPEG, "image/jpeg")
    else:
        reply(handler, 302, headers={"Location": f"chain?left={left - 1}"})


def declares_huge_then_waits(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", "50000000")
    handler.end_headers()
    handler.wfile.flush()
    try:
        handler.rfile.read(1)  # returns once the client hangs up; reading the body would time out instead
    except OSError:
        pass


def chunked_stream(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = JPEG[:3] + b"\x00" * 65_533
    try:
        for _ in range(20):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client refused the body and hung up


def slow_drip(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for byte in (JPEG * 2)[:1000]:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)  # well inside the read timeout; only the total deadline can stop it
    except OSError:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = start_server()
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def other_server() -> Iterator[Server]:
    running = start_server()
    yield running
    stop_server(running)


@pytest.fixture(autouse=True)
def fresh_server(server: Server) -> None:
    server.routes.clear()
    server.seen.clear()


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the fetcher opens; anything but loopback fails the test before a packet."""
    opened: list[tuple[str, int]] = []
    real_create_connection = socket.create_connection

    def loopback_only(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        if not ip_address(address[0]).is_loopback:
            raise AssertionError(f"test tried to connect to {address}")
        opened.append((address[0], address[1]))
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    return opened


def make_settings(*allowed: str, **overrides: Any) -> FetchSettings:
    limits: dict[str, Any] = {
        "connect_timeout_s": 1.0,
        "read_timeout_s": 0.5,
        "deadline_s": 5.0,
        "max_bytes": 200_000,
        "max_redirects": 5,
        "max_pixels": 10_000,
        "user_agent": "AtelierTest/1.0",
    }
    return FetchSettings(allow_hosts=list(allowed), **{**limits, **overrides})


def settings_for(server: Server, **overrides: Any) -> FetchSettings:
    return make_settings(f"127.0.0.1:{server.port}", **overrides)


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver called for {host!r}:{port}; this URL must be judged without DNS")


def fetch_error(
    url: str, settings: FetchSettings, resolver: Callable[[str, int], list[str]] = no_dns
) -> ItemError:
    with pytest.raises(ItemError) as caught:
        fetch_url(url, settings, resolver=resolver)
    return caught.value


# --- successful fetches ------------------------------------------------------------------------------


def test_jpeg_is_fetched(server: Server) -> None:
    server.routes["/photo.jpg"] = serve(JPEG)

    fetched = fetch_url(server.url("/photo.jpg"), settings_for(server), resolver=no_dns)

    assert fetched == Fetched(
        data=JPEG, final_url=server.url("/photo.jpg"), content_type="image/jpeg", redirects=0
    )
    assert decode_image(fetched.data, 1_000_000).size == (32, 24)


def test_request_carries_user_agent_and_no_cookie(server: Server) -> None:
    server.routes["/photo.png"] = serve(PNG, "image/png")

    fetch_url(server.url("/photo.png"), settings_for(server), resolver=no_dns)

    [request] = server.seen
    assert request.headers["user-agent"] == "AtelierTest/1.0"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert "cookie" not in request.headers


def test_content_type_is_never_trusted(server: Server) -> None:
    server.routes["/photo"] = serve(PNG, "application/octet-stream")
    server.routes["/page"] = serve(b"<!doctype html><html><body>hi</body></html>", "image/jpeg")

    assert fetch_url(server.url("/photo"), settings_for(server)).data == PNG
    error = fetch_error(server.url("/page"), settings_for(server))

    assert error.code == "not_an_image"
    assert "<!doctyp" in error.detail


def test_empty_body_is_refused(server: Server) -> None:
    server.routes["/empty"] = serve(b"")

    assert fetch_error(server.url("/empty"), settings_for(server)).code == "empty_body"


def test_hostname_is_pinned_to_the_checked_address(server: Server) -> None:
    # given a hostname no real DNS knows, answered by the injected resolver and allow-listed with its port
    server.routes["/photo.jpg"] = serve(JPEG)
    lookups: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return ["127.0.0.1"]

    url = f"http://images.test:{server.port}/photo.jpg"

    # when
    fetched = fetch_url(url, make_settings(f"images.test:{server.port}"), resolver=resolver)

    # then the connection went to the resolved address, named the host in Host, and looked it up once
    assert fetched.final_url == url
    assert lookups == [("images.test", server.port)]
    assert server.seen[0].headers["host"] == f"images.test:{server.port}"


def test_environment_proxies_are_ignored(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes["/photo.jpg"] = serve(JPEG)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")

    assert fetch_url(server.url("/photo.jpg"), settings_for(server)).data == JPEG


def test_ipv6_literal_is_bracketed() -> None:
    try:
        v6 = start_server("::1")
    except OSError:
        pytest.skip("this host has no ::1")
    try:
        v6.routes["/photo.jpg"] = serve(JPEG)

        fetched = fetch_url(v6.url("/photo.jpg"), make_settings(f"[::1]:{v6.port}"), resolver=no_dns)

        assert fetched.data == JPEG
        assert v6.seen[0].headers["host"] == f"[::1]:{v6.port}"
    finally:
        stop_server(v6)


# --- what the caller decodes -------------------------------------------------------------------------


def test_truncated_jpeg_downloads_and_fails_to_decode(server: Server) -> None:
    big = encode(Image.effect_noise((64, 64), 64).convert("RGB"), "JPEG")
    server.routes["/cut.jpg"] = serve(big[: len(big) // 2])
    settings = settings_for(server)

    fetched = fetch_url(server.url("/cut.jpg"), settings)

    with pytest.raises(ItemError) as caught:
        decode_image(fetched.data, settings.max_pixels)
    assert caught.value.code == "truncated_image"


def test_decompression_bomb_downloads_and_is_refused_by_the_decoder(server: Server) -> None:
    server.routes["/bomb.png"] = serve(encode(Image.new("L", (300, 300)), "PNG"), "image/png")
    settings = settings_for(server, max_pixels=10_000)

    fetched = fetch_url(server.url("/bomb.png"), settings)

    with pytest.raises(ItemError) as caught:
        decode_image(fetched.data, settings.max_pixels)
    assert caught.value.code == "decompression_bomb"


# --- HTTP status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "transient"), [(404, False), (403, False), (408, True), (429, True), (500, True), (503, True)]
)
def test_http_errors_carry_their_status(server: Server, code: int, transient: bool) -> None:
    server.routes["/status"] = status(code)

    error = fetch_error(server.url("/status"), settings_for(server))

    assert error.code == "http_error"
    assert str(code) in error.detail
    assert error.transient is transient


def test_redirect_without_location_is_an_http_error(server: Server) -> None:
    server.routes["/nowhere"] = status(302)

    error = fetch_error(server.url("/nowhere"), settings_for(server))

    assert (error.code, error.transient) == ("http_error", False)


def test_broken_content_encoding_is_an_http_error(server: Server) -> None:
    server.routes["/gzip"] = lambda handler: reply(
        handler, 200, b"\x1f\x8b not really gzip", "image/jpeg", headers={"Content-Encoding": "gzip"}
    )

    error = fetch_error(server.url("/gzip"), settings_for(server))

    assert (error.code, error.transient) == ("http_error", False)
    assert "Content-Encoding" in error.detail


# --- size ----------------------------------------------------------------------------------------------


def test_declared_oversize_is_refused_before_reading(server: Server) -> None:
    server.routes["/huge"] = declares_huge_then_waits

    error = fetch_error(server.url("/huge"), settings_for(server))

    # reading the body would have waited for the read timeout and said fetch_timeout
    assert error.code == "too_large"
    assert "50000000" in error.detail


def test_undeclared_chunked_oversize_is_cut_off_while_streaming(server: Server) -> None:
    server.routes["/stream"] = chunked_stream

    error = fetch_error(server.url("/stream"), settings_for(server, max_bytes=100_000))

    assert error.code == "too_large"


# --- redirects -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["/photo.jpg", "photo.jpg", "{base}/photo.jpg"])
def test_redirect_is_followed(server: Server, location: str) -> None:
    server.routes["/photo.jpg"] = serve(JPEG)
    server.routes["/old"] = redirect(location.format(base=server.url("")))

    fetched = fetch_url(server.url("/old"), settings_for(server))

    assert (fetched.data, fetched.redirects, fetched.final_url) == (JPEG, 1, server.url("/photo.jpg"))


def test_redirect_limit_is_inclusive(server: Server) -> None:
    server.routes["/chain"] = chain

    fetched = fetch_url(server.url("/chain?left=5"), settings_for(server, max_redirects=5))

    assert fetched.redirects == 5
    assert fetched.final_url == server.url("/chain?left=0")


def test_too_many_redirects(server: Server) -> None:
    server.routes["/chain"] = chain

    error = fetch_error(server.url("/chain?left=6"), settings_for(server, max_redirects=5))

    assert error.code == "too_many_redirects"
    assert len(server.seen) == 6  # the first request and five redirects; the sixth is not followed


def test_redirect_to_another_local_port_is_refused(
    server: Server, other_server: Server, connections: list[tuple[str, int]]
) -> None:
    # given an allow-listed server redirecting to the same host on a port that is not allow-listed
    other_server.routes["/secret"] = serve(JPEG)
    server.routes["/hop"] = redirect(other_server.url("/secret"))

    # when
    error = fetch_error(server.url("/hop"), settings_for(server))

    # then the redirect is judged like any URL, and the other port is never contacted
    assert error.code == "blocked_loopback"
    assert str(other_server.port) in error.detail
    assert [port for _, port in connections] == [server.port]
    assert other_server.seen == []


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "blocked_metadata"),
        ("file:///etc/passwd", "unsupported_scheme"),
        ("http://10.0.0.1/", "blocked_private"),
    ],
)
def test_redirect_targets_are_checked(
    server: Server, connections: list[tuple[str, int]], location: str, code: str
) -> None:
    server.routes["/hop"] = redirect(location)

    assert fetch_error(server.url("/hop"), settings_for(server)).code == code
    assert len(connections) == 1


def test_cookies_are_not_kept_across_redirects(server: Server) -> None:
    server.routes["/login"] = redirect("/photo.jpg", headers={"Set-Cookie": "session=abc; Path=/"})
    server.routes["/photo.jpg"] = serve(JPEG)

    fetch_url(server.url("/login"), settings_for(server))

    assert [seen.path for seen in server.seen] == ["/login", "/photo.jpg"]
    assert "cookie" not in server.seen[1].headers


# --- time ----------------------------------------------------------------------------------------------


def test_silent_server_times_out() -> None:
    # given a socket that completes the TCP handshake (the kernel's backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        # when
        error = fetch_error(f"http://127.0.0.1:{port}/", make_settings(f"127.0.0.1:{port}"))

    # then the read timeout (0.5 s) fires, not the deadline (5 s): the codes tell them apart
    assert (error.code, error.transient) == ("fetch_timeout", True)


def test_slow_drip_is_stopped_by_the_deadline(server: Server) -> None:
    server.routes["/drip"] = slow_drip

    error = fetch_error(server.url("/drip"), settings_for(server, deadline_s=1.0))

    # each chunk arrives within the read timeout, so only the total deadline can stop it
    assert (error.code, error.transient) == ("deadline_exceeded", True)


def test_refused_connection_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on the port now

    error = fetch_error(f"http://127.0.0.1:{port}/", make_settings(f"127.0.0.1:{port}"))

    assert (error.code, error.transient) == ("connect_error", True)


# --- refused before connecting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "blocked_metadata"),
        ("http://169.254.170.2/v2/credentials", "blocked_metadata"),
        ("http://100.100.100.200/latest/meta-data", "blocked_metadata"),
        ("http://[fd00:ec2::254]/", "blocked_metadata"),
        ("http://[::ffff:169.254.169.254]/", "blocked_metadata"),
        ("http://127.0.0.1/", "blocked_loopback"),
        ("http://127.1.2.3:8080/", "blocked_loopback"),
        ("http://[::1]/", "blocked_loopback"),
        ("http://[::ffff:127.0.0.1]/", "blocked_loopback"),
        ("http://[2002:7f00:1::]/", "blocked_loopback"),
        ("http://0.0.0.0/", "blocked_unspecified"),
        ("http://[::]/", "blocked_unspecified"),
        ("http://169.254.1.1/", "blocked_link_local"),
        ("http://[fe80::1]/", "blocked_link_local"),
        ("http://224.0.0.1/", "blocked_multicast"),
        ("http://[ff02::1]/", "blocked_multicast"),
        ("http://10.0.0.1/", "blocked_private"),
        ("http://172.16.5.4/", "blocked_private"),
        ("http://192.168.1.1/", "blocked_private"),
        ("http://100.64.0.1/", "blocked_private"),
        ("http://[fd12:3456::1]/", "blocked_private"),
        ("http://[64:ff9b::a00:1]/", "blocked_private"),
        ("http://240.0.0.1/", "blocked_reserved"),
        ("http://192.0.2.10/", "blocked_non_global"),
        ("http://198.18.0.1/", "blocked_non_global"),
        ("file:///etc/passwd", "unsupported_scheme"),
        ("ftp://images.example/photo.jpg", "unsupported_scheme"),
        ("gopher://images.example:70/", "unsupported_scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "unsupported_scheme"),
        ("http://user:secret@images.example/photo.jpg", "invalid_url"),
        ("http:///photo.jpg", "invalid_url"),
        ("http://[::1/", "invalid_url"),
        ("http://images.example:99999/", "invalid_url"),
        ("http://images example/", "invalid_url"),
        ("//images.example/photo.jpg", "invalid_url"),
        (f"http://{'a' * 64}.example/", "invalid_url"),  # a label of 64 octets
        (f"http://{'a.' * 126}example/", "invalid_url"),  # 259 octets
        ("http://xn--zz.example/", "invalid_url"),  # not a valid A-label
        ("http://a..example/", "invalid_url"),
    ],
)
def test_refused_without_dns_or_connection(url: str, code: str, connections: list[tuple[str, int]]) -> None:
    error = fetch_error(url, make_settings())

    assert error.code == code
    assert not error.transient
    assert connections == []


def test_allow_list_is_exact_host_and_port(server: Server, connections: list[tuple[str, int]]) -> None:
    # 127.0.0.1:<port> is allow-listed, but not port 80 and not a hostname resolving to it
    assert fetch_error("http://127.0.0.1/", settings_for(server)).code == "blocked_loopback"
    error = fetch_error(
        f"http://localhost:{server.port}/photo.jpg", settings_for(server), resolver=lambda h, p: ["127.0.0.1"]
    )

    assert error.code == "blocked_loopback"
    assert connections == []


@pytest.mark.parametrize(
    ("answers", "code"),
    [
        (["127.0.0.1"], "blocked_loopback"),
        (["93.184.216.34", "10.1.2.3"], "blocked_private"),
        (["2606:2800:220:1:248:1893:25c8:1946", "::1"], "blocked_loopback"),
        (["93.184.216.34", "169.254.169.254"], "blocked_metadata"),
    ],
)
def test_any_bad_dns_answer_refuses_the_host(
    answers: list[str], code: str, connections: list[tuple[str, int]]
) -> None:
    lookups: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return answers

    error = fetch_error("https://images.example/photo.jpg", make_settings(), resolver)

    assert error.code == code
    assert "images.example" in error.detail
    assert lookups == [("images.example", 443)]
    assert connections == []


@pytest.mark.parametrize("answer", [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), []])
def test_dns_failure_is_transient(answer: Exception | list[str]) -> None:
    def resolver(host: str, port: int) -> list[str]:
        if isinstance(answer, Exception):
            raise answer
        return answer

    error = fetch_error("http://images.example/photo.jpg", make_settings(), resolver)

    assert (error.code, error.transient) == ("dns_failure", True)


# --- TLS -----------------------------------------------------------------------------------------------


def self_signed_certificate(directory: Path, hostname: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={hostname}"]
        + ["-addext", f"subjectAltName=DNS:{hostname}"],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_sends_the_hostname_as_sni_and_verifies_the_certificate(tmp_path: Path) -> None:
    # given a TLS server on 127.0.0.1 with a self-signed certificate for images.example
    cert, key = self_signed_certificate(tmp_path, "images.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def handshake_once() -> None:
        connection, _ = listener.accept()
        with (
            connection,
            context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False) as tls,
        ):
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError):
                pass  # the client rejects the certificate and hangs up

    worker = threading.Thread(target=handshake_once, daemon=True)
    worker.start()

    # when the fetcher goes to the pinned address for that hostname
    with listener:
        error = fetch_error(
            f"https://images.example:{port}/photo.jpg",
            make_settings(f"images.example:{port}"),
            resolver=lambda host, p: ["127.0.0.1"],
        )
        worker.join(timeout=5)

    # then SNI named the host, and the certificate was checked (and refused: nobody trusts it)
    assert server_names == ["images.example"]
    assert (error.code, error.transient) == ("tls_error", False)


def test_longest_valid_host_name_reaches_dns() -> None:
    # 63-octet labels and 253 octets in all are what DNS carries: judged by the resolver, not refused
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253

    error = fetch_error(f"http://{name}/", make_settings(), lambda host, port: [])

    assert (error.code, error.transient) == ("dns_failure", True)


# --- every address -------------------------------------------------------------------------------------


def test_next_address_is_tried_when_one_refuses(server: Server, connections: list[tuple[str, int]]) -> None:
    # given a host with two addresses, the first of which refuses connections on the server's port
    server.routes["/photo.jpg"] = serve(JPEG)
    url = f"http://images.test:{server.port}/photo.jpg"

    # when
    fetched = fetch_url(
        url,
        make_settings(f"images.test:{server.port}"),
        resolver=lambda host, port: ["127.0.0.3", "127.0.0.1"],
    )

    # then the second address answered, after the first was tried
    assert fetched.data == JPEG
    assert connections == [("127.0.0.3", server.port), ("127.0.0.1", server.port)]


def test_every_address_is_checked_before_any_is_tried(connections: list[tuple[str, int]]) -> None:
    error = fetch_error(
        "http://images.example/", make_settings(), lambda host, port: ["93.184.216.34", "::1"]
    )

    assert error.code == "blocked_loopback"
    assert connections == []


# --- the deadline bounds DNS too -----------------------------------------------------------------------


def test_hanging_dns_is_stopped_by_the_deadline(connections: list[tuple[str, int]]) -> None:
    # given a resolver that answers only when released (or after 60 s)
    release, answered = threading.Event(), threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(60)
        answered.set()
        return ["93.184.216.34"]

    # when
    try:
        error = fetch_error("http://images.example/photo.jpg", make_settings(deadline_s=0.5), hanging)
        returned_before_dns = not answered.is_set()
    finally:
        release.set()

    # then the fetch gave up while the lookup still hung, and connected nowhere
    assert (error.code, error.transient) == ("deadline_exceeded", True)
    assert returned_before_dns
    assert connections == []


# --- slow fetches and the slow lane --------------------------------------------------------------------


def lane_with(total: int, per_host: int, *held: str) -> SlowLane:
    lane = SlowLane(total, per_host)
    for host in held:
        assert lane.enter(host)
    return lane


def test_fast_fetch_needs_no_slow_slot(server: Server) -> None:
    server.routes["/photo.jpg"] = serve(JPEG)

    fetched = fetch_url(server.url("/photo.jpg"), settings_for(server), lane=SlowLane(0, 0))

    assert fetched.data == JPEG


def test_slow_fetch_goes_on_with_a_free_slot_and_gives_it_back(server: Server) -> None:
    server.routes["/drip"] = slow_drip
    lane = SlowLane(1, 1)

    error = fetch_error_in(lane, server.url("/drip"), settings_for(server, slow_after_s=0.2, deadline_s=1.0))

    # past the fast phase it held the slot until the deadline, then gave it back
    assert (error.code, error.transient) == ("deadline_exceeded", True)
    assert lane.running("127.0.0.1") == (0, 0)


@pytest.mark.parametrize(
    "lane", [lane_with(1, 1, "elsewhere.example"), lane_with(4, 1, "127.0.0.1")], ids=["in all", "per host"]
)
def test_slow_fetch_without_a_free_slot_stops(server: Server, lane: SlowLane) -> None:
    server.routes["/drip"] = slow_drip
    before = lane.running("127.0.0.1")

    error = fetch_error_in(lane, server.url("/drip"), settings_for(server, slow_after_s=0.2, deadline_s=30.0))

    # it stops at the end of the fast phase, to be retried later, and takes no slot
    assert (error.code, error.transient) == ("slow_host", True)
    assert "127.0.0.1" in error.detail
    assert lane.running("127.0.0.1") == before


def test_silent_server_without_a_free_slot_stops_after_the_fast_phase() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = make_settings(f"127.0.0.1:{port}", slow_after_s=0.2, read_timeout_s=30.0, deadline_s=30.0)

        error = fetch_error_in(lane_with(1, 1, "elsewhere.example"), f"http://127.0.0.1:{port}/", settings)

    assert (error.code, error.transient) == ("slow_host", True)


def test_silent_server_with_a_slot_is_asked_again_until_its_read_timeout(
    connections: list[tuple[str, int]],
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = make_settings(f"127.0.0.1:{port}", slow_after_s=0.2, read_timeout_s=0.5, deadline_s=30.0)

        error = fetch_error_in(SlowLane(1, 1), f"http://127.0.0.1:{port}/", settings)

    # the fast phase ended, the fetch took the slot and sent the request again, which then timed out
    assert (error.code, error.transient) == ("fetch_timeout", True)
    assert connections == [("127.0.0.1", port), ("127.0.0.1", port)]


def fetch_error_in(lane: SlowLane, url: str, settings: FetchSettings) -> ItemError:
    with pytest.raises(ItemError) as caught:
        fetch_url(url, settings, resolver=no_dns, lane=lane)
    return caught.value

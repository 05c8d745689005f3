"""SSRF-safe image fetching: an untrusted URL in, the bytes of an image out.

Every hop (the first request and each redirect) is parsed, resolved and checked before anything connects:
http/https only, and every address the host resolves to must be public. The connection then goes to the
checked address itself (``Host`` header and TLS SNI carry the hostname), so a second DNS answer cannot
swap in an internal address. Size, time and redirect limits come from ``FetchSettings``. Every failure is
an ``ItemError``; see ``fetch_url`` for the codes.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urljoin

import httpx

from common.errors import ItemError
from common.images import sniff_format
from common.settings import FetchSettings

Resolver = Callable[[str, int], list[str]]
IPAddress = IPv4Address | IPv6Address

METADATA_ADDRESSES = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
_PRIVATE_NETWORKS = tuple(
    ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT, shared by a provider's customers
        "fc00::/7",
        "fec0::/10",  # deprecated site-local, which Python still counts as global
    )
)
_THIS_NETWORK = ip_network("0.0.0.0/8")  # "this host": Linux connects 0.0.0.0 to localhost
_NAT64 = ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ip_network("::/96")  # deprecated ::a.b.c.d form

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"^[a-z0-9_.-]+$")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_DEADLINE_SLACK_S = 0.01
# Only the formats common.images decodes, so servers that negotiate (AVIF, JPEG XL) send one we read.
_ACCEPT = "image/webp,image/png,image/jpeg,image/gif,image/bmp,image/tiff;q=0.9,*/*;q=0.1"


@dataclass(frozen=True)
class Fetched:
    """A downloaded body whose magic bytes name an image format; not yet decoded."""

    data: bytes
    final_url: str
    content_type: str | None
    redirects: int


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    scheme: str
    host: str  # ASCII (IDNA) form, IPv6 without brackets
    port: int

    @property
    def authority(self) -> str:
        """``host[:port]`` as the Host header spells it: brackets for IPv6, no default port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def fetch_url(url: str, settings: FetchSettings, *, resolver: Resolver | None = None) -> Fetched:
    """GET ``url`` and return its body, refusing anything that could reach an internal address.

    Error codes: ``invalid_url``, ``unsupported_scheme``, ``dns_failure``*, ``blocked_metadata``,
    ``blocked_loopback``, ``blocked_unspecified``, ``blocked_link_local``, ``blocked_multicast``,
    ``blocked_private``, ``blocked_reserved``, ``blocked_non_global``, ``too_many_redirects``,
    ``fetch_timeout``*, ``deadline_exceeded``*, ``connect_error``*, ``tls_error``, ``http_error``
    (* for 408/425/429/5xx), ``too_large``, and from ``sniff_format`` ``empty_body`` and ``not_an_image``.
    Starred codes are transient. ``resolver(host, port)`` replaces DNS (tests inject answers with it).
    """
    resolve = resolver or resolve_host
    deadline = time.monotonic() + settings.deadline_s
    current = url
    for redirects in range(settings.max_redirects + 1):
        outcome = _hop(current, redirects, settings, resolve, deadline)
        if isinstance(outcome, Fetched):
            return outcome
        current = outcome
    raise ItemError(
        "too_many_redirects", f"more than {settings.max_redirects} redirects; the next was to {current!r}"
    )


def _hop(
    url: str, redirects: int, settings: FetchSettings, resolve: Resolver, deadline: float
) -> Fetched | str:
    """One request: the fetched body, or the absolute URL it redirects to."""
    target = _parse(url)
    address = _checked_address(target, settings, resolve)
    with _transport_errors(target, deadline), _client(settings) as client:
        with _send(client, target, address, settings, deadline) as response:
            location = _next_location(response, target)
            if location is not None:
                return urljoin(str(target.url), location)
            data = _read_body(response, target, settings.max_bytes, deadline)
            content_type = response.headers.get("content-type")
    sniff_format(data)
    return Fetched(data=data, final_url=str(target.url), content_type=content_type, redirects=redirects)


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, IPv4 and IPv6, as the system resolver orders them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def blocked_reason(address: IPAddress) -> str | None:
    """The error code refusing ``address``, or None when it is a public address.

    IPv6 addresses that embed an IPv4 one (mapped, 6to4, NAT64, IPv4-compatible) are judged by it.
    """
    embedded = _embedded_ipv4(address)
    if address in METADATA_ADDRESSES or embedded in METADATA_ADDRESSES:
        return "blocked_metadata"
    ip = embedded or address
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_loopback, "blocked_loopback"),
        (ip.is_unspecified or ip in _THIS_NETWORK, "blocked_unspecified"),
        (ip.is_link_local, "blocked_link_local"),
        (ip.is_multicast, "blocked_multicast"),
        (any(ip in net for net in _PRIVATE_NETWORKS), "blocked_private"),
        (ip.is_reserved, "blocked_reserved"),
        (not ip.is_global, "blocked_non_global"),
    )
    return next((code for hit, code in checks if hit), None)


def _embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse(url: str) -> _Target:
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise ItemError("invalid_url", f"cannot parse {url!r}: {exc}") from exc
    scheme = parsed.scheme.lower()
    if not scheme:
        raise ItemError("invalid_url", f"no scheme in {url!r}")
    if scheme not in _DEFAULT_PORTS:
        raise ItemError("unsupported_scheme", f"scheme {scheme!r} of {url!r}; only http and https")
    if parsed.userinfo:
        raise ItemError("invalid_url", f"credentials in {url!r}")
    host = parsed.raw_host.decode("ascii").lower()
    if not host or not (_HOSTNAME.match(host) or _ip_literal(host)):
        raise ItemError("invalid_url", f"no valid host in {url!r}")
    port = _DEFAULT_PORTS[scheme] if parsed.port is None else parsed.port
    if not 0 < port < 65536:
        raise ItemError("invalid_url", f"port {port} of {url!r}")
    return _Target(url=parsed, scheme=scheme, host=host, port=port)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _checked_address(target: _Target, settings: FetchSettings, resolve: Resolver) -> IPAddress:
    """The address to connect to, after every address of the host passed the checks."""
    addresses = _resolve(target, resolve)
    if f"{target.host}:{target.port}" not in _allowed(settings):
        for address in addresses:
            reason = blocked_reason(address)
            if reason is not None:
                raise ItemError(reason, f"host {target.host!r} of {str(target.url)!r} resolves to {address}")
    return addresses[0]


def _allowed(settings: FetchSettings) -> set[str]:
    # Entries are "host:port"; IPv6 hosts may be written with or without brackets.
    return {entry.strip().lower().replace("[", "").replace("]", "") for entry in settings.allow_hosts}


def _resolve(target: _Target, resolve: Resolver) -> list[IPAddress]:
    literal = _ip_literal(target.host)
    if literal is not None:
        return [literal]
    try:
        answers = resolve(target.host, target.port)
        addresses = list(dict.fromkeys(ip_address(a) for a in answers))
    except (OSError, UnicodeError, ValueError) as exc:
        raise ItemError("dns_failure", f"cannot resolve {target.host!r}: {exc}", transient=True) from exc
    if not addresses:
        raise ItemError("dns_failure", f"no address for {target.host!r}", transient=True)
    # IPv4 first: hosts publishing AAAA records are common, IPv6 routes from containers are not.
    return sorted(addresses, key=lambda a: a.version)


def _client(settings: FetchSettings) -> httpx.Client:
    """A client for one hop: a pooled connection is never reused under another hostname's SNI, and no
    cookie outlives the hop."""
    return httpx.Client(
        headers={"User-Agent": settings.user_agent, "Accept": _ACCEPT, "Accept-Encoding": "identity"},
        follow_redirects=False,
        trust_env=False,
        verify=_tls_context(),
    )


@cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _send(
    client: httpx.Client, target: _Target, address: IPAddress, settings: FetchSettings, deadline: float
) -> AbstractContextManager[httpx.Response]:
    """Stream a GET to ``address`` itself, with the hostname in Host and in TLS SNI."""
    remaining = _remaining(target, deadline)
    timeout = httpx.Timeout(
        connect=min(settings.connect_timeout_s, remaining),
        read=min(settings.read_timeout_s, remaining),
        write=min(settings.read_timeout_s, remaining),
        pool=min(settings.connect_timeout_s, remaining),
    )
    pinned = target.url.copy_with(host=str(address), port=target.port, fragment=None)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return client.stream(
        "GET", pinned, headers={"Host": target.authority}, extensions=extensions, timeout=timeout
    )


def _remaining(target: _Target, deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ItemError(
            "deadline_exceeded", f"fetch deadline passed before {str(target.url)!r}", transient=True
        )
    return remaining


@contextmanager
def _transport_errors(target: _Target, deadline: float) -> Iterator[None]:
    url = str(target.url)
    try:
        yield
    except httpx.TimeoutException as exc:
        # Timeouts are cut to what is left of the deadline, so one firing at the deadline is the deadline.
        if time.monotonic() >= deadline - _DEADLINE_SLACK_S:
            raise ItemError(
                "deadline_exceeded", f"fetch deadline passed during {url!r}", transient=True
            ) from exc
        raise ItemError("fetch_timeout", f"{type(exc).__name__} from {url!r}", transient=True) from exc
    except httpx.ConnectError as exc:
        if _caused_by(exc, ssl.SSLCertVerificationError):
            raise ItemError("tls_error", f"certificate of {target.host!r} rejected: {exc}") from exc
        raise ItemError("connect_error", f"cannot connect to {url!r}: {exc}", transient=True) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise ItemError("connect_error", f"connection to {url!r} failed: {exc}", transient=True) from exc
    except httpx.DecodingError as exc:
        # We ask for identity; a server that compresses anyway and sends a broken stream is at fault.
        raise ItemError("http_error", f"undecodable Content-Encoding from {url!r}: {exc}") from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _next_location(response: httpx.Response, target: _Target) -> str | None:
    """The redirect target, or None for a 2xx; any other status is an ``http_error``."""
    status = response.status_code
    location: str = response.headers.get("location", "").strip()
    if status in _REDIRECT_STATUSES and location:
        return location
    if 200 <= status < 300:
        return None
    transient = status in _TRANSIENT_STATUSES or status >= 500
    raise ItemError("http_error", f"HTTP {status} from {str(target.url)!r}", transient=transient)


def _read_body(response: httpx.Response, target: _Target, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ItemError("too_large", f"Content-Length {declared} of {str(target.url)!r} exceeds {max_bytes}")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise ItemError("too_large", f"body of {str(target.url)!r} exceeds {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise ItemError(
                "deadline_exceeded", f"fetch deadline passed reading {str(target.url)!r}", transient=True
            )
    return bytes(body)

"""SSRF-safe image fetching: an untrusted URL in, the bytes of an image out.

Every hop (the first request and each redirect) is parsed, resolved and checked before anything connects:
http/https only, and every address the host resolves to must be public. The connection then goes to the
checked address itself (``Host`` header and TLS SNI carry the hostname), so a second DNS answer cannot
swap in an internal address; when one address refuses the connection, the next one is tried. Size, time
and redirect limits come from ``FetchSettings``. Every failure is an ``ItemError``; see ``fetch_url`` for
the codes.

Time: one deadline bounds the whole fetch, DNS included (the lookup runs on a helper thread so the fetch
can stop waiting for it). Fairness: a fetch still running after ``slow_after_s`` must take one of the
process's slow slots (``SlowLane``: ``max_slow`` in all, ``max_slow_per_host`` per host name) to go on;
without one it stops with ``slow_host`` and is retried later, so slow or endless hosts hold at most
``max_slow`` of a worker's threads and ordinary images keep the rest.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urljoin

import httpx
import idna

from common.errors import ItemError
from common.images import sniff_format
from common.settings import FetchSettings

log = logging.getLogger(__name__)

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
_MAX_NAME, _MAX_LABEL = 253, 63  # RFC 1035 2.3.4, in octets of the ASCII (IDNA) form
# Only the formats common.images decodes, so servers that negotiate (JPEG XL) send one we read.
_ACCEPT = (
    "image/avif,image/heic,image/webp,image/png,image/jpeg,image/gif,image/bmp,image/tiff;q=0.9,*/*;q=0.1"
)
# getaddrinfo has no timeout: lookups run here and the fetch stops waiting at its deadline. A lookup that
# hangs keeps its thread until the system resolver gives up (its own timeouts, seconds).
_DNS_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="atelier-dns")


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


class SlowLane:
    """How many fetches of one process may run past ``slow_after_s`` at once: ``total`` in all and
    ``per_host`` per host name. Thread-safe; never blocks."""

    def __init__(self, total: int, per_host: int) -> None:
        self.total = total
        self.per_host = per_host
        self._lock = threading.Lock()
        self._hosts: Counter[str] = Counter()

    def enter(self, host: str) -> bool:
        """Take a slot for a slow fetch from ``host``; False when none is free."""
        with self._lock:
            if self._hosts.total() >= self.total or self._hosts[host] >= self.per_host:
                return False
            self._hosts[host] += 1
            return True

    def leave(self, host: str) -> None:
        with self._lock:
            self._hosts[host] -= 1
            if self._hosts[host] <= 0:
                del self._hosts[host]

    def running(self, host: str) -> tuple[int, int]:
        """Slow fetches running now: in all, and from ``host``."""
        with self._lock:
            return self._hosts.total(), self._hosts[host]


@cache
def process_lane(total: int, per_host: int) -> SlowLane:
    """The lane every fetch of this process shares (one per pair of limits)."""
    return SlowLane(total, per_host)


class _Extended(Exception):
    """A timeout fired at the end of the fast phase and the fetch got a slow slot: send the hop again."""


class _Clock:
    """The fetch's time: a fast phase of ``slow_after_s``, then, holding a slow slot, the rest of the
    deadline. ``limit`` is when the phase now running ends."""

    def __init__(self, settings: FetchSettings, lane: SlowLane) -> None:
        started = time.monotonic()
        self.settings = settings
        self.lane = lane
        self.deadline = started + settings.deadline_s
        self.limit = min(self.deadline, started + settings.slow_after_s)
        self.slot: str | None = None

    def remaining(self, target: _Target, during: str) -> float:
        """Seconds left in this phase; at its end, the next phase begins or the fetch stops."""
        left = self.limit - time.monotonic()
        if left <= 0:
            self.phase_ended(target, during)
            left = self.limit - time.monotonic()
        return max(left, _DEADLINE_SLACK_S)

    def at_limit(self) -> bool:
        return time.monotonic() >= self.limit - _DEADLINE_SLACK_S

    def phase_ended(self, target: _Target, during: str) -> None:
        """Go on with a slow slot, or raise ``deadline_exceeded`` / ``slow_host``."""
        url = str(target.url)
        if self.limit >= self.deadline:
            raise ItemError(
                "deadline_exceeded",
                f"fetch deadline of {self.settings.deadline_s:g} s passed {during} {url!r}",
                transient=True,
            )
        if not self.lane.enter(target.host):
            total, host = self.lane.running(target.host)
            raise ItemError(
                "slow_host",
                f"still {during} {url!r} after {self.settings.slow_after_s:g} s, while {total} slow "
                f"fetches run ({host} from {target.host!r}; at most {self.lane.total}, "
                f"{self.lane.per_host} per host)",
                transient=True,
            )
        self.slot = target.host
        self.limit = self.deadline

    def release(self) -> None:
        if self.slot is not None:
            self.lane.leave(self.slot)
            self.slot = None


def fetch_url(
    url: str, settings: FetchSettings, *, resolver: Resolver | None = None, lane: SlowLane | None = None
) -> Fetched:
    """GET ``url`` and return its body, refusing anything that could reach an internal address.

    Error codes: ``invalid_url``, ``unsupported_scheme``, ``dns_failure``*, ``blocked_metadata``,
    ``blocked_loopback``, ``blocked_unspecified``, ``blocked_link_local``, ``blocked_multicast``,
    ``blocked_private``, ``blocked_reserved``, ``blocked_non_global``, ``too_many_redirects``,
    ``fetch_timeout``*, ``deadline_exceeded``*, ``slow_host``*, ``connect_error``*, ``tls_error``,
    ``http_error`` (* for 408/425/429/5xx), ``too_large``, and from ``sniff_format`` ``empty_body`` and
    ``not_an_image``. Starred codes are transient. ``resolver(host, port)`` replaces DNS (tests inject
    answers with it); ``lane`` replaces the process's ``SlowLane``.
    """
    clock = _Clock(settings, lane or process_lane(settings.max_slow, settings.max_slow_per_host))
    try:
        return _follow(url, settings, resolver or resolve_host, clock)
    finally:
        clock.release()


def _follow(url: str, settings: FetchSettings, resolve: Resolver, clock: _Clock) -> Fetched:
    current = url
    for redirects in range(settings.max_redirects + 1):
        try:
            outcome = _hop(current, redirects, settings, resolve, clock)
        except _Extended:
            outcome = _hop(current, redirects, settings, resolve, clock)  # the clock runs to the deadline now
        if isinstance(outcome, Fetched):
            return outcome
        current = outcome
    raise ItemError(
        "too_many_redirects", f"more than {settings.max_redirects} redirects; the next was to {current!r}"
    )


def _hop(
    url: str, redirects: int, settings: FetchSettings, resolve: Resolver, clock: _Clock
) -> Fetched | str:
    """One request: the fetched body, or the absolute URL it redirects to."""
    target = _parse(url)
    addresses = _checked_addresses(target, settings, resolve, clock)
    with _transport_errors(target, clock), _client(settings) as client, ExitStack() as stack:
        response = _connect(stack, client, target, addresses, settings, clock)
        location = _next_location(response, target)
        if location is not None:
            return urljoin(str(target.url), location)
        data = _read_body(response, target, settings.max_bytes, clock)
        content_type = response.headers.get("content-type")
    sniff_format(data)
    return Fetched(data=data, final_url=str(target.url), content_type=content_type, redirects=redirects)


def _connect(
    stack: ExitStack,
    client: httpx.Client,
    target: _Target,
    addresses: list[IPAddress],
    settings: FetchSettings,
    clock: _Clock,
) -> httpx.Response:
    """The response of the first address that takes the connection, in the order ``_resolve`` gives."""
    for address in addresses[:-1]:
        try:
            return stack.enter_context(_send(client, target, address, settings, clock))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if _caused_by(exc, ssl.SSLCertVerificationError):
                raise
            log.info("cannot connect to %s for %r (%s); trying its next address", address, target.host, exc)
    return stack.enter_context(_send(client, target, addresses[-1], settings, clock))


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
    if not _ip_literal(host):
        _check_host_name(host, url)
    port = _DEFAULT_PORTS[scheme] if parsed.port is None else parsed.port
    if not 0 < port < 65536:
        raise ItemError("invalid_url", f"port {port} of {url!r}")
    return _Target(url=parsed, scheme=scheme, host=host, port=port)


def _check_host_name(host: str, url: str) -> None:
    """Refuse names DNS cannot carry: over 253 octets, an empty label or one over 63, a broken A-label."""
    name = host.removesuffix(".")
    if len(name) > _MAX_NAME:
        raise ItemError(
            "invalid_url", f"host name of {len(name)} characters (at most {_MAX_NAME}) in {url!r}"
        )
    for label in name.split("."):
        if not 0 < len(label) <= _MAX_LABEL:
            raise ItemError(
                "invalid_url",
                f"host label {label!r} of {len(label)} characters (1 to {_MAX_LABEL}) in {url!r}",
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise ItemError("invalid_url", f"invalid IDNA label {label!r} in {url!r}: {exc}") from exc


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _checked_addresses(
    target: _Target, settings: FetchSettings, resolve: Resolver, clock: _Clock
) -> list[IPAddress]:
    """The addresses to try, in order, after every address of the host passed the checks."""
    addresses = _resolve(target, resolve, clock)
    if f"{target.host}:{target.port}" not in _allowed(settings):
        for address in addresses:
            reason = blocked_reason(address)
            if reason is not None:
                raise ItemError(reason, f"host {target.host!r} of {str(target.url)!r} resolves to {address}")
    return addresses


def _allowed(settings: FetchSettings) -> set[str]:
    # Entries are "host:port"; IPv6 hosts may be written with or without brackets.
    return {entry.strip().lower().replace("[", "").replace("]", "") for entry in settings.allow_hosts}


def _resolve(target: _Target, resolve: Resolver, clock: _Clock) -> list[IPAddress]:
    literal = _ip_literal(target.host)
    if literal is not None:
        return [literal]
    lookup = _DNS_THREADS.submit(resolve, target.host, target.port)
    try:
        while True:
            try:
                answers = lookup.result(timeout=clock.remaining(target, "resolving"))
                break
            except FutureTimeout:
                clock.phase_ended(target, "resolving")
        addresses = list(dict.fromkeys(ip_address(a) for a in answers))
    except ItemError:
        lookup.cancel()  # a lookup still queued behind hung ones never starts
        raise
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
    client: httpx.Client, target: _Target, address: IPAddress, settings: FetchSettings, clock: _Clock
) -> AbstractContextManager[httpx.Response]:
    """Stream a GET to ``address`` itself, with the hostname in Host and in TLS SNI."""
    remaining = clock.remaining(target, "connecting to")
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


@contextmanager
def _transport_errors(target: _Target, clock: _Clock) -> Iterator[None]:
    url = str(target.url)
    try:
        yield
    except httpx.TimeoutException as exc:
        # Timeouts are cut to what is left of the phase, so one firing at its end is the phase ending:
        # the deadline, a slow fetch without a slot, or one that got a slot and sends the hop again.
        if clock.at_limit():
            clock.phase_ended(target, "waiting for")
            raise _Extended from exc
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


def _read_body(response: httpx.Response, target: _Target, max_bytes: int, clock: _Clock) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ItemError("too_large", f"Content-Length {declared} of {str(target.url)!r} exceeds {max_bytes}")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise ItemError("too_large", f"body of {str(target.url)!r} exceeds {max_bytes} bytes")
        if time.monotonic() > clock.limit:
            clock.phase_ended(target, "reading")
    return bytes(body)

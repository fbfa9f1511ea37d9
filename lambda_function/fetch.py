"""Download image bytes from a client's URL without letting the client aim us at our own network.

A URL is a request to open a connection from inside our account, so each one is treated as hostile:

* only ``http``, ``https`` and ``s3`` (``s3`` never through a redirect: that would let any web page make
  us read our own buckets with the function's role);
* the host is resolved once, EVERY address is checked (:func:`check_address`) and the connection goes to
  the checked address itself, so a second DNS answer cannot swap in an internal one (DNS rebinding);
* each redirect is a new URL and gets the same checks, at most ``MAX_REDIRECTS`` of them, never from
  https down to http;
* a connect timeout, a timeout per read, and one deadline for the whole fetch that a server dripping a
  byte at a time cannot stretch (the socket timeout is re-armed to the time left before every read);
* a size cap counted while streaming; Content-Length is only used to refuse early, never trusted;
* a second cap on every byte read from the socket (status line, headers, 1xx responses, chunk-size
  lines, trailers and body): ``max_bytes`` plus ``max_overhead_bytes`` for everything that is not
  body, counted in the socket's own ``recv`` before ``http.client`` parses anything, so no framing
  trick (a chunk size of ``-1``, endless trailers, endless ``100 Continue`` responses) reads more;
* chunk sizes parsed strictly (1-16 hex digits; ``int(line, 16)`` alone accepts ``-1``, ``+a`` and
  ``1_0``), and a chunk larger than the body cap refused before it is read.

Stdlib ``http.client``/``ssl`` rather than a library such as requests-hardened: nothing extra in the
Lambda zip, and pinning the connection to the checked IP, the streaming cap and the deadline are ours to
see and test. boto3 is imported only for ``s3://`` URLs (the Lambda runtime has it; it is not in
requirements.txt); its GETs go out on these same sockets, with the same deadline (``s3_transport.py``).

Every failure is a ServingError: 400 ``invalid_url`` / ``unsupported_scheme`` / ``url_refused``,
413 ``image_too_large_bytes``, 415 ``unsupported_media_type``, 500 ``s3_unavailable``,
502 ``upstream_error`` / ``too_many_redirects``, 504 ``upstream_timeout``. An empty 200 body is returned
as ``b""``: the decoder answers 422 ``empty_image`` for it, like for any other source of bytes.
"""

from __future__ import annotations

import http
import http.client
import io
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit

from lambda_function import s3_transport
from lambda_function.errors import ServingError

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_TOTAL_TIMEOUT = 10.0
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
# Status line, headers, 1xx responses, chunk-size lines and trailers together: real servers send a few
# KB; 64 KiB leaves room for cookie-heavy CDNs and a body chunked in 1 KB pieces.
DEFAULT_MAX_OVERHEAD_BYTES = 64 * 1024
# A chunk-size line: the size, optional extensions, CRLF. http.client alone allows 64 KiB.
MAX_CHUNK_LINE = 1024
CHUNK_SIZE_PATTERN = re.compile(rb"[0-9A-Fa-f]{1,16}")
CHUNK_SIZE = 64 * 1024
REQUEST_HEADERS = {"User-Agent": "edge-clothing-classifier/0.1", "Accept": "image/*"}
HTTP_SCHEMES = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Local testing only: comma-separated host:port pairs exempt from the private-address block.
ALLOWED_HOSTS_ENV = "FETCH_ALLOWED_HOSTS"
# host:port of the Lambda runtime API; refused even when listed in FETCH_ALLOWED_HOSTS.
RUNTIME_API_ENV = "AWS_LAMBDA_RUNTIME_API"
# Cloud metadata endpoints (AWS IMDS v4/v6, ECS task metadata). The generic checks already refuse them;
# naming them keeps them refused whatever a Python version thinks is "global".
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254")
)
# IPv6 forms that carry an IPv4 address the packet may end up at.
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")
# Media types that are certainly not an image: refused before the body is read. Anything else
# (missing, application/octet-stream, binary/octet-stream, image/*) is left for the decoder to judge.
NON_IMAGE_TOP_TYPES = frozenset({"text", "audio", "video", "font", "multipart", "message", "model"})
NON_IMAGE_APPLICATION_TYPES = frozenset(
    {"json", "xml", "javascript", "ecmascript", "pdf", "zip", "gzip", "x-gzip", "x-tar", "xhtml+xml"}
)
S3_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# S3's naming rules beyond the character set: no "..", not an IPv4 address, no reserved prefix.
# (Access point aliases "-s3alias" and directory buckets "--x-s3" are valid names for GetObject.)
S3_IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
S3_MAX_KEY_BYTES = 1024
# Bounds how much client- or server-supplied text we echo back in an error message.
MAX_ECHO_CHARS = 100

logger = logging.getLogger(__name__)

Resolver = Callable[..., list[tuple]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    max_redirects: int = MAX_REDIRECTS
    max_overhead_bytes: int = DEFAULT_MAX_OVERHEAD_BYTES

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_redirects, self.max_overhead_bytes) < 0:
            raise ValueError("max_bytes, max_redirects and max_overhead_bytes must be >= 0")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be > 0")


@dataclass(frozen=True)
class _Target:
    """One http(s) URL, parsed and validated; ``host`` is lowercased and without IPv6 brackets."""

    url: str
    scheme: str
    host: str
    port: int
    request_target: str

    @property
    def key(self) -> str:
        return _host_key(self.host, self.port)


def fetch(
    url: object,
    limits: FetchLimits = FetchLimits(),
    *,
    allowed_hosts: frozenset[str] | None = None,
    resolver: Resolver = socket.getaddrinfo,
) -> bytes:
    """The bytes at ``url`` (http, https or s3), or ServingError. ``allowed_hosts`` None reads the env."""
    text = _check_url_text(url)
    scheme = text.split("://", 1)[0].lower()
    deadline = time.monotonic() + limits.total_timeout
    if scheme == "s3":
        return _fetch_s3(text, limits, deadline)
    if scheme not in HTTP_SCHEMES:
        raise _scheme_error(scheme)
    if allowed_hosts is None:
        try:
            allowed = allowed_hosts_from_env()
        except ValueError as exc:
            # The operator's mistake, not the caller's: name the setting instead of a bare internal_error.
            raise ServingError(500, "misconfigured", f"The function is misconfigured: {exc}.") from None
    else:
        allowed = frozenset(_parse_host_port(entry) for entry in allowed_hosts)
    return _fetch_http(text, limits, allowed, resolver, deadline)


def allowed_hosts_from_env(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Normalised ``host:port`` pairs of env FETCH_ALLOWED_HOSTS; ValueError for an entry without a port."""
    raw = environ.get(ALLOWED_HOSTS_ENV, "")
    return frozenset(_parse_host_port(entry) for entry in raw.split(",") if entry.strip())


def check_address(ip: IPAddress) -> None:
    """Raise ServingError(400, "url_refused") unless ``ip`` is a public unicast internet address."""
    if _blocked_reason(ip) is not None:
        # The kind of address stays in our log: telling the caller would map which internal names exist.
        raise ServingError(
            400, "url_refused", "The URL's host is not allowed: only public internet addresses are."
        )


# --- addresses ------------------------------------------------------------------------------------


def _blocked_reason(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        # Forms that embed an IPv4 address are judged by it, so ::ffff:127.0.0.1 is loopback.
        # A mapped or NAT64 address IS its IPv4 address; a 6to4 one must also pass as IPv6 below.
        if ip.ipv4_mapped is not None:
            return _blocked_reason(ip.ipv4_mapped)
        if ip in NAT64_NETWORK:
            return _blocked_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and _blocked_reason(ip.sixtofour) is not None:
            return _blocked_reason(ip.sixtofour)
        if ip.is_site_local:
            return "site-local"
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    checks = (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),  # e.g. carrier-grade NAT 100.64.0.0/10
    )
    return next((name for name, hit in checks if hit), None)


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _resolve(target: _Target, resolver: Resolver) -> list[IPAddress]:
    try:
        infos = resolver(target.host, target.port, 0, socket.SOCK_STREAM)
    except UnicodeError:
        raise ServingError(400, "invalid_url", "The URL's host name is not a valid domain name.") from None
    except OSError:
        raise ServingError(
            502, "upstream_error", f"The host {_echo(target.host)} could not be resolved."
        ) from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ServingError(502, "upstream_error", f"The host {_echo(target.host)} has no IP address.")
    return addresses


def _check_target(target: _Target, addresses: list[IPAddress], allowed: frozenset[str]) -> None:
    """Refuse the runtime API always, and non-public addresses unless host:port is allowed."""
    runtime = os.environ.get(RUNTIME_API_ENV, "")
    if runtime:
        runtime_host, _, runtime_port = runtime.rpartition(":")
        runtime_host = runtime_host.strip("[]").lower()
        if str(target.port) == runtime_port and (
            target.host == runtime_host
            or any(_unwrap(ip).is_loopback or str(_unwrap(ip)) == runtime_host for ip in addresses)
        ):
            logger.warning("refused %s: Lambda runtime API", target.key)
            raise ServingError(400, "url_refused", "The URL points at the Lambda runtime API.")
    if target.key in allowed:
        return
    for ip in addresses:
        try:
            check_address(ip)
        except ServingError:
            logger.warning("refused %s: resolves to %s (%s)", target.key, ip, _blocked_reason(ip))
            raise


# --- URLs -----------------------------------------------------------------------------------------


def _check_url_text(url: object) -> str:
    if not isinstance(url, str):
        raise ServingError(400, "invalid_url", f"The URL must be a string, not {type(url).__name__}.")
    text = url.strip()
    if not text:
        raise ServingError(400, "invalid_url", "The URL is empty.")
    if len(text) > MAX_URL_LENGTH:
        raise ServingError(400, "invalid_url", f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ServingError(400, "invalid_url", "The URL contains control characters.")
    if not _is_unicode(text):
        raise ServingError(400, "invalid_url", "The URL is not valid Unicode (it has a lone surrogate).")
    if "://" not in text:
        raise ServingError(400, "invalid_url", "The URL must start with http://, https:// or s3://.")
    return text


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate (JSON's "\\ud800"), which nothing can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scheme_error(scheme: str) -> ServingError:
    return ServingError(
        400, "unsupported_scheme", f"URL scheme {_echo(scheme)!r} is not allowed; use http, https or s3."
    )


def _parse_http_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ServingError(400, "invalid_url", "The URL's host or port is malformed.") from None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES:
        raise _scheme_error(scheme)
    if parts.username is not None or parts.password is not None:
        raise ServingError(400, "invalid_url", "Credentials in the URL are not allowed.")
    host = parts.hostname
    if not host:
        raise ServingError(400, "invalid_url", "The URL has no host.")
    if any(char.isspace() or char in "%\\<>^`{|}\"'" for char in host):
        raise ServingError(400, "invalid_url", "The URL's host contains characters a host cannot have.")
    if port == 0:
        raise ServingError(400, "invalid_url", "The URL's port must be 1-65535.")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # Spaces and non-ASCII go out percent-encoded, as a browser sends them; the rest is kept as written.
    target = quote(target, safe="".join(chr(c) for c in range(0x21, 0x7F)))
    return _Target(url, scheme, host, port or HTTP_SCHEMES[scheme], target)


def _host_key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_host_port(entry: str) -> str:
    try:
        parts = urlsplit("//" + entry.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port or parts.path or parts.username is not None:
        raise ValueError(f"{ALLOWED_HOSTS_ENV} entry {entry!r} is not host:port")
    return _host_key(host, port)


def _echo(text: str) -> str:
    """``text`` shortened and printable, for an error message."""
    text = "".join(char if char.isprintable() else "?" for char in str(text))
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


# --- HTTP -----------------------------------------------------------------------------------------


def _fetch_http(
    url: str, limits: FetchLimits, allowed: frozenset[str], resolver: Resolver, deadline: float
) -> bytes:
    previous: _Target | None = None
    for _hop in range(limits.max_redirects + 1):
        try:
            target = _parse_http_url(_check_url_text(url))  # a Location is as untrusted as the URL
            if previous is not None and previous.scheme == "https" and target.scheme == "http":
                raise ServingError(400, "url_refused", "A redirect from https to http is not followed.")
            addresses = _resolve(target, resolver)
            _check_target(target, addresses, allowed)
        except ServingError as exc:
            if previous is None:
                raise
            message = f"Redirect to {_echo(url)} refused: {exc.message}"
            raise ServingError(exc.status, exc.code, message) from None
        body, location = _request(target, addresses, limits, deadline)
        if location is None:
            return body
        previous, url = target, urljoin(target.url, location)
    raise ServingError(
        502, "too_many_redirects", f"The URL redirected more than {limits.max_redirects} times."
    )


class _ResponseTooLarge(Exception):
    """More bytes arrived on the socket than the response may have; _request turns it into a 413.

    Deliberately not an OSError, ValueError or HTTPException: http.client catches some of those."""


class _DeadlineMixin:
    """Re-arms the socket timeout before every read: min(read timeout, time left to the deadline).

    Also counts every byte read from the socket once the request is sent (``byte_budget`` not None):
    one past the budget raises _ResponseTooLarge, whatever http.client was reading at the time.
    """

    deadline: float = float("inf")
    read_timeout: float | None = None
    byte_budget: int | None = None
    body_cap: int | None = None
    overhead_cap: int = 0
    bytes_received: int = 0

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("total deadline passed")
        self.settimeout(left if self.read_timeout is None else min(self.read_timeout, left))

    def _count(self, received: int) -> None:
        self.bytes_received += received
        if self.byte_budget is not None and self.bytes_received > self.byte_budget:
            raise _ResponseTooLarge(self.byte_budget)

    def recv(self, *args, **kwargs):
        self._arm()
        data = super().recv(*args, **kwargs)
        self._count(len(data))
        return data

    def recv_into(self, *args, **kwargs):
        self._arm()
        received = super().recv_into(*args, **kwargs)
        self._count(received)
        return received


class _DeadlineSocket(_DeadlineMixin, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineMixin, ssl.SSLSocket):
    pass


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    # Default verification (system CAs, or SSL_CERT_FILE), built once per container.
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _StrictResponse(http.client.HTTPResponse):
    """http.client's response with a strict chunk-size parser.

    http.client's own is ``int(line, 16)``: ``-1`` then makes it read to EOF in one call. Overriding
    ``_read_next_chunk_size`` (a private method, the same from 3.5 to 3.13) keeps the rest of its
    parser; the socket's byte budget bounds memory even if a later Python stopped calling it.
    """

    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self._counted = sock

    def _read_next_chunk_size(self) -> int:
        line = self.fp.readline(MAX_CHUNK_LINE + 1)
        if len(line) > MAX_CHUNK_LINE:
            raise http.client.LineTooLong("chunk size")
        size = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not CHUNK_SIZE_PATTERN.fullmatch(size):
            # ValueError is what http.client expects here: it becomes IncompleteRead, i.e. a 502.
            raise ValueError("malformed chunk size")
        chunk = int(size, 16)
        sock = self._counted
        if sock.body_cap is not None and chunk > sock.body_cap:
            raise _ResponseTooLarge(chunk)
        if chunk == 0 and sock.byte_budget is not None:
            # Only trailers are left: they get the overhead allowance, not what the body did not use.
            sock.byte_budget = min(sock.byte_budget, sock.bytes_received + sock.overhead_cap)
        return chunk


class _PinnedConnection(http.client.HTTPConnection):
    """http.client on a socket we opened to a checked address; Host header and SNI name the URL's host."""

    response_class = _StrictResponse

    def __init__(self, target: _Target, sock: socket.socket):
        super().__init__(target.host, target.port)
        self.default_port = HTTP_SCHEMES[target.scheme]  # Host header carries the port only if not default
        self.sock = sock

    def connect(self) -> None:
        # Reconnecting would resolve the host again; a pinned connection is used for one request only.
        raise http.client.NotConnected("pinned connection already closed")


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("total deadline passed")
    return left


def _open_socket(target: _Target, ip: IPAddress, limits: FetchLimits, deadline: float) -> socket.socket:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = _DeadlineSocket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(limits.connect_timeout, _left(deadline)))
        sock.connect((str(ip), target.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.scheme == "https":
            sock = _tls_context().wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False
            )
            sock.settimeout(min(limits.connect_timeout, _left(deadline)))
            sock.do_handshake()
    except BaseException:
        sock.close()
        raise
    sock.deadline = deadline
    sock.read_timeout = limits.read_timeout
    return sock


def _connect(target: _Target, addresses: list[IPAddress], limits: FetchLimits, deadline: float):
    """A socket to the first checked address that answers."""
    error: OSError | None = None
    for ip in addresses:
        try:
            return _open_socket(target, ip, limits, deadline)
        except ssl.SSLError:
            raise  # a bad certificate is the same on every address
        except OSError as exc:
            error = exc
            if deadline <= time.monotonic():
                break
    assert error is not None
    raise error


def _request(
    target: _Target, addresses: list[IPAddress], limits: FetchLimits, deadline: float
) -> tuple[bytes, str | None]:
    """``(body, None)`` for a 200, ``(b"", location)`` for a redirect; ServingError otherwise."""
    host = _echo(target.host)
    conn: _PinnedConnection | None = None
    response: http.client.HTTPResponse | None = None
    try:
        sock = _connect(target, addresses, limits, deadline)
        conn = _PinnedConnection(target, sock)
        conn.request("GET", target.request_target, headers=REQUEST_HEADERS)
        # From here on every byte read counts. Status line, headers and 1xx responses: the overhead
        # allowance (plus one buffer of read-ahead, which may already hold body); then the body cap too.
        sock.body_cap, sock.overhead_cap = limits.max_bytes, limits.max_overhead_bytes
        sock.byte_budget = limits.max_overhead_bytes + io.DEFAULT_BUFFER_SIZE
        response = conn.getresponse()
        sock.byte_budget = limits.max_bytes + limits.max_overhead_bytes
        if response.status in REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise ServingError(502, "upstream_error", f"{host} redirected without a Location.")
            return b"", location.strip()
        if response.status != 200:
            raise ServingError(
                502, "upstream_error", f"{host} answered HTTP {response.status} {_phrase(response.status)}."
            )
        _check_content_type(response.getheader("Content-Type"))
        declared = _declared_length(response.getheader("Content-Length"))
        if declared is not None and declared > limits.max_bytes:
            raise _too_large(limits.max_bytes)
        body = _read_capped(response.read, limits.max_bytes, deadline)
        if declared is not None and len(body) < declared:
            raise ServingError(
                502, "upstream_error", f"{host} closed the connection after {len(body)} of {declared} bytes."
            )
        return body, None
    except ServingError:
        raise
    except _ResponseTooLarge:
        raise ServingError(
            413,
            "image_too_large_bytes",
            f"The response from {host} is larger than {limits.max_bytes} bytes of image plus "
            f"{limits.max_overhead_bytes} bytes of headers and framing.",
        ) from None
    except TimeoutError:
        raise ServingError(504, "upstream_timeout", f"{host} did not answer in time.") from None
    except ssl.SSLCertVerificationError as exc:
        raise ServingError(
            502, "upstream_error", f"The TLS certificate of {host} is not valid: {exc.verify_message}."
        ) from None
    except ssl.SSLError:
        raise ServingError(502, "upstream_error", f"The TLS handshake with {host} failed.") from None
    except (http.client.HTTPException, ValueError):
        raise ServingError(502, "upstream_error", f"{host} sent a malformed HTTP response.") from None
    except ConnectionRefusedError:
        raise ServingError(502, "upstream_error", f"{host} refused the connection.") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ServingError(502, "upstream_error", f"Connection to {host} failed: {reason}.") from None
    finally:
        # The response holds its own reference to the socket once the server said "Connection: close".
        if response is not None:
            response.close()
        if conn is not None:
            conn.close()


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _declared_length(value: str | None) -> int | None:
    value = (value or "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    # More digits than any real length: treat as "huge" without int()'s 4300-digit limit.
    return int(value) if len(value) <= 18 else 10**18


def _check_content_type(value: str | None) -> None:
    media_type = (value or "").split(";", 1)[0].strip().lower()
    top, _, sub = media_type.partition("/")
    if top == "image" or not media_type:
        return
    not_image = top in NON_IMAGE_TOP_TYPES or (
        top == "application"
        and (sub in NON_IMAGE_APPLICATION_TYPES or sub.endswith("+json") or sub.endswith("+xml"))
    )
    if not_image:
        raise ServingError(
            415, "unsupported_media_type", f"The URL serves {_echo(media_type)!r}, not an image."
        )


def _too_large(max_bytes: int) -> ServingError:
    return ServingError(413, "image_too_large_bytes", f"The image is larger than {max_bytes} bytes.")


def _read_capped(read: Callable[[int], bytes], max_bytes: int, deadline: float) -> bytes:
    """Read until EOF, never more than ``max_bytes + 1`` bytes: one byte over the cap is enough to refuse."""
    # A BytesIO grows in place and hands its buffer over without a copy, where a list of chunks joined
    # at the end holds the image twice: with several downloads in flight that doubling adds up.
    buffer = io.BytesIO()
    total = 0
    while True:
        _left(deadline)
        chunk = read(min(CHUNK_SIZE, max_bytes + 1 - total))
        if not chunk:
            return buffer.getvalue()
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes)
        buffer.write(chunk)


# --- S3 -------------------------------------------------------------------------------------------


class S3ReadError(ServingError):
    """A ServingError from an S3 call that also keeps what S3 answered: its error code and HTTP status.

    Callers of :func:`fetch` see the same status, code and message as before; bulk.py uses the extra
    fields to tell a failure a retry can fix (throttling, 5xx, no answer) from one it cannot.
    """

    def __init__(self, status: int, code: str, message: str, *, s3_code=None, http_status=None):
        super().__init__(status, code, message)
        self.s3_code = s3_code
        self.http_status = http_status


def check_s3_location(bucket: object, key: object) -> None:
    """ServingError(400, "invalid_url") unless ``bucket`` is a bucket name and ``key`` a 1-1024 byte key
    that S3 can be asked for (valid Unicode: a lone surrogate cannot be sent in any request)."""
    if not isinstance(bucket, str) or not valid_s3_bucket(bucket):
        raise ServingError(400, "invalid_url", f"{_echo(str(bucket))!r} is not a valid S3 bucket name.")
    if not isinstance(key, str) or not key:
        raise ServingError(400, "invalid_url", f"An S3 key must be 1-{S3_MAX_KEY_BYTES} bytes of UTF-8.")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ServingError(
            400, "invalid_url", "The S3 key is not valid Unicode (it has a lone surrogate)."
        ) from None
    if size > S3_MAX_KEY_BYTES:
        raise ServingError(400, "invalid_url", f"An S3 key must be 1-{S3_MAX_KEY_BYTES} bytes of UTF-8.")


def _parse_s3_url(url: str) -> tuple[str, str]:
    # Keys are taken verbatim (as the AWS CLI writes them): "?" and "#" are part of the key.
    rest = url.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    check_s3_location(bucket, key)
    return bucket, key


def valid_s3_bucket(name: str) -> bool:
    """S3's general-purpose bucket naming rules, as far as a name alone can break them."""
    return (
        S3_BUCKET_PATTERN.fullmatch(name) is not None
        and ".." not in name
        and S3_IPV4_LIKE.fullmatch(name) is None
        and not name.startswith(S3_RESERVED_PREFIXES)
    )


def s3_client(limits: FetchLimits = FetchLimits()):
    """The container's boto3 S3 client for these timeouts (one attempt per call, see _s3_client)."""
    return _s3_client(limits.connect_timeout, limits.read_timeout)


@lru_cache(maxsize=4)
def _s3_client(connect_timeout: float, read_timeout: float):
    """One boto3 client per container (creating one costs ~100 ms); boto3 is only imported here."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ServingError(
            500, "s3_unavailable", "s3:// URLs need boto3, which is not installed here."
        ) from None
    # One attempt: a retry would outlive the deadline; the client can retry the whole request.
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    # Reads go through our deadline sockets (s3_transport); writes through botocore's own transport.
    limits = FetchLimits(connect_timeout=connect_timeout, read_timeout=read_timeout)
    return s3_transport.install(boto3.client("s3", config=config), limits, _s3_get)


def _s3_get(request, limits: FetchLimits, deadline: float):
    """One S3 GET (a botocore request, signed) on our deadline sockets -> botocore's response, the body
    read within ``deadline`` and ``limits``' caps (s3_transport.DeadlineSession sends every read here)."""
    parts = urlsplit(request.url)
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES or not parts.hostname:
        raise ServingError(500, "misconfigured", "The S3 endpoint is not an http(s) URL.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    target = _Target(request.url, scheme, parts.hostname, parts.port or HTTP_SCHEMES[scheme], path)
    host = _echo(target.host)
    conn = response = None
    try:
        # The endpoint is the SDK's (region or AWS_ENDPOINT_URL_S3), not a caller's: no address check.
        addresses = _resolve(target, socket.getaddrinfo)
        sock = _connect(target, addresses, limits, deadline)
        conn = _PinnedConnection(target, sock)
        # botocore asks for "100-continue" on some requests; a GET has no body to hold back.
        headers = {k: v for k, v in request.headers.items() if k.lower() != "expect"}
        conn.request("GET", target.request_target, headers=headers)
        sock.body_cap, sock.overhead_cap = limits.max_bytes, limits.max_overhead_bytes
        sock.byte_budget = limits.max_overhead_bytes + io.DEFAULT_BUFFER_SIZE
        response = conn.getresponse()
        sock.byte_budget = limits.max_bytes + limits.max_overhead_bytes
        declared = _declared_length(response.getheader("Content-Length"))
        if response.status == 200 and declared is not None and declared > limits.max_bytes:
            raise _too_large(limits.max_bytes)
        body = _read_capped(response.read, limits.max_bytes, deadline)
        if declared is not None and len(body) < declared:
            raise S3ReadError(
                502,
                "upstream_error",
                f"S3 ({host}) sent {len(body)} of {declared} bytes.",
            )
        return s3_transport.response(request.url, response.status, dict(response.getheaders()), body)
    except ServingError:
        raise
    except _ResponseTooLarge:
        raise _too_large(limits.max_bytes) from None
    # Errors S3ReadError with no HTTP status: no (whole) answer from S3, which a retry may get.
    except TimeoutError:
        raise S3ReadError(504, "upstream_timeout", f"S3 ({host}) did not answer in time.") from None
    except (http.client.HTTPException, ValueError):
        raise S3ReadError(502, "upstream_error", f"S3 ({host}) sent a malformed HTTP response.") from None
    except OSError:
        raise S3ReadError(502, "upstream_error", f"The connection to S3 ({host}) failed.") from None
    finally:
        if response is not None:
            response.close()
        if conn is not None:
            conn.close()


def _fetch_s3(url: str, limits: FetchLimits, deadline: float) -> bytes:
    bucket, key = _parse_s3_url(url)
    return _read_s3(bucket, key, limits, deadline)[0]


def read_s3_object(
    bucket: str, key: str, limits: FetchLimits = FetchLimits(), *, version_id: str | None = None
) -> tuple[bytes, dict]:
    """``(bytes, {"etag", "version_id"})`` of one object, with the same caps and errors as an s3:// URL."""
    check_s3_location(bucket, key)
    return _read_s3(bucket, key, limits, time.monotonic() + limits.total_timeout, version_id)


def _read_s3(
    bucket: str, key: str, limits: FetchLimits, deadline: float, version_id: str | None = None
) -> tuple[bytes, dict]:
    client = s3_client(limits)
    where = _echo(f"s3://{bucket}/{key}")
    request = {"Bucket": bucket, "Key": key}
    if version_id:
        request["VersionId"] = version_id
    try:
        # Headers and body arrive within the deadline, or the socket gives up waiting (s3_transport).
        with s3_transport.read_budget(limits, deadline):
            response = client.get_object(**request)
    except ServingError:
        raise
    except Exception as exc:  # botocore raises many types; all are upstream failures
        raise s3_error(exc, where) from None
    body = response["Body"]
    try:
        length = response.get("ContentLength")
        if isinstance(length, int) and length > limits.max_bytes:
            raise _too_large(limits.max_bytes)
        _check_content_type(response.get("ContentType"))
        # s3_transport has read the body already, within the deadline and the cap: one read hands over
        # its buffer without a copy.
        data = body.read()
        if len(data) > limits.max_bytes:
            raise _too_large(limits.max_bytes)
        return data, {"etag": response.get("ETag"), "version_id": response.get("VersionId")}
    except ServingError:
        raise
    except TimeoutError:
        raise ServingError(504, "upstream_timeout", f"Reading {where} took too long.") from None
    except Exception as exc:
        raise s3_error(exc, where) from None
    finally:
        body.close()


def s3_error(exc: Exception, where: str) -> S3ReadError:
    """An exception from a boto3 S3 call as a ServingError that names ``where`` but no account details."""
    # Only the error code goes back: botocore's messages can name the function's role and account.
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        http_status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code") or http_status or "unknown error"
        return S3ReadError(
            502,
            "upstream_error",
            f"S3 refused {where}: {_echo(str(code))}.",
            s3_code=str(code),
            http_status=http_status if isinstance(http_status, int) else None,
        )
    if "Timeout" in type(exc).__name__:
        return S3ReadError(504, "upstream_timeout", f"S3 did not answer in time for {where}.")
    # No library or exception names reach a caller: what failed is said in our own words.
    logger.warning("S3 call for %s failed: %s", where, type(exc).__name__)
    return S3ReadError(502, "upstream_error", f"S3 gave no usable answer for {where}.")

"""lambda_function.fetch: refused URLs and addresses, redirects, caps, timeouts, TLS and s3.

Only loopback traffic: real servers listen on 127.0.0.1; every other address is either judged by the pure
check_address or handed out by a stub resolver to a fetch that must refuse it before any connect. The
default resolver here only parses numeric hosts (AI_NUMERICHOST), so no test can send a DNS query.
"""

from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import tracemalloc

import pytest
from PIL import Image

from lambda_function import fetch as fetch_mod
from lambda_function.errors import ServingError
from lambda_function.fetch import FetchLimits, allowed_hosts_from_env, check_address, fetch
from lambda_function.preprocess import preprocess
from local import loopback

LIMITS = FetchLimits(max_bytes=100_000, connect_timeout=2.0, read_timeout=2.0, total_timeout=4.0)
# For stall and drip servers: small enough to keep the suite fast, large enough for loopback.
SLOW_LIMITS = FetchLimits(max_bytes=100_000, connect_timeout=1.0, read_timeout=0.3, total_timeout=0.6)
# How long a stalling server handler waits at most (it is released at teardown anyway).
STALL_S = 5.0


def numeric_only(host, port, family=0, type=0, proto=0, flags=0):
    """getaddrinfo that never looks a name up: IP literals in any form the OS parses, nothing else."""
    return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


def stub_resolver(mapping: dict[str, list[str]], calls: list | None = None):
    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for ip in mapping[host]:
            if ":" in ip:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return infos

    return resolve


def png_bytes(size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


# --- a loopback HTTP server whose routes write raw bytes ---------------------------------------------


def write(handler, data: bytes) -> None:
    handler.wfile.write(data)
    handler.wfile.flush()


def head(status=200, headers=()) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", "Connection: close", *[f"{k}: {v}" for k, v in headers]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def reply(body=PNG, status=200, content_type="image/png", length: object = "auto", extra=()):
    headers = list(extra)
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if length == "auto":
        headers.append(("Content-Length", len(body)))
    elif length is not None:
        headers.append(("Content-Length", length))
    return lambda handler, server: write(handler, head(status, headers) + body)


def redirect(location, status=302):
    return reply(b"", status=status, content_type=None, extra=[("Location", location)])


class LoopbackServer:
    def __init__(self, tls: ssl.SSLContext | None = None):
        self.routes: dict = {}
        self.requests: list[tuple[str, dict]] = []
        self.stop = threading.Event()
        server = self

        class Handler(loopback.QuietHandler):
            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path, reply(b"no route", status=404))
                route(self, server)

        # Clients hang up on purpose here: quiet_errors keeps their broken pipes out of the output.
        self._server = loopback.LoopbackServer(Handler, tls=tls, quiet_errors=True)
        self.port = self._server.port

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}"})

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self._server.close()


@pytest.fixture
def server():
    srv = LoopbackServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("FETCH_ALLOWED_HOSTS", raising=False)
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)


@pytest.fixture
def connects(monkeypatch):
    """Every socket connect: recorded, then refused, so no packet leaves (loopback or not)."""
    calls = []

    def refuse(sock, address):
        calls.append(address)
        raise ConnectionRefusedError(111, "Connection refused (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return calls


def get(url, limits=LIMITS, allowed=frozenset(), resolver=numeric_only) -> bytes:
    return fetch(url, limits, allowed_hosts=allowed, resolver=resolver)


def refused(url, status, code, **kwargs) -> ServingError:
    with pytest.raises(ServingError) as info:
        get(url, **kwargs)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value


# --- the URL itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, 123, b"http://127.0.0.1/", ["http://x/"], {"url": "x"}])
def test_non_string_url_is_invalid(url):
    refused(url, 400, "invalid_url")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "example.com/shirt.jpg",
        "http:///shirt.jpg",
        "http://user:secret@example.com/shirt.jpg",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://example.com:port/",
        "http://[::1/",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com/" + "a" * 2100,
    ],
)
def test_malformed_url_is_invalid(url, connects):
    refused(url, 400, "invalid_url")
    assert connects == []


@pytest.mark.parametrize(
    "url", ["http://example.com/a\ud800.jpg", "http://\ud800example.com/x.jpg", "s3://bucket/\udfff.jpg"]
)
def test_url_with_a_lone_surrogate_is_invalid(url, connects):
    # JSON may carry "\ud800"; no encoder can send it, so it is the client's mistake, not a 500.
    error = refused(url, 400, "invalid_url")
    assert "surrogate" in error.message
    assert connects == []


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/", "FILE:///etc/passwd"],
)
def test_other_schemes_are_unsupported(url, connects):
    refused(url, 400, "unsupported_scheme")
    assert connects == []


# --- addresses ----------------------------------------------------------------------------------------

BLOCKED = [
    "127.0.0.1",
    "127.0.0.2",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.170.2",
    "100.64.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "::1",
    "::",
    "fd00:ec2::254",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "2001::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",
    "2002:c0a8:101::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822"]


@pytest.mark.parametrize("address", BLOCKED)
def test_check_address_refuses_non_public(address):
    with pytest.raises(ServingError) as info:
        check_address(ipaddress.ip_address(address))
    assert (info.value.status, info.value.code) == (400, "url_refused")


@pytest.mark.parametrize("address", PUBLIC)
def test_check_address_allows_public(address):
    check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "host", ["127.0.0.2", "2130706433", "0x7f.1", "127.1", "[::1]", "[::ffff:127.0.0.1]"]
)
def test_loopback_in_any_spelling_is_refused(server, host):
    server.routes["/img"] = reply()
    refused(server.url("/img", host=host), 400, "url_refused", allowed=server.allowed)
    assert server.requests == []


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254", "fd00:ec2::254", "::ffff:192.168.0.1"])
def test_private_resolution_is_refused_before_any_connect(address, connects):
    resolver = stub_resolver({"evil.example": [address]})
    refused("http://evil.example/shirt.jpg", 400, "url_refused", resolver=resolver)
    assert connects == []


@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "fe80::1"])
def test_refusal_does_not_say_what_a_name_resolves_to(address, connects):
    # In a VPC, "resolves to a private address" would tell a caller which internal names exist.
    error = refused(
        "http://intranet.example/",
        400,
        "url_refused",
        resolver=stub_resolver({"intranet.example": [address]}),
    )
    for word in ("private", "loopback", "link-local", "metadata", "non-global", address):
        assert word not in error.message
    assert (
        error.message
        == refused(
            "http://8.8.8.8:80/", 400, "url_refused", resolver=stub_resolver({"8.8.8.8": ["10.0.0.1"]})
        ).message
    )


def test_every_resolved_address_is_checked(connects):
    resolver = stub_resolver({"mixed.example": ["93.184.216.34", "10.0.0.1"]})
    refused("https://mixed.example/shirt.jpg", 400, "url_refused", resolver=resolver)
    assert connects == []


def test_public_address_passes_the_check_and_is_the_one_connected(connects):
    resolver = stub_resolver({"public.example": ["93.184.216.34"]})
    error = refused("http://public.example/shirt.jpg", 502, "upstream_error", resolver=resolver)
    assert connects == [("93.184.216.34", 80)]
    assert "refused the connection" in error.message


def test_unresolvable_host_is_an_upstream_error(connects):
    refused("http://nowhere.example/", 502, "upstream_error", resolver=stub_resolver({}))
    assert connects == []


def test_connection_goes_to_the_checked_address_with_the_original_host(server, monkeypatch):
    server.routes["/img"] = reply()
    # A rebinding resolver: the second answer would be internal. Only the first may ever be used.
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    calls = []

    def rebinding(host, port, *args):
        calls.append(host)
        return stub_resolver({host: next(answers)})(host, port)

    connected = []
    real_connect = socket.socket.connect

    def spy(sock, address):
        connected.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    allowed = frozenset({f"pinned.example:{server.port}"})
    assert get(f"http://pinned.example:{server.port}/img", allowed=allowed, resolver=rebinding) == PNG
    assert calls == ["pinned.example"]
    assert connected == [("127.0.0.1", server.port)]
    path, headers = server.requests[0]
    assert headers["Host"] == f"pinned.example:{server.port}"
    assert headers["User-Agent"] == "edge-clothing-classifier/0.1"
    assert headers["Accept"] == "image/*"
    assert "Cookie" not in headers and "Authorization" not in headers


# --- FETCH_ALLOWED_HOSTS --------------------------------------------------------------------------------


def test_allowed_host_pair_reaches_the_loopback_server(server):
    server.routes["/img"] = reply()
    assert get(server.url("/img"), allowed=server.allowed) == PNG


def test_same_host_on_another_port_is_refused(server):
    server.routes["/img"] = reply()
    other = frozenset({f"127.0.0.1:{server.port + 1}"})
    refused(server.url("/img"), 400, "url_refused", allowed=other)
    assert server.requests == []


def test_allowed_pair_is_the_host_as_written(server):
    server.routes["/img"] = reply()
    refused(server.url("/img", host="2130706433"), 400, "url_refused", allowed=server.allowed)
    assert server.requests == []


def test_allowed_pair_uses_the_scheme_default_port(connects):
    resolver = stub_resolver({"localhost": ["127.0.0.1"]})
    allowed = frozenset({"LOCALHOST:80"})
    refused("http://localhost/img", 502, "upstream_error", allowed=allowed, resolver=resolver)
    assert connects == [("127.0.0.1", 80)]


def test_allowed_hosts_come_from_env_when_not_given(server, monkeypatch):
    server.routes["/img"] = reply()
    monkeypatch.setenv("FETCH_ALLOWED_HOSTS", f" 127.0.0.1:{server.port} ,other:1")
    assert fetch(server.url("/img"), LIMITS, resolver=numeric_only) == PNG
    monkeypatch.setenv("FETCH_ALLOWED_HOSTS", "")
    with pytest.raises(ServingError) as info:
        fetch(server.url("/img"), LIMITS, resolver=numeric_only)
    assert info.value.code == "url_refused"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, set()),
        ("", set()),
        (" , ", set()),
        ("127.0.0.1:8080,LocalHost:9000", {"127.0.0.1:8080", "localhost:9000"}),
        ("[::1]:8080", {"[::1]:8080"}),
    ],
)
def test_allowed_hosts_from_env_parses_pairs(raw, expected):
    environ = {} if raw is None else {"FETCH_ALLOWED_HOSTS": raw}
    assert allowed_hosts_from_env(environ) == expected


@pytest.mark.parametrize("raw", ["localhost", "localhost:abc", "http://localhost:80", "user@host:80"])
def test_allowed_hosts_entry_without_a_port_is_a_config_error(raw):
    with pytest.raises(ValueError, match="FETCH_ALLOWED_HOSTS"):
        allowed_hosts_from_env({"FETCH_ALLOWED_HOSTS": raw})


def test_bad_allowed_hosts_setting_is_a_named_500_not_a_crash(server, monkeypatch):
    server.routes["/img"] = reply()
    monkeypatch.setenv("FETCH_ALLOWED_HOSTS", "127.0.0.1")  # no port
    with pytest.raises(ServingError) as info:
        fetch(server.url("/img"), LIMITS, resolver=numeric_only)
    assert (info.value.status, info.value.code) == (500, "misconfigured")
    assert "FETCH_ALLOWED_HOSTS" in info.value.message
    monkeypatch.setenv("FETCH_ALLOWED_HOSTS", f"127.0.0.1:{server.port}")
    assert fetch(server.url("/img"), LIMITS, resolver=numeric_only) == PNG


def test_lambda_runtime_api_is_refused_even_when_allowed(server, monkeypatch):
    server.routes["/2018-06-01/runtime/invocation/next"] = reply()
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", f"127.0.0.1:{server.port}")
    url = server.url("/2018-06-01/runtime/invocation/next")
    refused(url, 400, "url_refused", allowed=server.allowed)
    by_name = stub_resolver({"localhost": ["127.0.0.1"]})
    allowed = frozenset({f"localhost:{server.port}"})
    refused(server.url("/", host="localhost"), 400, "url_refused", allowed=allowed, resolver=by_name)
    assert server.requests == []


# --- redirects ---------------------------------------------------------------------------------------


def redirect_chain(server, hops: int) -> str:
    for n in range(hops, 0, -1):
        server.routes[f"/r{n}"] = redirect(
            f"/r{n - 1}" if n > 1 else "img", status=(301, 302, 307, 308)[n % 4]
        )
    server.routes["/img"] = reply()
    return server.url(f"/r{hops}")


def test_three_redirects_are_followed(server):
    assert get(redirect_chain(server, 3), allowed=server.allowed) == PNG
    assert [path for path, _ in server.requests] == ["/r3", "/r2", "/r1", "/img"]


def test_four_redirects_are_refused(server):
    refused(redirect_chain(server, 4), 502, "too_many_redirects", allowed=server.allowed)
    assert len(server.requests) == 4


def test_redirect_to_a_refused_address_is_refused(server):
    server.routes["/go"] = redirect(server.url("/img", host="127.0.0.2"), status=303)
    server.routes["/img"] = reply()
    error = refused(server.url("/go"), 400, "url_refused", allowed=server.allowed)
    assert "Redirect" in error.message
    assert [path for path, _ in server.requests] == ["/go"]


@pytest.mark.parametrize("location", ["file:///etc/passwd", "s3://my-bucket/secret.jpg", "gopher://x/"])
def test_redirect_to_another_scheme_is_refused(server, location, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # an s3 redirect must not even try boto3
    server.routes["/go"] = redirect(location)
    refused(server.url("/go"), 400, "unsupported_scheme", allowed=server.allowed)


def test_redirect_without_location_is_an_upstream_error(server):
    server.routes["/go"] = reply(b"", status=302, content_type=None)
    refused(server.url("/go"), 502, "upstream_error", allowed=server.allowed)


# --- status, type and size ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 403, 500, 503, 204])
def test_upstream_error_status_is_502_with_the_status(server, status):
    server.routes["/img"] = reply(b"nope", status=status, content_type="text/plain")
    error = refused(server.url("/img"), 502, "upstream_error", allowed=server.allowed)
    assert str(status) in error.message


@pytest.mark.parametrize(
    "content_type", ["text/html", "Text/HTML; charset=utf-8", "application/json", "application/problem+json"]
)
def test_clearly_non_image_content_type_is_415(server, content_type):
    server.routes["/img"] = reply(b"<html></html>", content_type=content_type)
    refused(server.url("/img"), 415, "unsupported_media_type", allowed=server.allowed)


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "binary/octet-stream", "image/jpeg"]
)
def test_unknown_or_image_content_type_is_left_to_the_decoder(server, content_type):
    server.routes["/img"] = reply(content_type=content_type)
    assert get(server.url("/img"), allowed=server.allowed) == PNG


def test_html_served_as_jpeg_is_caught_by_the_decoder(server):
    server.routes["/img"] = reply(b"<html><body>not a shirt</body></html>", content_type="image/jpeg")
    data = get(server.url("/img"), allowed=server.allowed)
    with pytest.raises(ServingError) as info:
        preprocess(data, (8, 8))
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


def test_empty_body_is_returned_and_the_decoder_says_422(server):
    server.routes["/img"] = reply(b"")
    data = get(server.url("/img"), allowed=server.allowed)
    assert data == b""
    with pytest.raises(ServingError) as info:
        preprocess(data, (8, 8))
    assert (info.value.status, info.value.code) == (422, "empty_image")


def test_fetched_image_decodes(server):
    server.routes["/img"] = reply()
    assert preprocess(get(server.url("/img"), allowed=server.allowed), (8, 8)).shape == (8, 8, 3)


def test_content_length_over_the_cap_is_413(server):
    server.routes["/img"] = reply(b"x" * 2000)
    limits = FetchLimits(max_bytes=1000)
    refused(server.url("/img"), 413, "image_too_large_bytes", limits=limits, allowed=server.allowed)


def test_body_over_the_cap_without_content_length_is_413(server):
    server.routes["/img"] = reply(b"x" * 5000, length=None)
    limits = FetchLimits(max_bytes=1000)
    refused(server.url("/img"), 413, "image_too_large_bytes", limits=limits, allowed=server.allowed)


def test_chunked_body_over_the_cap_is_413(server):
    chunks = b"".join(b"%x\r\n%s\r\n" % (500, b"y" * 500) for _ in range(4)) + b"0\r\n\r\n"
    server.routes["/img"] = reply(chunks, length=None, extra=[("Transfer-Encoding", "chunked")])
    limits = FetchLimits(max_bytes=1000)
    refused(server.url("/img"), 413, "image_too_large_bytes", limits=limits, allowed=server.allowed)


# --- every byte on the socket counts (status line, headers, 1xx, chunk sizes, trailers) -----------------

FRAMING_LIMITS = FetchLimits(max_bytes=100_000, max_overhead_bytes=8192, read_timeout=2.0, total_timeout=4.0)
FLOOD_BYTES = 20 * 1024 * 1024  # what a hostile server offers; the fetch must read next to none of it


def chunked_head(extra=()) -> bytes:
    return head(200, [("Content-Type", "image/png"), ("Transfer-Encoding", "chunked"), *extra])


def flood(prefix: bytes, unit: bytes, total: int = FLOOD_BYTES):
    """A route writing ``prefix``, then ``unit`` again and again, up to ``total`` bytes or a hang-up."""

    def route(handler, srv):
        write(handler, prefix)
        block = unit * max(1, 65536 // len(unit))
        for _ in range(total // len(block)):
            if srv.stop.is_set():
                return
            write(handler, block)

    return route


def traced_peak(call) -> int:
    """Peak bytes Python allocated while ``call()`` ran (its ServingError is left to the caller)."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def refused_with_peak(server, status, code, limits=FRAMING_LIMITS) -> int:
    error: list[ServingError] = []

    def call():
        with pytest.raises(ServingError) as info:
            get(server.url("/img"), limits, allowed=server.allowed)
        error.append(info.value)

    peak = traced_peak(call)
    assert (error[0].status, error[0].code) == (status, code), error[0].message
    return peak


def test_chunk_size_minus_one_does_not_read_to_eof(server):
    # http.client's int("-1", 16) == -1, then read(-1): the whole flood in one call (issue 12, #2).
    server.routes["/img"] = flood(chunked_head() + b"-1\r\n", b"x")
    peak = refused_with_peak(server, 502, "upstream_error")
    assert peak < 2 * 1024 * 1024, peak


@pytest.mark.parametrize(
    "size_line",
    [b"-1", b"+a", b"1_0", b"0x10", b"", b"g", b" ", b"1" * 17, b"a" * 40, b"\xd9\xa1", b"1;" + b"e" * 2000],
    ids=["minus", "plus", "underscore", "0x", "empty", "not-hex", "blank", "17-digits", "40-digits",
         "arabic-digit", "long-extension"],
)  # fmt: skip
def test_malformed_chunk_size_is_an_upstream_error(server, size_line):
    body = b"%x\r\n%s\r\n" % (len(PNG), PNG) + size_line + b"\r\n" + b"z" * 1000 + b"\r\n0\r\n\r\n"
    server.routes["/img"] = reply(body, length=None, extra=[("Transfer-Encoding", "chunked")])
    refused(server.url("/img"), 502, "upstream_error", allowed=server.allowed)


def test_chunk_larger_than_the_cap_is_refused_before_it_is_read(server):
    server.routes["/img"] = flood(chunked_head() + b"7fffffffffffffff\r\n", b"x")
    peak = refused_with_peak(server, 413, "image_too_large_bytes")
    assert peak < 2 * 1024 * 1024, peak


def test_valid_chunked_response_with_extensions_trailer_and_100_continue(server):
    body = b"".join(b"%X;name=value\r\n%s\r\n" % (len(part), part) for part in (PNG[:10], PNG[10:]))
    body += b"0\r\nX-Checksum: 1\r\n\r\n"
    response = b"HTTP/1.1 100 Continue\r\n\r\n" + chunked_head() + body
    server.routes["/img"] = lambda handler, srv: write(handler, response)
    assert get(server.url("/img"), FRAMING_LIMITS, allowed=server.allowed) == PNG


TRAILERS = flood(chunked_head() + b"4\r\nabcd\r\n0\r\n", b"X-Trailer: 0123456789\r\n")
CONTINUES = flood(b"", b"HTTP/1.1 100 Continue\r\n\r\n")
HEADERS = flood(b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"p" * 60_000 + b"\r\n", 90 * 60_010)
ONE_BYTE_CHUNKS = flood(chunked_head(), b"1\r\nx\r\n")


@pytest.mark.parametrize(
    "route",
    [TRAILERS, CONTINUES, HEADERS, ONE_BYTE_CHUNKS],
    ids=["trailers", "100-continue", "headers", "one-byte-chunks"],
)
def test_framing_counts_against_the_byte_cap(server, route):
    # Each of these is a valid or near-valid response whose non-body bytes never end.
    server.routes["/img"] = route
    peak = refused_with_peak(server, 413, "image_too_large_bytes")
    assert peak < 2 * 1024 * 1024, peak


ROOMY = FetchLimits(max_bytes=1_000_000, max_overhead_bytes=8192, read_timeout=2.0, total_timeout=4.0)


@pytest.mark.parametrize(("pad", "accepted"), [(4_000, True), (3 * 9_000, False)])
def test_headers_get_the_overhead_allowance_not_the_body_cap(server, pad, accepted):
    headers = [("Content-Type", "image/png"), ("Content-Length", len(PNG))]
    headers += [(f"X-Pad-{i}", "p" * 9_000) for i in range(pad // 9_000)] or [("X-Pad", "p" * pad)]
    server.routes["/img"] = lambda handler, srv: write(handler, head(200, headers) + PNG)
    if accepted:
        assert get(server.url("/img"), ROOMY, allowed=server.allowed) == PNG
    else:
        refused(server.url("/img"), 413, "image_too_large_bytes", limits=ROOMY, allowed=server.allowed)


@pytest.mark.parametrize(("trailer_bytes", "accepted"), [(2_000, True), (20_000, False)])
def test_trailers_get_the_overhead_allowance_not_what_the_body_left(server, trailer_bytes, accepted):
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 990) for i in range(trailer_bytes // 1000))
    body = b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(PNG), PNG, trailers)
    server.routes["/img"] = lambda handler, srv: write(handler, chunked_head() + body)
    if accepted:
        assert get(server.url("/img"), ROOMY, allowed=server.allowed) == PNG
    else:
        refused(server.url("/img"), 413, "image_too_large_bytes", limits=ROOMY, allowed=server.allowed)


def test_the_next_fetch_works_after_a_refused_flood(server):
    server.routes["/bad"] = flood(chunked_head() + b"-1\r\n", b"x")
    server.routes["/img"] = reply()
    refused(server.url("/bad"), 502, "upstream_error", allowed=server.allowed)
    assert get(server.url("/img"), allowed=server.allowed) == PNG


def test_body_of_exactly_the_cap_is_accepted(server):
    server.routes["/img"] = reply(b"z" * 1000, length=None)
    assert get(server.url("/img"), FetchLimits(max_bytes=1000), allowed=server.allowed) == b"z" * 1000


def test_content_length_lie_never_reads_past_the_declared_length(server):
    # Says 10, sends far more than the cap: only the 10 declared bytes are ever read.
    server.routes["/img"] = reply(b"a" * 10 + b"b" * 50_000, length=10)
    assert get(server.url("/img"), FetchLimits(max_bytes=1000), allowed=server.allowed) == b"a" * 10


def test_content_length_of_5000_digits_is_413_not_a_parse_error(server):
    server.routes["/img"] = reply(length="9" * 5000)
    refused(server.url("/img"), 413, "image_too_large_bytes", allowed=server.allowed)


def test_body_shorter_than_content_length_is_an_upstream_error(server):
    server.routes["/img"] = reply(b"short", length=100)
    refused(server.url("/img"), 502, "upstream_error", allowed=server.allowed)


@pytest.mark.parametrize("garbage", [b"HELLO\r\n\r\n", b"", b"HTTP/1.1 abc\r\n\r\n"])
def test_malformed_response_is_an_upstream_error(server, garbage):
    server.routes["/img"] = lambda handler, srv: write(handler, garbage)
    refused(server.url("/img"), 502, "upstream_error", allowed=server.allowed)


def test_refused_connection_is_an_upstream_error():
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    allowed = frozenset({f"127.0.0.1:{port}"})
    refused(f"http://127.0.0.1:{port}/img", 502, "upstream_error", allowed=allowed)


# --- timeouts ------------------------------------------------------------------------------------------


def stall_before_headers(handler, srv):
    srv.stop.wait(STALL_S)


def stall_after_headers(handler, srv):
    write(handler, head(200, [("Content-Type", "image/png"), ("Content-Length", 1000)]) + b"x" * 10)
    srv.stop.wait(STALL_S)


def drip_body(handler, srv):
    # One byte every 50 ms: each read is quick, only the total deadline can stop it.
    write(handler, head(200, [("Content-Type", "image/png")]))
    for _ in range(int(STALL_S / 0.05)):
        if srv.stop.wait(0.05):
            return
        write(handler, b"x")


def drip_headers(handler, srv):
    write(handler, b"HTTP/1.1 200 OK\r\n")
    for _ in range(int(STALL_S / 0.05)):
        if srv.stop.wait(0.05):
            return
        write(handler, b"X-Pad: 1\r\n")


@pytest.mark.parametrize("route", [stall_before_headers, stall_after_headers, drip_body, drip_headers])
def test_slow_server_is_a_504(server, route):
    server.routes["/img"] = route
    refused(server.url("/img"), 504, "upstream_timeout", limits=SLOW_LIMITS, allowed=server.allowed)


def test_deadline_covers_all_redirect_hops(server):
    server.routes["/go"] = redirect("/slow")
    server.routes["/slow"] = drip_body
    refused(server.url("/go"), 504, "upstream_timeout", limits=SLOW_LIMITS, allowed=server.allowed)


def test_limits_are_validated():
    with pytest.raises(ValueError):
        FetchLimits(total_timeout=0)
    with pytest.raises(ValueError):
        FetchLimits(max_bytes=-1)
    with pytest.raises(ValueError):
        FetchLimits(max_overhead_bytes=-1)


# --- TLS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for "localhost" and 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate, monkeypatch):
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    fetch_mod._tls_context.cache_clear()
    srv = LoopbackServer(tls=context)
    srv.sni_names = names
    try:
        yield srv
    finally:
        srv.close()
        fetch_mod._tls_context.cache_clear()


def trust(certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    fetch_mod._tls_context.cache_clear()


LOCALHOST = stub_resolver({"localhost": ["127.0.0.1"]})


def test_https_verifies_the_certificate_against_the_url_host(tls_server, certificate, monkeypatch):
    trust(certificate, monkeypatch)
    tls_server.routes["/img"] = reply()
    allowed = frozenset({f"localhost:{tls_server.port}"})
    url = tls_server.url("/img", host="localhost", scheme="https")
    assert get(url, allowed=allowed, resolver=LOCALHOST) == PNG
    assert tls_server.sni_names == ["localhost"]
    assert tls_server.requests[0][1]["Host"] == f"localhost:{tls_server.port}"


def test_https_with_an_untrusted_certificate_is_an_upstream_error(tls_server):
    tls_server.routes["/img"] = reply()
    url = tls_server.url("/img", scheme="https")
    error = refused(url, 502, "upstream_error", allowed=tls_server.allowed)
    assert "certificate" in error.message
    assert tls_server.requests == []


def test_https_to_http_redirect_is_refused(tls_server, certificate, server, monkeypatch):
    trust(certificate, monkeypatch)
    server.routes["/img"] = reply()
    tls_server.routes["/go"] = redirect(server.url("/img"))
    allowed = tls_server.allowed | server.allowed
    refused(tls_server.url("/go", scheme="https"), 400, "url_refused", allowed=allowed)
    assert server.requests == []

"""S3 reads on fetch.py's sockets: one deadline for the whole call, headers and body, enforced while waiting.

botocore's own transport (urllib3) has a connect timeout and a timeout per ``recv``, and nothing that
bounds a whole response: an object whose body arrives one byte every half second, or whose headers do,
holds the call until the server gives up. So the S3 client's HTTP session is wrapped: every GET (GetObject,
GetObjectTagging: every read) goes out through fetch.py's socket code, whose socket re-arms its timeout to
``min(read timeout, time left)`` before every ``recv`` and counts every byte against a cap, the same
machinery and budget as a URL fetch. Writes (PutObject, PutObjectTagging) keep botocore's transport,
with its retries off and its per-read timeouts: they go to our own results bucket.

botocore still signs the request and parses the answer (its error codes, SlowDown, NoSuchKey...); only
the bytes on the wire are ours. The deadline of a call is set by :func:`read_budget` around it (bulk reads
and ``s3://`` URLs); a call outside one gets ``total_timeout`` from the moment it is sent.

Differences from botocore's transport worth knowing: one connection per read (no keep-alive pool: a TLS
handshake per object, hidden behind the downloads running ahead of the classifier), the system's CA
store, and no HTTP proxy support.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

from lambda_function import fetch
from lambda_function.errors import ServingError

# What one read may cost: the object (capped by the caller's limits) plus headers and framing.
_budget = threading.local()


@contextmanager
def read_budget(limits: fetch.FetchLimits, deadline: float):
    """S3 GETs sent by this thread inside the block share ``deadline`` and ``limits``' byte cap."""
    previous = getattr(_budget, "value", None)
    _budget.value = (limits, deadline)
    try:
        yield
    finally:
        _budget.value = previous


class _Body(io.BytesIO):
    """The response body, already read: ``read(n)`` for a streamed GetObject, ``stream()`` for errors."""

    def stream(self, **_kwargs):
        yield self.getvalue()


class DeadlineSession:
    """An S3 client's HTTP session whose GETs go through fetch.py's deadline sockets."""

    def __init__(self, fallback, limits: fetch.FetchLimits):
        self._fallback = fallback  # botocore's own session, for writes
        self._limits = limits

    def send(self, request):
        if request.method != "GET":
            return self._fallback.send(request)
        limits, deadline = getattr(_budget, "value", None) or (
            self._limits,
            time.monotonic() + self._limits.total_timeout,
        )
        return _get(request, limits, deadline)

    def close(self) -> None:
        self._fallback.close()


def install(client, limits: fetch.FetchLimits):
    """Put a DeadlineSession under ``client`` (a boto3 S3 client); the client is returned."""
    endpoint = client._endpoint  # botocore's one seam for a transport; a missing one fails the tests
    if not isinstance(endpoint.http_session, DeadlineSession):
        endpoint.http_session = DeadlineSession(endpoint.http_session, limits)
    return client


def _get(request, limits: fetch.FetchLimits, deadline: float):
    from botocore.awsrequest import AWSResponse

    parts = urlsplit(request.url)
    scheme = parts.scheme.lower()
    if scheme not in fetch.HTTP_SCHEMES or not parts.hostname:
        raise ServingError(500, "misconfigured", "The S3 endpoint is not an http(s) URL.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    target = fetch._Target(
        request.url, scheme, parts.hostname, parts.port or fetch.HTTP_SCHEMES[scheme], path
    )
    host = fetch._echo(target.host)
    conn = response = None
    try:
        # The endpoint is the SDK's (region or AWS_ENDPOINT_URL_S3), not a caller's: no address check.
        addresses = fetch._resolve(target, socket.getaddrinfo)
        sock = fetch._connect(target, addresses, limits, deadline)
        conn = fetch._PinnedConnection(target, sock)
        # botocore asks for "100-continue" on some requests; a GET has no body to hold back.
        headers = {k: v for k, v in request.headers.items() if k.lower() != "expect"}
        conn.request("GET", target.request_target, headers=headers)
        sock.body_cap, sock.overhead_cap = limits.max_bytes, limits.max_overhead_bytes
        sock.byte_budget = limits.max_overhead_bytes + io.DEFAULT_BUFFER_SIZE
        response = conn.getresponse()
        sock.byte_budget = limits.max_bytes + limits.max_overhead_bytes
        declared = fetch._declared_length(response.getheader("Content-Length"))
        if response.status == 200 and declared is not None and declared > limits.max_bytes:
            raise fetch._too_large(limits.max_bytes)
        body = fetch._read_capped(response.read, limits.max_bytes, deadline)
        if declared is not None and len(body) < declared:
            raise fetch.S3ReadError(
                502,
                "upstream_error",
                f"S3 ({host}) sent {len(body)} of {declared} bytes.",
            )
        return AWSResponse(request.url, response.status, dict(response.getheaders()), _Body(body))
    except ServingError:
        raise
    except fetch._ResponseTooLarge:
        raise fetch._too_large(limits.max_bytes) from None
    # Errors S3ReadError with no HTTP status: no (whole) answer from S3, which a retry may get.
    except TimeoutError:
        raise fetch.S3ReadError(504, "upstream_timeout", f"S3 ({host}) did not answer in time.") from None
    except (http.client.HTTPException, ValueError):
        raise fetch.S3ReadError(
            502, "upstream_error", f"S3 ({host}) sent a malformed HTTP response."
        ) from None
    except OSError:
        raise fetch.S3ReadError(502, "upstream_error", f"The connection to S3 ({host}) failed.") from None
    finally:
        if response is not None:
            response.close()
        if conn is not None:
            conn.close()

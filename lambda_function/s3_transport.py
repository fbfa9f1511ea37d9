"""The seam that puts S3 reads on fetch.py's sockets: one deadline for the whole call, headers and body.

botocore's own transport (urllib3) has a connect timeout and a timeout per ``recv``, and nothing that
bounds a whole response: an object whose body arrives one byte every half second, or whose headers do,
holds the call until the server gives up. So the S3 client's HTTP session is wrapped: every GET (GetObject,
GetObjectTagging: every read) goes out through fetch.py's socket code, whose socket re-arms its timeout to
``min(read timeout, time left)`` before every ``recv`` and counts every byte against a cap, the same
machinery and budget as a URL fetch. Writes (PutObject, PutObjectTagging) keep botocore's transport,
with its retries off and its per-read timeouts: they go to our own results bucket.

botocore still signs the request and parses the answer (its error codes, SlowDown, NoSuchKey...); only
the bytes on the wire are ours: fetch.py installs this session with its own GET (``fetch._s3_get``),
so this module knows botocore's side and nothing of the sockets. The deadline of a call is set by
:func:`read_budget` around it (bulk reads and ``s3://`` URLs); a call outside one gets ``total_timeout``
from the moment it is sent.

Differences from botocore's transport worth knowing: one connection per read (no keep-alive pool: a TLS
handshake per object, hidden behind the downloads running ahead of the classifier), the system's CA
store, and no HTTP proxy support.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

# What one read may cost: the object (capped by the caller's limits) plus headers and framing.
_budget = threading.local()


@contextmanager
def read_budget(limits, deadline: float):
    """S3 GETs sent by this thread inside the block share ``deadline`` and ``limits``' byte cap
    (``limits``: a fetch.FetchLimits)."""
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


# (botocore request, limits, deadline) -> botocore AWSResponse: how a GET goes out (fetch._s3_get).
Get = Callable[[object, object, float], object]


class DeadlineSession:
    """An S3 client's HTTP session whose GETs go out through ``get`` (fetch.py's deadline sockets)."""

    def __init__(self, fallback, limits, get: Get):
        self._fallback = fallback  # botocore's own session, for writes
        self._limits = limits
        self._get = get

    def send(self, request):
        if request.method != "GET":
            return self._fallback.send(request)
        limits, deadline = getattr(_budget, "value", None) or (
            self._limits,
            time.monotonic() + self._limits.total_timeout,
        )
        return self._get(request, limits, deadline)

    def close(self) -> None:
        self._fallback.close()


def install(client, limits, get: Get):
    """Put a DeadlineSession sending GETs through ``get`` under ``client`` (a boto3 S3 client); the
    client is returned."""
    endpoint = client._endpoint  # botocore's one seam for a transport; a missing one fails the tests
    if not isinstance(endpoint.http_session, DeadlineSession):
        endpoint.http_session = DeadlineSession(endpoint.http_session, limits, get)
    return client


def response(url: str, status: int, headers: dict, body: bytes):
    """botocore's response object for a GET whose body has been read already."""
    from botocore.awsrequest import AWSResponse

    return AWSResponse(url, status, headers, _Body(body))

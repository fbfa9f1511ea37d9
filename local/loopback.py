"""The one loopback HTTP server of this repository: ``make demo``, ``make bench-serve`` and the tests.

A ``ThreadingHTTPServer`` on 127.0.0.1 (an OS-chosen port) serving a handler class from a daemon thread,
stopped and joined on ``close()`` or at the end of a ``with`` block. The handler decides what is served;
requests are never logged (they would bury the demo's table and the test output). Standard library only.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
POLL_INTERVAL_S = 0.05  # how quickly shutdown() is noticed


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing; subclass it (or mix it in) and add ``do_GET``."""

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


class LoopbackServer:
    """``handler_class`` served on 127.0.0.1 from a background thread, until :meth:`close`."""

    def __init__(
        self,
        handler_class: type[BaseHTTPRequestHandler],
        *,
        tls: ssl.SSLContext | None = None,
        quiet_errors: bool = False,
        port: int = 0,  # 0: a free port the OS picks; `make web` asks for a fixed one
    ):
        self.httpd = ThreadingHTTPServer((HOST, port), handler_class)
        self.httpd.daemon_threads = True
        if quiet_errors:  # for tests whose clients hang up on purpose
            self.httpd.handle_error = lambda request, address: None
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, daemon=True
        )
        self.thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the form FETCH_ALLOWED_HOSTS takes."""
        return f"{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

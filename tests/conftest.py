"""Shared fixtures: the tiny model, synthetic images, a loopback image server, the handler module.

Nothing here imports TensorFlow, and the only network traffic is on 127.0.0.1.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lambda_function.onnx_engine import turn_telemetry_off
from local.loopback import LoopbackServer, QuietHandler

# Re-exported: some test modules import these names from here (tests.fixtures.* is their home).
from tests.fixtures.images import BLUE, GREEN, RED, WHITE, encode, raw_png, solid  # noqa: F401
from tests.fixtures.make_tiny_model import LABELS as TINY_LABELS  # noqa: F401
from tests.fixtures.make_tiny_model import SIZE as TINY_SIZE  # noqa: F401

# Tests that load onnxruntime directly send no usage telemetry either.
turn_telemetry_off()

TINY_MODEL = Path(__file__).resolve().parent / "fixtures" / "tiny_model.tflite"

# ---------------------------------------------------------------- synthetic images


@pytest.fixture(scope="session")
def red_png() -> bytes:
    return solid(RED)


@pytest.fixture(scope="session")
def blue_jpeg() -> bytes:
    return solid(BLUE, fmt="JPEG")


# ---------------------------------------------------------------- model


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    assert TINY_MODEL.is_file(), (
        "run tests/fixtures/make_tiny_model.py (needs TensorFlow) and commit its output"
    )
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_path):
    from lambda_function.classifier import Classifier

    return Classifier.from_path(tiny_model_path, num_threads=1)


@pytest.fixture
def app(monkeypatch, tiny_model_path):
    """``lambda_function.app`` serving the tiny model, with no model cached from another test."""
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_path))
    monkeypatch.setenv("NUM_THREADS", "1")
    monkeypatch.delenv("FETCH_ALLOWED_HOSTS", raising=False)
    module = importlib.import_module("lambda_function.app")
    module.reset_for_tests()
    yield module
    module.reset_for_tests()


# ---------------------------------------------------------------- loopback image server


@dataclass
class Route:
    body: bytes
    content_type: str = "image/png"
    status: int = 200
    delay: float = 0.0  # seconds to stall before answering


@dataclass
class ImageServer:
    """A threaded HTTP server on 127.0.0.1 serving ``routes`` (path -> Route); 404 otherwise."""

    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(
        self, path: str, body: bytes, content_type: str = "image/png", status: int = 200, delay: float = 0.0
    ) -> str:
        self.routes[path] = Route(body, content_type, status, delay)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"


def _make_handler(server: ImageServer):
    class Handler(QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            server.requests.append(self.path)
            route = server.routes.get(self.path.split("?")[0])
            if route is None:
                route = Route(b"not found", "text/plain", 404)
            if route.delay:
                time.sleep(route.delay)
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            try:
                self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (size cap, timeout): that is what some tests check

    return Handler


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """A loopback image server; NOT yet allowed by the fetcher (use ``allowed_server`` for that)."""
    state = ImageServer(port=0)
    with LoopbackServer(_make_handler(state)) as server:
        state.port = server.port
        yield state


@pytest.fixture
def allowed_server(image_server, monkeypatch) -> ImageServer:
    """The loopback image server, exempted from the private-address block via FETCH_ALLOWED_HOSTS."""
    monkeypatch.setenv("FETCH_ALLOWED_HOSTS", image_server.host)
    return image_server

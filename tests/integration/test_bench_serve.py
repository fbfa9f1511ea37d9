"""bench.serve times either backend: the bare model through the handler's own engine, and a cold start
that imports that backend's runtime (the tiny models, a few requests)."""

from __future__ import annotations

import pytest

from bench import serve
from tests.fixtures import tiny_onnx


@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_serve_benchmark_runs_on_each_backend(backend, tiny_model_path, tmp_path):
    model = tiny_model_path if backend == "tflite" else tiny_onnx.write(tmp_path)
    result = serve.run_benchmark(model, requests=serve.EARLY_REQUESTS + 3, threads=1, cold_runs=1)
    assert result.backend == backend
    assert result.bare_p50_ms > 0 and result.handler_p50_ms > 0
    assert len(result.cold_start_runs_s) == 1

"""Keep the TFLite runtime's own INFO lines off a person's terminal.

LiteRT's C++ logger writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to file
descriptor 2 when an interpreter is built. No switch turns it off (it reads neither TF_CPP_MIN_LOG_LEVEL
nor any other variable; checked with ai-edge-litert 2.3.0), so the CLI captures fd 2 while the model
loads and passes on every line that is not such an INFO line: a warning or an error still shows.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# How the runtime's logger starts an INFO line (its WARNING and ERROR lines are passed on).
INFO_PREFIX = b"INFO: "


@contextmanager
def native_info_hidden(hide: bool = True) -> Iterator[None]:
    """Within the block, drop the lines written to fd 2 that start with :data:`INFO_PREFIX`."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(True) if not line.startswith(INFO_PREFIX)]
            if kept:
                sys.stderr.write(b"".join(kept).decode("utf-8", "replace"))
                sys.stderr.flush()

"""Shared test setup: one kernel cache for the whole session, so each kernel compiles once."""

import os
import tempfile

os.environ.setdefault(
    "GRAPHNN_CACHE_DIR", os.path.join(tempfile.gettempdir(), "graphnn-test-cache")
)

"""The kernel cache: generated modules as content-hashed files, imported so Numba can cache them.

``exec``'d source cannot use Numba's ``cache=True`` (no file to key on), so every module is
written to ``<cache dir>/graphnn_<sha256 prefix>.py`` and imported from there.  Writes are atomic
(a concurrent process never imports half a file); a file whose content does not match its name
is rewritten, never trusted.  The directory is ``$GRAPHNN_CACHE_DIR`` or a per-user default.

>>> import os, tempfile
>>> os.environ["GRAPHNN_CACHE_DIR"] = tempfile.mkdtemp()
>>> load_module("X = 1\\n").X
1
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from graphnn.checkpoint import atomic_write_text

_LOADED: dict[str, object] = {}


def cache_dir() -> Path:
    """Where generated modules live: $GRAPHNN_CACHE_DIR, else ~/.cache/graphnn (XDG)."""
    env = os.environ.get("GRAPHNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphnn"


def module_path(source: str) -> Path:
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    return cache_dir() / f"graphnn_{digest}.py"


def load_module(source: str):
    """Import ``source`` from its content-hashed file, writing the file if absent or stale."""
    path = module_path(source)
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current = path.read_text()
    except (OSError, UnicodeDecodeError):
        current = None
    if current != source:
        atomic_write_text(path, source)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache locator resolves functions through the module
    spec.loader.exec_module(module)
    _LOADED[key] = module
    return module

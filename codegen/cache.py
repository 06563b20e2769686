"""The kernel cache: generated modules as content-hashed files, imported so Numba can cache them.

``exec``'d source cannot use Numba's ``cache=True`` (no file to key on), so every module is
written to ``<cache dir>/graphnn_<sha256 prefix>.py`` and imported from there.  Writes are atomic
(a concurrent process never imports half a file); a file whose content does not match its name
is rewritten, never trusted; a file that already holds the right text is never touched, because
Numba's cache index is keyed on the file's mtime and size.  The directory is
``$GRAPHNN_CACHE_DIR`` or a per-user default.

>>> import os, tempfile
>>> os.environ["GRAPHNN_CACHE_DIR"] = tempfile.mkdtemp()
>>> load_module("X = 1\\n").X
1
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from graphnn import files

_LOADED: dict[str, object] = {}


def module_path(source: str) -> Path:
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    return files.cache_dir() / f"graphnn_{digest}.py"


def load_module(source: str):
    """Import ``source`` from its content-hashed file, writing the file if absent or stale."""
    path = module_path(source)
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = source.encode("utf-8")  # not the locale's: the text is not all ASCII
    if files.read_bytes(path) != data:
        files.publish(path, data)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache locator resolves functions through the module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _LOADED[key] = module
    return module

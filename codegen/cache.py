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
import os
import sys
import tempfile
from pathlib import Path

_LOADED: dict[str, object] = {}


def cache_dir() -> Path:
    """Where generated modules live: $GRAPHNN_CACHE_DIR, else ~/.cache/graphnn (XDG)."""
    env = os.environ.get("GRAPHNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphnn"


def derivatives_dir() -> Path:
    """Where graphnn.derive.store keeps the stable derivative forms it chose."""
    return cache_dir() / "derivatives"


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
    data = source.encode("utf-8")  # not the locale's: the text is not all ASCII
    if _read_bytes(path) != data:
        publish(path, data)
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


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def publish(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` atomically, through a complete temp file in the same directory.

    A new file is hard-linked into place, which fails if a concurrent process got there first;
    its file is then kept when it holds the same bytes, so that process's Numba cache stays
    valid.  A stale file is replaced.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if _read_bytes(path) != data:
                os.replace(tmp, path)
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass

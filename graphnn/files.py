"""Files graphnn writes: where its cache lives, and writes that a crash never leaves half done.

Two ways to put bytes at a path.  :func:`atomic_write_bytes` replaces the file (checkpoints,
history, exports).  :func:`publish` puts content-addressed data in place without touching a file
that already holds the same bytes, because Numba's cache index is keyed on the module file's
mtime and size.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.bin"
>>> atomic_write_bytes(path, b"\\x00\\x01")
>>> read_bytes(path)
b'\\x00\\x01'
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from graphnn.errors import GraphnnWarning

_INSTEAD: dict[Path, Path] = {}  # a configured cache directory that failed -> the one used


def configured_dir() -> Path:
    """The cache directory asked for: $GRAPHNN_CACHE_DIR, else ~/.cache/graphnn (XDG)."""
    env = os.environ.get("GRAPHNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphnn"


def cache_dir() -> Path:
    """Where generated modules live: :func:`configured_dir` if it can be written, else (once
    per process, with a warning) a private temporary directory."""
    wanted = configured_dir()
    if wanted in _INSTEAD:
        return _INSTEAD[wanted]
    problem = _unusable(wanted)
    if problem is None:
        return wanted
    return use_instead(wanted, problem)


def _unusable(directory: Path) -> str | None:
    """Why ``directory`` cannot hold the cache, or None.  Tried by writing, not by permission
    bits, which say nothing of a read-only mount and nothing at all to root."""
    if directory.exists() and not directory.is_dir():
        return "is not a directory"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".graphnn-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc})"
    return None


def use_instead(wanted: Path, problem: str) -> Path:
    """A private temporary cache directory for this process in place of ``wanted``, which
    ``problem`` says is unusable; warns naming GRAPHNN_CACHE_DIR.  Removed at exit."""
    instead = Path(tempfile.mkdtemp(prefix="graphnn-cache-"))  # mode 0700: ours alone
    atexit.register(shutil.rmtree, instead, ignore_errors=True)  # no later process can use it
    _INSTEAD[wanted] = instead
    how = "GRAPHNN_CACHE_DIR" if os.environ.get("GRAPHNN_CACHE_DIR") else "the default"
    warnings.warn(
        f"kernel cache directory {wanted} ({how}) {problem}; this process uses {instead}, "
        "so it compiles from scratch: point GRAPHNN_CACHE_DIR at a writable directory",
        GraphnnWarning,
        stacklevel=3,
    )
    return instead


def is_fallback(directory: Path) -> bool:
    """Whether ``directory`` is a temporary one that replaced an unusable cache directory."""
    return directory in _INSTEAD.values()


def derivatives_dir() -> Path:
    """Where :mod:`graphnn.derive.store` keeps the stable derivative forms it chose."""
    return cache_dir() / "derivatives"


def read_bytes(path: Path) -> bytes | None:
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
            if read_bytes(path) != data:
                os.replace(tmp, path)
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    Writes a unique temp file in the same directory, flushes and fsyncs it, ``os.replace``-s it
    onto ``path`` and fsyncs the directory where the OS allows. The temp file is removed on any
    failure. Concurrent writers each use their own temp file; the last replace wins.  A process
    killed mid-write leaves its temp file behind: the temp name holds the writer's pid, and the
    next write to the directory removes those of writers that are gone.

    >>> atomic_write_bytes("runs/state.bin", b"\\x00\\x01")
    """
    path = Path(path)
    directory = path.parent
    remove_stale_temp_files(directory)
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:  # mkstemp makes 0600 files; keep the target's mode, else use a normal 0644
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible on Windows
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# The temp file of an atomic write in progress: ".<target>.<writer's pid>.<mkstemp's random>.tmp"
_TEMP_RE = re.compile(r"\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp")


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files of :func:`atomic_write_bytes` in ``directory`` whose writer is no
    longer running (killed mid-write); returns them.  Other files are never touched."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_RE.fullmatch(name)
        if match is None or _running(int(match[1])):
            continue
        path = Path(directory) / name
        try:
            path.unlink()
        except OSError:  # removed meanwhile, or not ours to remove
            continue
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():  # our own failed writes remove their temp file themselves
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # alive under another user, or unknowable
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`.

    >>> atomic_write_text("runs/config.json", '{"lr": 0.1}')
    """
    atomic_write_bytes(path, text.encode("utf-8"))

"""Crash-safe checkpoints: atomic file writes and self-verifying ``.npz`` checkpoint files.

A checkpoint is one uncompressed ``.npz`` zip holding the arrays under their own names (so
``np.load(path).files`` shows ``param/W1``, ``state/v_W1``, ...; a name that is not plain
letters, digits and ``_ . / -`` is stored as ``arr_<k>``), the JSON-encoded ``meta`` as ``meta``
and a JSON ``header`` (format, version, the array names and their keys in order and a SHA-256
digest of meta + every array's name, dtype, shape and bytes). Files are
written with :func:`atomic_write_bytes`, so ``path`` always holds a complete old or new file.

>>> save_checkpoint("runs/" + checkpoint_name(100), arrays={"W": W}, meta={"step": 100})
>>> arrays, meta = load_checkpoint(latest_checkpoint("runs"))
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from graphnn.errors import CheckpointError
from graphnn.files import atomic_write_bytes

__all__ = [
    "checkpoint_name",
    "checkpoints_newest_first",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

FORMAT = "graphnn-checkpoint"
VERSION = 2  # 1: every array stored as arr_<k>
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_NAME_RE = re.compile(r"ckpt-(\d+)\.npz")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint for ``step``: ``checkpoint_name(42) == "ckpt-000000042.npz"``."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"ckpt-{step:09d}.npz"


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The ``ckpt-<step>.npz`` file in ``directory`` with the highest step, or None if none is.

    >>> latest_checkpoint("runs")  # doctest: +SKIP
    PosixPath('runs/ckpt-000001000.npz')
    """
    found = checkpoints_newest_first(directory)
    return found[0] if found else None


def checkpoints_newest_first(directory: str | os.PathLike) -> list[Path]:
    """The ``ckpt-<step>.npz`` files of ``directory``, highest step first (none: no directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := _NAME_RE.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``ckpt-<step>.npz`` files of ``directory``; returns the
    deleted paths.  Other files (``best.npz``, temp files of a write in progress) stay.

    >>> prune_checkpoints("runs", keep=3)  # doctest: +SKIP
    [PosixPath('runs/ckpt-000000100.npz')]
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    found = sorted((int(m[1]), p) for p in directory.iterdir() if (m := _NAME_RE.fullmatch(p.name)))
    old = [p for _, p in found[: max(0, len(found) - keep)]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def _digest(meta_bytes: bytes, names: list[str], arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256(len(meta_bytes).to_bytes(8, "little") + meta_bytes)
    for name, arr in zip(names, arrays, strict=True):
        h.update(json.dumps([name, arr.dtype.str, list(arr.shape)]).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _json_default(obj):
    if isinstance(obj, np.generic):  # numpy scalars, e.g. np.int64 step counters
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serializable")


def save_checkpoint(
    path: str | os.PathLike, *, arrays: Mapping[str, np.ndarray], meta: Mapping
) -> None:
    """Atomically save ``arrays`` (name -> array) and JSON-serializable ``meta`` to ``path``.

    Tuples in meta come back as lists. Raises CheckpointError for a non-JSON meta or an
    object-dtype array (nothing is written then).

    >>> save_checkpoint("runs/ckpt.npz", arrays={"opt/m/W1": m}, meta={"step": 7})
    """
    where = os.fspath(path)
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"cannot save checkpoint {where}: meta must be a mapping")
    try:
        meta_bytes = json.dumps(meta, sort_keys=True, default=_json_default).encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save checkpoint {where}: meta is not JSON ({e})") from None
    names = [str(n) for n in arrays]
    values = [np.asarray(a) for a in arrays.values()]
    for name, arr in zip(names, values, strict=True):
        if arr.dtype.hasobject:
            raise CheckpointError(
                f"cannot save checkpoint {where}: array {name!r} has dtype object"
            )
    keys = [_key(name, i) for i, name in enumerate(names)]
    header = {"format": FORMAT, "version": VERSION, "names": names, "keys": keys}
    header["sha256"] = _digest(meta_bytes, names, values)
    entries = dict(zip(keys, values, strict=True))
    entries["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    entries["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **entries)
    atomic_write_bytes(path, buf.getvalue())


def _key(name: str, index: int) -> str:
    """The zip member an array is stored as: its own name when that is plain."""
    plain = _PLAIN_KEY.fullmatch(name) and ".." not in name and not name.startswith("arr_")
    return name if plain and name not in ("meta", "header") else f"arr_{index}"


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Load and verify a checkpoint; returns ``(arrays, meta)`` exactly as saved.

    Raises CheckpointError naming ``path`` if it is missing, unreadable, truncated, not a
    graphnn checkpoint, or fails its SHA-256 check.

    >>> arrays, meta = load_checkpoint("runs/ckpt.npz")
    """
    where = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {where} cannot be read ({e})") from None

    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {where} is truncated or not a graphnn checkpoint ({what})"
        )

    if not data.startswith(b"PK"):
        raise bad(f"not a zip file: {len(data)} bytes starting {data[:8]!r}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for key in ("header", "meta"):
                if key not in npz.files:
                    raise bad(f"no {key!r} record")
            header = json.loads(npz["header"].tobytes())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise bad("header has no graphnn format tag")
            if header.get("version") not in (1, VERSION):
                raise bad(f"unsupported version {header.get('version')!r}")
            names, digest = header["names"], header["sha256"]
            keys = header.get("keys") or [f"arr_{i}" for i in range(len(names))]
            meta_bytes = npz["meta"].tobytes()
            meta = json.loads(meta_bytes)
            values = [npz[k] for k in keys]
    except CheckpointError:
        raise
    except Exception as e:  # BadZipFile, bad CRC, bad .npy header, JSON, missing key, ...
        raise bad(f"{type(e).__name__}: {e}") from None
    if _digest(meta_bytes, names, values) != digest:
        raise CheckpointError(f"checkpoint {where} is corrupt: SHA-256 digest mismatch")
    if not isinstance(meta, dict):
        raise bad("meta is not a JSON object")
    return dict(zip(names, values, strict=True)), meta

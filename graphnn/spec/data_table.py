"""The ``[data]`` table of a spec: where arrays come from and how they are split.

A source is one of scikit-learn's bundled datasets (``sklearn:digits``, ``sklearn:iris``,
``sklearn:breast_cancer``, ``sklearn:wine``; no download), or a ``.npz`` or ``.csv`` file whose
path is relative to the spec file.  Features of digits are scaled by 1/16; the others come
raw, and ``scale`` (default ``"standard"`` for them) has the model standardize them with the
statistics of the training rows only.  Targets are one-hot for several classes and a (n, 1) 0/1
column for two.  A file's ``one_hot`` inputs come as labels (ints or strings, one per row),
which the model encodes (:mod:`graphnn.train.preprocess`) and keeps the classes of.

``.npz`` files are read with ``allow_pickle=False``; ``.csv`` files need a header row.  Every
error is a :class:`~graphnn.errors.SpecError` naming the spec file, ``[data]`` and the key.

>>> cfg = DataSpec.from_table({"source": "sklearn:iris", "features": "x", "targets": "y"},
...                           where="iris.toml [data]", base=".", inputs={"x": (4,), "y": (3,)})
>>> train, val = cfg.load(seed=0)
>>> train["x"].shape, val["y"].shape
((120, 4), (30, 3))
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphnn import budgets
from graphnn.budgets import LimitError
from graphnn.errors import SpecError, shown
from graphnn.exprparse import _suggest

SKLEARN = ("digits", "iris", "breast_cancer", "wine")
_COMMON_KEYS = ("source", "validation_split", "scale")
SCALES = ("standard", "minmax", "none")


def _hint(word: str, known) -> str:
    return "; " + _suggest(word, known)


def _nearest(word: str, found, what: str) -> str:
    """A hint from a file's own names that says no more of the file than the user asked about:
    the one name close to ``word``, else how many there are."""
    close = difflib.get_close_matches(word, [str(f) for f in found], n=1, cutoff=0.6)
    if close:
        return f"; did you mean {shown(close[0])}?"
    return f" (it has {len(found)} {what})"


def _inside(source, path: Path, base: Path, where: str) -> None:
    """SpecError unless ``path`` (``source`` under ``base``) stays in ``base``, links followed."""
    source = Path(source)
    if source.is_absolute():
        why = "is an absolute path"
    elif ".." in source.parts:
        why = "goes up with '..'"
    elif not (path.resolve() == base.resolve() or base.resolve() in path.resolve().parents):
        why = "leads out of it through a symbolic link"
    else:
        return
    raise SpecError(
        f"{where} source: {shown(str(source))} {why}; a data path is relative to the spec's "
        f"folder {base} and stays in it (pass --allow-outside-data, or load_spec(..., "
        "allow_outside_data=True), to read it anyway)"
    )


def _a_file(source: str, path: Path, where: str) -> None:
    if path.is_dir():
        raise SpecError(f"{where} source: {shown(source)} is a folder, not a .npz or .csv file")
    if not path.is_file():
        raise SpecError(f"{where} source: no such file {shown(source)} (looked for {path})")


@dataclass(frozen=True)
class DataSpec:
    """A validated ``[data]`` table; :meth:`load` reads the arrays."""

    where: str
    source: str  # "sklearn:NAME" or a resolved file path
    inputs: Mapping[str, tuple[int, ...]]  # per-sample shapes of the inputs to fill
    columns: Mapping[str, object] = field(default_factory=dict)  # input -> columns / array name
    one_hot: frozenset[str] | bool = frozenset()  # True: every 1-column input of width > 1
    validation_split: float = 0.2
    base: str | None = None  # the spec's folder: a file source must stay inside it ...
    allow_outside: bool = False  # ... unless this says otherwise
    given: str | None = None  # the file source as the spec wrote it
    scale: str | dict | None = None  # gn.compile's scale: a kind, or input -> kind

    @classmethod
    def from_table(
        cls, table, *, where: str, base, inputs: Mapping, defaults=None, allow_outside=False
    ) -> DataSpec:
        """Check ``table`` (the parsed ``[data]``) against the spec's ``inputs``.

        ``defaults`` may give ``features``/``targets`` (from ``[model]``) for sklearn sources.
        A file source is a path relative to ``base`` (the spec's folder) that stays inside it:
        no absolute path, no ``..`` and no symbolic link out, unless ``allow_outside``.
        """
        if not isinstance(table, Mapping):
            raise SpecError(f"{where}: must be a table")
        source = table.get("source")
        if not isinstance(source, str) or not source:
            raise SpecError(f'{where} source: required; e.g. "sklearn:digits" or "data.csv"')
        split = _split_fraction(table.get("validation_split", 0.2), f"{where} validation_split")
        inputs = {k: tuple(v) for k, v in inputs.items()}
        if source.startswith("sklearn:"):
            columns = _sklearn_columns(table, where, source, inputs, defaults or {})
            default = None if source == "sklearn:digits" else "standard"  # digits: x/16
            scale = _scale(table.get("scale", default), where, inputs)
            if isinstance(scale, str):  # a kind alone: for the features
                scale = {columns["features"]: scale}
            return cls(where, source, inputs, columns, frozenset(), split, scale=scale)
        path = Path(base) / source
        if path.suffix.lower() not in (".npz", ".csv"):
            raise SpecError(
                f"{where} source: unknown data source {shown(source)}; expected sklearn:NAME "
                f"({', '.join(SKLEARN)}) or a .npz or .csv file"
            )
        if not allow_outside:
            _inside(source, path, Path(base), where)
        _a_file(source, path, where)
        one_hot = _one_hot(table.get("one_hot", False), where, inputs)
        columns = _file_columns(table, where, path.suffix.lower(), inputs)
        scale = _scale(table.get("scale"), where, inputs)
        return cls(
            where,
            str(path),
            inputs,
            columns,
            one_hot,
            split,
            str(base),
            allow_outside,
            source,
            scale,
        )

    def load(self, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """(training arrays, held-out arrays or None), split with ``seed``."""
        arrays = self.load_all()
        try:
            return split(arrays, self.validation_split, seed)
        except ValueError as exc:
            raise SpecError(f"{self.where} validation_split: {exc}") from None

    def load_all(self) -> dict[str, np.ndarray]:
        """Every row, before the split, as float32 arrays of shape (n, *input shape)."""
        if self.source.startswith("sklearn:"):
            features, targets = load_sklearn(self.source.split(":", 1)[1])
            raw = {self.columns["features"]: features, self.columns["targets"]: targets}
            return self._shaped(raw)
        path = Path(self.source)
        if self.base is not None and not self.allow_outside:  # again: a link may have moved
            _inside(self.given, path, Path(self.base), self.where)
        _a_file(str(path), path, self.where)
        if self.source.lower().endswith(".npz"):
            raw = self._load_npz()
        else:
            raw = self._load_csv()
        return self._shaped(raw)

    def _shaped(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, arr in raw.items():
            if self._is_one_hot(name, arr):
                out[name] = _labels(arr, f"{self.where} {name}")
            else:
                out[name] = _fit_shape(arr, self.inputs[name], f"{self.where} {name}")
        sizes = {len(a) for a in out.values()}
        if len(sizes) > 1:
            counts = ", ".join(f"{k}: {len(v)}" for k, v in out.items())
            raise SpecError(f"{self.where}: inputs have different numbers of rows ({counts})")
        if not sizes or sizes == {0}:
            raise SpecError(f"{self.where}: the data source holds no rows")
        return out

    def _is_one_hot(self, name: str, arr: np.ndarray) -> bool:
        if self.one_hot is not True:
            return name in self.one_hot
        shape = self.inputs[name]
        per_sample = len(arr) if isinstance(arr, list) else math.prod(np.shape(arr)[1:])
        return len(shape) == 1 and shape[0] > 1 and per_sample == 1

    def _load_npz(self) -> dict[str, np.ndarray]:
        """The arrays the inputs name, and no other: each member's .npy header is read and
        checked first (a forged one asked for terabytes; an unused member expanded a 1.2 MB
        file to 1.2 GB), then its data, without pickles."""
        try:
            with zipfile.ZipFile(self.source) as archive:
                members = {n.removesuffix(".npy"): n for n in archive.namelist()}
                for name, key in self.columns.items():
                    if key not in members:
                        raise SpecError(
                            f"{self.where} {name}: {self.source} has no array {shown(key)}"
                            + _nearest(key, members, "arrays")
                        )
                sizes = {key: _npy_size(archive, members[key]) for key in self.columns.values()}
                total = sum(sizes.values())
                what = (
                    f"the arrays {', '.join(sizes)} of {self.source} take {budgets.nbytes(total)}"
                )
                budgets.check("GRAPHNN_MAX_DATA_BYTES", total, what)
                out = {}
                for name, key in self.columns.items():
                    with archive.open(members[key]) as f:
                        out[name] = np.lib.format.read_array(f, allow_pickle=False)
                return out
        except SpecError:
            raise
        except LimitError as exc:
            raise SpecError(f"{self.where} source: {exc}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise SpecError(
                f"{self.where} source: cannot read {self.source} as a .npz file ({reason})"
            ) from None

    def _load_csv(self) -> dict[str, np.ndarray]:
        labels = [n for n, cols in self.columns.items() if self._is_one_hot(n, cols)]
        return read_csv(self.source, self.where, self.columns, labels)


def _npy_size(archive: zipfile.ZipFile, member: str) -> int:
    """Bytes the .npy ``member`` says its array holds, after checking that it is a plain numeric
    array (no pickled objects) and that the member holds that many bytes."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{member}: unsupported .npy version {version}")
        header = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{member} holds Python objects (pickled data), not numbers")
    size = math.prod(shape) * dtype.itemsize
    held = archive.getinfo(member).file_size - header
    if size != held:
        raise ValueError(
            f"{member}'s header says shape {shape} of {dtype} ({budgets.nbytes(size)}) but "
            f"it holds {budgets.nbytes(held)}"
        )
    return size


def _split_fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise SpecError(f"{where}: must be a number in [0, 1), got {shown(value)}")
    return float(value)


def _sklearn_columns(table, where, source, inputs, defaults) -> dict[str, str]:
    name = source.split(":", 1)[1]
    if name not in SKLEARN:
        raise SpecError(f"{where} source: unknown dataset {shown(source)}" + _hint(name, SKLEARN))
    extra = set(table) - {*_COMMON_KEYS, "features", "targets"}
    if extra:
        key = sorted(extra)[0]
        raise SpecError(
            f"{where}: unknown key {shown(key)} for a sklearn source; keys: "
            "source, features, targets, validation_split, scale"
        )
    columns = {}
    for role in ("features", "targets"):
        value = table.get(role, defaults.get(role))
        if value is None:
            raise SpecError(f"{where} {role}: required; the name of the input that gets the {role}")
        if value not in inputs:
            raise SpecError(
                f"{where} {role}: no input named {shown(value)}" + _hint(str(value), inputs)
            )
        columns[role] = value
    if columns["features"] == columns["targets"]:
        raise SpecError(f"{where}: features and targets are both {shown(columns['features'])}")
    return columns


def _one_hot(value, where: str, inputs) -> frozenset[str] | bool:
    if value is False or value is True:
        return value or frozenset()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(f"{where} one_hot: expected true, an input name or a list of them")
    for n in names:
        if n not in inputs:
            raise SpecError(f"{where} one_hot: no input named {shown(n)}" + _hint(n, inputs))
    return frozenset(names)


def _file_columns(table, where, suffix, inputs) -> dict[str, object]:
    """Which columns (csv) or array (npz) fills each input; validates the keys of [data]."""
    extra = set(table) - {*_COMMON_KEYS, "one_hot", *inputs}
    if extra:
        key = sorted(extra)[0]
        raise SpecError(
            f"{where}: unknown key {shown(key)}; keys are source, validation_split, scale, "
            f"one_hot and input names ({', '.join(inputs)})"
            + _hint(key, [*inputs, "one_hot", "scale"])
        )
    columns: dict[str, object] = {}
    for name in inputs:
        value = table.get(name)
        if suffix == ".npz":
            if value is not None and not isinstance(value, str):
                raise SpecError(f"{where} {name}: expected the name of an array in the .npz file")
            columns[name] = value or name
            continue
        if value is None:
            raise SpecError(
                f"{where} {name}: required; the list of CSV columns for input {shown(name)}"
            )
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise SpecError(
                f"{where} {name}: expected a list of CSV column names, got {shown(value)}"
            )
        columns[name] = value
    return columns


def _scale(value, where: str, inputs) -> str | dict | None:
    """``scale``: a kind for every feature input, or a table input -> kind."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        if value not in SCALES:
            raise SpecError(f"{where} scale: {shown(value)} is not one of {', '.join(SCALES)}")
        return value
    if not isinstance(value, Mapping):
        raise SpecError(f'{where} scale: expected "standard", "minmax" or a table input -> kind')
    for name, kind in value.items():
        if name not in inputs:
            raise SpecError(f"{where} scale: no input named {shown(name)}" + _hint(name, inputs))
        if kind not in SCALES:
            raise SpecError(
                f"{where} scale {name}: {shown(kind)} is not one of {', '.join(SCALES)}"
            )
    return {k: v for k, v in value.items() if v != "none"} or None


def _labels(arr: np.ndarray, where: str) -> np.ndarray:
    """One label per row: int64 when every label is an integer, else strings."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise SpecError(f"{where}: one_hot needs one label column, got {math.prod(arr.shape[1:])}")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if np.any(bad):
            raise SpecError(
                f"{where}: one_hot labels must be integers or names; data row "
                f"{int(np.argmax(bad)) + 1} holds another value"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind not in "US":
        raise SpecError(f"{where}: one_hot labels must be integers or names, not {arr.dtype}")
    text = np.char.strip(arr.astype(str))
    numbers = [_int_or_none(v) for v in text]
    if all(v is None for v in numbers):
        return text
    bad = [k for k, v in enumerate(numbers) if v is None]
    if bad:  # "1.5" beside "1" and "2": a typo far more often than a class name
        raise SpecError(
            f"{where}: one_hot labels must be integers or names, not both; data row "
            f"{bad[0] + 1} holds a label that is no integer"
        )
    return np.array(numbers, dtype=np.int64)


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _fit_shape(arr: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
        raise SpecError(f"{where}: expected numbers, got an array of dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[1:] != shape:
        if math.prod(arr.shape[1:]) != math.prod(shape):
            raise SpecError(
                f"{where}: the input has per-sample shape {list(shape)} but the data has "
                f"{list(arr.shape[1:])} per sample"
            )
        arr = arr.reshape(len(arr), *shape)
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise SpecError(f"{where}: the data holds NaN or Inf")
    return np.ascontiguousarray(arr)


def read_csv(path, where: str, wanted: Mapping[str, list[str]], labels=()) -> dict[str, np.ndarray]:
    """The float64 columns each input of ``wanted`` (input -> column names) reads from a CSV
    file with a header row (the inputs in ``labels``: the cells' text); errors name the input,
    row and column, never a cell's content or a column the spec does not name.

    Read twice, streaming: the first pass counts the rows, so that the array is checked against
    GRAPHNN_MAX_DATA_BYTES before it is allocated (a list of every cell took about 40 times the
    file's size).  Blank lines are skipped; a row is numbered by its line in the file.
    """
    try:
        size = os.path.getsize(path)
        budgets.check("GRAPHNN_MAX_DATA_BYTES", size, f"{path} has {budgets.nbytes(size)}")
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark
            lines = (r for r in csv.reader(f) if _filled(r))
            header = [h.strip() for h in next(lines, [])]
            count = sum(1 for _ in lines)
        if not header or not count:
            raise SpecError(f"{where} source: {path} needs a header row and at least one data row")
        picked = _pick(header, wanted, path, where)
        table = f"{path}'s {count:,} rows of {len(picked)} columns"
        need = 8 * count * len(picked)
        budgets.check("GRAPHNN_MAX_DATA_BYTES", need, f"{table} take {budgets.nbytes(need)}")
        rows = np.empty((count, len(picked)), dtype=np.float64)
        text_at = {header.index(c) for n in labels for c in wanted[n]}
        texts = np.empty((count, len(picked)), dtype=object)
        with open(path, newline="", encoding="utf-8-sig") as f:
            _fill(rows, csv.reader(f), header, picked, path, where, text_at, texts)
    except LimitError as exc:
        raise SpecError(f"{where} source: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where} source: {path} is not UTF-8 text (at byte {exc.start})") from None
    except (OSError, csv.Error) as exc:
        raise SpecError(f"{where} source: cannot read {path}: {exc}") from None
    place = {k: j for j, k in enumerate(picked)}
    out = {}
    for name, cols in wanted.items():
        at = [place[header.index(c)] for c in cols]
        out[name] = texts[:, at].astype(str) if name in labels else rows[:, at]
    return out


def _pick(header: list[str], wanted: Mapping[str, list[str]], path, where: str) -> list[int]:
    """The header's indices of every column ``wanted`` names, in file order; a name the header
    lacks or holds twice is a SpecError (which of two an input reads would be a guess)."""
    picked = set()
    for name, cols in wanted.items():
        for col in cols:
            at = [k for k, h in enumerate(header, 1) if h == col]
            if not at:
                raise SpecError(
                    f"{where} {name}: {path} has no column {shown(col)}"
                    + _nearest(col, header, "columns")
                )
            if len(at) > 1:
                raise SpecError(
                    f"{where} {name}: {path} has the column {shown(col)} twice (columns "
                    f"{at[0]} and {at[1]}); which one to read would be a guess"
                )
            picked.add(at[0] - 1)
    return sorted(picked)


def _filled(row: list[str]) -> bool:
    return bool(row) and any(c.strip() for c in row)


def _fill(rows, reader, header: list[str], picked, path, where: str, text_at, texts) -> None:
    lines = (r for r in reader if _filled(r))
    next(lines)  # the header
    for r, line in zip(range(len(rows)), lines, strict=False):  # the file may have grown
        if len(line) != len(header):
            raise SpecError(
                f"{where} source: {path} row {reader.line_num} has {len(line)} fields, "
                f"the header has {len(header)}"
            )
        for j, c in enumerate(picked):
            if c in text_at:
                texts[r, j] = line[c]
                continue
            try:
                rows[r, j] = float(line[c])
            except ValueError:
                raise SpecError(  # the cell itself is not shown: errors never echo data
                    f"{where} source: {path} row {reader.line_num}, column {shown(header[c])} "
                    "is not a number"
                ) from None


def load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, targets) of a bundled scikit-learn dataset as float32; raw features but for
    digits' (/16): standardizing here would use the held-out rows' statistics too."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    x = bunch.data.astype(np.float64)
    if name == "digits":
        x = x / 16.0  # a fixed unit (pixels in 0..16), not a statistic of the rows
    classes = int(bunch.target.max()) + 1
    if classes == 2:
        y = bunch.target.astype(np.float32)[:, None]
    else:
        y = np.eye(classes, dtype=np.float32)[bunch.target]
    return x.astype(np.float32), y


def split(arrays: Mapping[str, np.ndarray], fraction: float, seed: int = 0):
    """(train, held-out) rows by a seeded permutation (the driver's rule); held-out None if 0."""
    if not fraction:
        return dict(arrays), None
    n = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(n * fraction)))
    if cut < 1:
        raise ValueError(f"{fraction} leaves no training rows of {n}")

    def pick(idx):
        return {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}

    return pick(order[:cut]), pick(order[cut:])

"""Rows for a saved model from a file: what ``graphnn predict`` and ``graphnn evaluate`` read.

A ``.npz`` file holds one array per input name.  A ``.csv`` file (header row) is read by the
columns the model was trained on when a spec's ``[data]`` named them (``graphnn train`` keeps
them in the model file); otherwise its columns in order fill the one feature input, then the
target (its labels, or its values) when ``evaluate`` needs it.  Raw rows: the model scales
and encodes them itself.

>>> model = gn.load_model("runs/wine/model.npz")                  # doctest: +SKIP
>>> rows = read_rows(model, "new_rows.csv", "graphnn predict", with_target=False)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from graphnn.errors import SpecError, shown
from graphnn.spec.data_table import _labels, read_csv


def read_rows(model, path, where: str, with_target: bool) -> dict[str, np.ndarray]:
    """The arrays of ``path`` for ``model``'s inputs (the target too if ``with_target``)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{where}: no such data file {path}")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            wanted = _wanted_inputs(model, with_target)
            missing = [n for n in wanted if n not in npz.files]
            if missing:
                raise SpecError(f"{where}: {path} has no array {shown(missing[0])}")
            return {n: npz[n] for n in wanted}
    if path.suffix.lower() != ".csv":
        raise SpecError(f"{where}: {shown(str(path))} is not a .csv or .npz file")
    columns = _columns(model, path, where, with_target)
    labels = [n for n in columns if n == model.target and n in model.preprocessing.classes]
    arrays = read_csv(path, where, columns, labels)
    return {
        n: _labels(a, f"{where} {n}") if n in labels else a.reshape(len(a), *model._shapes[n])
        for n, a in arrays.items()
    }


def _wanted_inputs(model, with_target: bool) -> list[str]:
    return [n for n in model._shapes if with_target or n != model.target]


def _columns(model, path: Path, where: str, with_target: bool) -> dict[str, list[str]]:
    known = model.columns
    if known:
        wanted = _wanted_inputs(model, with_target)
        return {n: known[n] for n in wanted if n in known}
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    features = [n for n in model._shapes if n != model.target]
    if len(features) != 1:
        raise SpecError(
            f"{where}: the model has {len(features)} feature inputs and no column names; "
            "pass a .npz file with one array per input"
        )
    width = math.prod(model._shapes[features[0]])
    out = {features[0]: header[:width]}
    if with_target and model.target is not None:
        target_width = math.prod(model._shapes[model.target])
        if model.target in model.preprocessing.classes:
            target_width = 1  # labels, one column
        out[model.target] = header[width : width + target_width]
    need = sum(len(c) for c in out.values())
    if len(header) != need:
        what = f"{width} feature columns" + (f" then the target's {need - width}" * with_target)
        raise SpecError(
            f"{where}: {path} has {len(header)} columns; the model reads {what} "
            "(a model trained from a spec file knows its columns by name)"
        )
    return out

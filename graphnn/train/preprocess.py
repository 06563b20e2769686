"""Preprocessing that is part of a model: input scaling and label encoding.

A model's :class:`Preprocessing` scales feature inputs (``"standard"``: zero mean and unit
variance per feature; ``"minmax"``: each feature into [0, 1]) with statistics computed from the
*training* rows of the first ``fit`` only (never held-out rows), and turns integer or string
labels into the one-hot rows (or 0/1 column) a target input holds.  Both are saved with the model
and applied by ``fit``, ``evaluate`` and ``predict``, so raw rows go in everywhere.

Labels: integers in [0, k) for a target of k columns are class k itself; any other labels
(strings, other integers) are sorted and numbered, and the class list is kept, so that
:meth:`Preprocessing.labels` can turn predictions back into the user's labels.

>>> import numpy as np
>>> p = Preprocessing({"x": "standard"})
>>> p.fit_scaling({"x": np.array([[0.0], [2.0]])})
>>> p.transform({"x": np.array([[4.0]])}, np.float32)["x"]
array([[3.]], dtype=float32)
>>> q = Preprocessing({})
>>> q.encode({"y": np.array(["cat", "dog", "cat"])}, {"y": (2,)})["y"]
array([[1., 0.],
       [0., 1.],
       [1., 0.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphnn.errors import CheckpointError, DataError, shown

SCALERS = ("standard", "minmax")


def resolve_scale(scale, inputs: Mapping[str, tuple], target: str | None) -> dict[str, str]:
    """``scale`` as {input: "standard" | "minmax"}: a kind alone applies to every input but
    the target; a mapping names the inputs; None or "none" scales nothing."""
    if scale is None or scale == "none":
        return {}
    if isinstance(scale, str):
        if scale not in SCALERS:
            raise DataError(
                f"scale must be one of {', '.join(SCALERS)} or None, got {shown(scale)}"
            )
        features = [name for name in inputs if name != target]
        if target is None and len(inputs) > 1:
            raise DataError(
                f"scale={scale!r}: which inputs are features is not known (no target input "
                f"was found); name them: scale={{{features[0]!r}: {scale!r}}}"
            )
        return dict.fromkeys(features, scale)
    if not isinstance(scale, Mapping):
        raise DataError(f"scale must be a kind or a dict input -> kind, got {shown(scale)}")
    out = {}
    for name, kind in scale.items():
        if name not in inputs:
            raise DataError(f"scale: no input named {shown(name)}; inputs: {', '.join(inputs)}")
        if kind in (None, "none"):
            continue
        if kind not in SCALERS:
            raise DataError(f"scale of {name!r} must be one of {', '.join(SCALERS)}, got {kind!r}")
        out[name] = kind
    return out


def _is_labels(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iubUSO"


class Preprocessing:
    """The scaling of inputs and the classes of label inputs that a model applies to raw data."""

    def __init__(self, scale: Mapping[str, str]):
        self.scale = dict(scale)
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # input -> (shift, divisor)
        self.classes: dict[str, list] = {}  # target input -> its labels, in column order

    @property
    def fitted(self) -> bool:
        return set(self.stats) == set(self.scale)

    def __repr__(self) -> str:
        parts = [f"{k}: {v}" for k, v in self.scale.items()]
        parts += [f"{k}: {len(c)} classes" for k, c in self.classes.items()]
        return f"Preprocessing({', '.join(parts)})"

    # --- labels ---------------------------------------------------------------------------------

    def encode(self, data: Mapping, shapes: Mapping[str, tuple], fit: bool = False) -> dict:
        """``data`` with the label array (ints, strings) of each input in ``shapes`` (the
        inputs labels may fill: a classifier's target) replaced by its one-hot rows (a 0/1
        column for a target of one column); ``fit`` learns new classes."""
        out = dict(data)
        for name, value in data.items():
            if name not in shapes or isinstance(value, float | int):
                continue
            arr = np.asarray(value)
            if not _is_labels(arr):
                continue
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            shape = shapes[name]
            if arr.ndim != 1 or len(shape) != 1:
                if arr.dtype.kind in "US" or arr.dtype == object:
                    raise DataError(
                        f"input '{name}': labels must be one per row, got shape {arr.shape}"
                    )
                continue
            out[name] = self._one_hot(name, arr, shape[0], fit)
        return out

    def _one_hot(self, name: str, labels: np.ndarray, width: int, fit: bool) -> np.ndarray:
        classes = self.classes.get(name)
        if classes is None:
            if not fit:
                raise DataError(
                    f"input '{name}': got labels, but the model learned no classes for it; "
                    "fit it on labels first, or pass one-hot rows"
                )
            classes = self._learn(name, labels, width)
        index = {c: k for k, c in enumerate(classes)}
        plain = labels.tolist()
        unknown = [v for v in plain if v not in index]
        if unknown:
            raise DataError(
                f"input '{name}': label {shown(unknown[0])} is not one of the model's "
                f"{len(classes)} classes ({shown(classes)})"
            )
        codes = np.fromiter((index[v] for v in plain), np.int64, len(plain))
        if width == 1:  # a binary target column: the second class is 1
            return codes.astype(np.float32)[:, None]
        return np.eye(width, dtype=np.float32)[codes]

    def _learn(self, name: str, labels: np.ndarray, width: int) -> list:
        if labels.dtype.kind in "iub":
            values = labels.astype(np.int64)
            k = max(width, 2)
            if len(values) and values.min() >= 0 and values.max() < k:
                classes = list(range(k))  # class i is column i
                self.classes[name] = classes
                return classes
            found = sorted(set(values.tolist()))
        else:
            found = sorted({str(v) for v in labels.tolist()})
        if len(found) > max(width, 2):
            raise DataError(
                f"input '{name}': the labels hold {len(found)} classes but the input has "
                f"{width} column(s)"
            )
        self.classes[name] = found
        return found

    def labels(self, name: str, prediction: np.ndarray, kind: str) -> np.ndarray:
        """The class labels of predictions for target ``name`` ('argmax' of rows, 'logit' > 0 or
        'prob' > 0.5 of a column): the user's own labels when the model learned them."""
        prediction = np.asarray(prediction)
        if kind == "argmax":
            codes = prediction.argmax(axis=1)
        else:
            codes = (prediction[:, 0] > (0.0 if kind == "logit" else 0.5)).astype(np.int64)
        classes = self.classes.get(name)
        return codes if classes is None else np.asarray(classes)[codes]

    # --- scaling --------------------------------------------------------------------------------

    def fit_scaling(self, train: Mapping[str, np.ndarray]) -> None:
        """Statistics of each scaled input from ``train`` (the training rows, never held-out)."""
        for name, kind in self.scale.items():
            x = np.asarray(train[name], dtype=np.float64)
            if kind == "standard":
                shift, spread = x.mean(axis=0), x.std(axis=0)
            else:
                shift, spread = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
            # a constant feature is shifted to 0 and left unscaled (no division by zero)
            self.stats[name] = (shift, np.where(spread > 0, spread, 1.0))

    def transform(self, arrays: Mapping[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
        """``arrays`` with every scaled input scaled, as C-contiguous ``dtype`` arrays."""
        out = dict(arrays)
        for name, (shift, divisor) in self.stats.items():
            if name in out:
                scaled = (np.asarray(out[name], dtype=np.float64) - shift) / divisor
                out[name] = np.ascontiguousarray(scaled, dtype=dtype)
        return out

    # --- files ----------------------------------------------------------------------------------

    def to_file(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON meta) to store in a model file; the statistics as named arrays."""
        arrays = {}
        for name, (shift, divisor) in self.stats.items():
            arrays[f"prep/{name}/shift"] = shift
            arrays[f"prep/{name}/divisor"] = divisor
        return arrays, {"scale": self.scale, "classes": self.classes}

    @classmethod
    def from_file(cls, arrays: Mapping, meta, where: str) -> Preprocessing:
        """The preprocessing :meth:`to_file` stored; CheckpointError naming ``where`` if bad."""
        ok = isinstance(meta, dict) and isinstance(meta.get("scale"), dict)
        ok = ok and isinstance(meta.get("classes"), dict)
        if not ok or not all(k in SCALERS for k in meta["scale"].values()):
            raise CheckpointError(f"{where}: its preprocessing record is malformed")
        prep = cls(meta["scale"])
        for name, classes in meta["classes"].items():
            if not isinstance(classes, list) or not all(isinstance(c, int | str) for c in classes):
                raise CheckpointError(f"{where}: the classes of input {name!r} are malformed")
            prep.classes[name] = classes
        for name in prep.scale:
            keys = (f"prep/{name}/shift", f"prep/{name}/divisor")
            if all(k in arrays for k in keys):
                prep.stats[name] = (
                    np.asarray(arrays[keys[0]], np.float64),
                    np.asarray(arrays[keys[1]], np.float64),
                )
        return prep

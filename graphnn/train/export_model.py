"""A trained model's standalone module: the graph's exported kernels plus the model's
preprocessing, so that the module's ``predict`` takes raw rows as ``model.predict`` does.

The preprocessing is written into the module as data (the scaling's shift and divisor per
feature, the classes of a label target) with ``preprocess(data)``, ``labels(prediction)`` and
``load_params(model_file)``; ``predict`` scales its inputs first, and ``python module.py
data.npz`` trains on raw rows and labels.

>>> model.export("iris_step.py")                              # doctest: +SKIP
>>> import iris_step                                          # doctest: +SKIP
>>> iris_step.predict(raw_rows, iris_step.load_params("runs/iris/model.npz"))  # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from codegen.export.write import export_module
from codegen.signature import forward_inputs
from graphnn.errors import CodegenError
from graphnn.files import atomic_write_text

BLOCK = '''\
# --- preprocessing: fitted by graphnn on the training rows; raw rows go in -----------------------

SCALING = {  # input: (shift, divisor); the kernels take (raw - shift) / divisor
%(scaling)s}
CLASSES = {  # a target's labels, in column order (one column: the second label is 1)
%(classes)s}
PREDICT_INPUTS = %(predict_inputs)s


def preprocess(data):
    """Raw arrays by input name as the kernels take them: inputs scaled, labels one-hot."""
    out = dict(data)
    for name, classes in CLASSES.items():
        raw = np.asarray(out.get(name, np.zeros(0)))
        if name not in out or raw.dtype.kind not in "iubUSO":
            continue  # already one-hot rows (or values)
        index = {c: k for k, c in enumerate(classes)}
        rows = raw.reshape(len(raw), -1)[:, 0].tolist()
        unknown = [v for v in rows if v not in index]
        if unknown:
            raise ValueError(f"input {name!r}: label {unknown[0]!r} is not one of {classes}")
        codes = np.array([index[v] for v in rows], dtype=np.int64)
        width = INPUTS[name][0]
        one_hot = np.eye(width, dtype=DTYPE)[codes] if width > 1 else None
        out[name] = codes[:, None].astype(DTYPE) if width == 1 else one_hot
    for name, (shift, divisor) in SCALING.items():
        if name in out:
            out[name] = ((np.asarray(out[name], dtype=np.float64) - shift) / divisor).astype(DTYPE)
    return out


def labels(prediction):
    """The class of each row of predict()'s output, as the labels the model was trained on."""
    prediction = np.asarray(prediction)
    codes = %(codes)s
    classes = CLASSES.get(%(target)r)
    return codes if classes is None else np.asarray(classes)[codes]


def load_params(path):
    """The trained parameters in a graphnn model file (model.npz, a checkpoint), by name."""
    with np.load(path) as saved:
        return {k: np.ascontiguousarray(saved["param/" + k], dtype=DTYPE) for k in PARAMS}


_predict_scaled = predict


def predict(*inputs_and_params):
    """predict(%(signature)s, params) on raw rows: scaled as in training, then the kernels."""
    *inputs, params = inputs_and_params
    scaled = preprocess(dict(zip(PREDICT_INPUTS, inputs, strict=True)))
    return _predict_scaled(*(scaled[k] for k in PREDICT_INPUTS), params)


'''

_CODES = {
    "argmax": "prediction.argmax(axis=1)",
    "logit": "(prediction[:, 0] > 0).astype(np.int64)",
    "prob": "(prediction[:, 0] > 0.5).astype(np.int64)",
    None: "prediction",
}


def _array(values: np.ndarray) -> str:
    return "np.array(" + repr([float(v) for v in np.asarray(values).ravel()]) + ")"


def export_model(model, path, backend="cpu", epochs=None, batch_size=None, blas=True) -> Path:
    """Write ``model``'s standalone module to ``path``: its graph's kernels and optimizer (as
    ``g.export``) and its preprocessing (module docstring above)."""
    if model.preprocessing.scale and not model.preprocessing.fitted:
        raise CodegenError("the model's scaling is not fitted yet: fit (or load) it first")
    path = export_module(
        model.graph,
        path,
        model.optimizer,
        backend,
        model.dtype.name,
        epochs or 10,
        batch_size if batch_size is not None else 32,
        blas=blas,
    )
    text = path.read_text(encoding="utf-8")
    prep = model.preprocessing
    scaling = "".join(
        textwrap.indent(f"{name!r}: (\n    {_array(shift)},\n    {_array(div)},\n),\n", "    ")
        for name, (shift, div) in prep.stats.items()
    )
    classes = "".join(f"    {name!r}: {list(c)!r},\n" for name, c in prep.classes.items())
    inputs = forward_inputs(model.graph, [model.prediction])
    block = BLOCK % {
        "scaling": scaling,
        "classes": classes,
        "predict_inputs": repr(inputs),
        "codes": _CODES[model.accuracy_kind],
        "target": model.target,
        "signature": ", ".join(inputs),
    }
    main = "\ndef main(argv=None):"
    load = "        data = {k: npz[k] for k in INPUTS}"
    if text.count(main) != 1 or text.count(load) != 1:
        raise CodegenError("the exported module has no main() to add the preprocessing to")
    text = text.replace(main, "\n" + block.rstrip("\n") + "\n\n" + main, 1)
    text = text.replace(load, "        data = preprocess({k: npz[k] for k in INPUTS})", 1)
    atomic_write_text(path, text)
    return path

"""Evaluation metrics: accuracy, precision/recall/F1 (macro), top-k for classifiers; MAE, RMSE
and R² for regressions; or any function ``f(prediction, target) -> float``.

Each built-in is scikit-learn's function on the model's prediction node and target (one-hot
rows, a 0/1 column, or values); integer and string labels arrive one-hot (the model's
preprocessing encodes them).  ``kind`` says how classes are read from predictions: 'argmax'
(softmax outputs), 'logit' (> 0) or 'prob' (> 0.5).

>>> import numpy as np
>>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), "argmax")
0.5
>>> metric("rmse")(np.array([[1.0], [3.0]]), np.array([[1.0], [1.0]]), None)
1.4142135623730951
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from graphnn.errors import DataError, shown

CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1")  # and top<k>
REGRESSION_METRICS = ("mae", "rmse", "r2")
HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1", "r2")
_TOP_K = re.compile(r"top(\d+)")


def _class_ids(values: np.ndarray) -> np.ndarray:
    """Class indices of one-hot (or score) rows, or of a column of class ids as it is (the
    target of gn.sparse_softmax_cross_entropy)."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:  # a column of ids
        values = values[:, 0]
    return values.astype(np.int64) if values.ndim == 1 else values.argmax(axis=1)


def _codes(values: np.ndarray, kind: str, threshold_of_target: bool = False) -> np.ndarray:
    """Class indices of rows (argmax) or of a 0/1 column."""
    values = np.asarray(values)
    if kind == "argmax":
        return _class_ids(values)
    threshold = 0.5 if threshold_of_target or kind == "prob" else 0.0
    return (values > threshold).astype(np.int64).reshape(len(values), -1)


def accuracy(pred: np.ndarray, target: np.ndarray, kind: str) -> float:
    """Fraction of rows whose predicted class matches the target's ('argmax'), or of outputs
    on the target's side of the threshold ('logit': 0, 'prob': 0.5; multi-label too)."""
    if kind == "argmax":
        return float(np.mean(pred.argmax(axis=1) == _class_ids(target)))
    threshold = 0.0 if kind == "logit" else 0.5
    return float(np.mean((pred > threshold) == (target > 0.5)))


def _averaged(score: Callable) -> Callable:
    def compute(pred, target, kind):
        truth, guess = _codes(target, kind, True), _codes(pred, kind)
        if truth.ndim > 1 and truth.shape[1] > 1:  # multi-label: each column its own class
            return float(score(truth, guess, average="macro", zero_division=0))
        labels = list(range(max(2, np.shape(pred)[1] if kind == "argmax" else 2)))
        truth, guess = truth.ravel(), guess.ravel()
        return float(score(truth, guess, labels=labels, average="macro", zero_division=0))

    return compute


def _top_k(k: int) -> Callable:
    def compute(pred, target, kind):
        from sklearn.metrics import top_k_accuracy_score

        if kind != "argmax":
            raise DataError(f"top{k} needs a classifier of several classes (a softmax)")
        classes = np.shape(pred)[1]
        truth = _class_ids(target)
        return float(top_k_accuracy_score(truth, pred, k=min(k, classes), labels=range(classes)))

    return compute


def _regression(name: str) -> Callable:
    def compute(pred, target, kind):
        from sklearn import metrics

        p = np.asarray(pred, np.float64).reshape(len(pred), -1)
        t = np.asarray(target, np.float64).reshape(len(target), -1)
        if name == "mae":
            return float(metrics.mean_absolute_error(t, p))
        if name == "rmse":
            return math.sqrt(metrics.mean_squared_error(t, p))
        return float(metrics.r2_score(t, p))

    return compute


def metric(name: str) -> Callable:
    """The function ``f(prediction, target, kind) -> float`` of a built-in metric's ``name``."""
    from sklearn import metrics as sk

    if name == "accuracy":
        return accuracy
    scores = {"precision": sk.precision_score, "recall": sk.recall_score, "f1": sk.f1_score}
    if name in scores:
        return _averaged(scores[name])
    if name in REGRESSION_METRICS:
        return _regression(name)
    top = _TOP_K.fullmatch(name)
    if top and int(top[1]) >= 1:
        return _top_k(int(top[1]))
    known = ", ".join((*CLASSIFIER_METRICS, "top<k>", *REGRESSION_METRICS))
    raise DataError(f"unknown metric {shown(name)}; known: {known}, or a function f(pred, target)")


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in metric (model files store these by name)."""
    return name in CLASSIFIER_METRICS or name in REGRESSION_METRICS or bool(_TOP_K.fullmatch(name))


def resolve(metrics, kind: str | None, target_shape: tuple | None) -> dict[str, Callable]:
    """``metrics`` (names and functions ``f(pred, target)``) as {name: f(pred, target, kind)}.

    ``kind``: how the model's own loss reads classes (None for a regression loss).  A class
    metric asked of a model trained with another loss (MSE on one-hot rows, say) reads them by
    argmax of several target columns, or the 0.5 threshold of one.
    """
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    out = {}
    for item in metrics or ():
        if callable(item):
            name = getattr(item, "__name__", None) or type(item).__name__
            out[name] = lambda pred, target, kind, fn=item: float(fn(pred, target))
            continue
        if not isinstance(item, str):
            raise DataError(f"a metric is a name or a function, got {shown(item)}")
        fn = metric(item)
        is_class = item in CLASSIFIER_METRICS or _TOP_K.fullmatch(item)
        if is_class and kind is None:
            if target_shape is None or len(target_shape) != 1:
                raise DataError(
                    f"metric {item!r} compares classes with a target of one row per sample, "
                    f"which this model has not; for a regression: {', '.join(REGRESSION_METRICS)}"
                )
            read = "argmax" if target_shape[0] > 1 else "prob"
            fn = lambda pred, target, _, fn=fn, read=read: fn(pred, target, read)  # noqa: E731
        out[item] = fn
    return out

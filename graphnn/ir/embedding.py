"""Embedding lookup and layer normalization, built from ops that already have rules.

``embedding(ids, E)`` is the indexed contraction ``out[..., d] = Σ_v one_hot(ids)[..., v] ·
E[v, d]``: the table's gradient ``dE[v, d] = Σ one_hot[..., v] · δ[..., d]`` is the contraction's
derived adjoint, not a rule of its own.  ``one_hot`` reads integer ids held in the float input
(exact up to 2**24 in float32); an id that is not a whole number in [0, vocab) gives a row of
NaN, so the step's finite check stops on it instead of training on a wrong row.

``layer_norm`` is mean, subtraction, power and broadcasting: SymPy derives its gradient.

>>> import graphnn as gn
>>> ids = gn.input("ids", (5,)); E = gn.param("E", (30, 4))
>>> gn.embedding(ids, E).shape, gn.layer_norm(gn.input("h", (6,))).shape
((None, 5, 4), (None, 6))
"""

from __future__ import annotations

from graphnn.errors import GraphError, ShapeError
from graphnn.ir.indexed import A, contract
from graphnn.ir.ops import (
    Tensor,
    _as_tensor,
    _label,
    mean,
    power,
    reshape,
    softmax_cross_entropy,
)
from graphnn.ir.shapes import show


def one_hot(ids, depth: int) -> Tensor:
    """ids (integers in a float tensor) as one-hot rows of length ``depth``, a new last axis."""
    ids = _as_tensor(ids)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise GraphError(f"one_hot of '{ids.label}': depth must be a positive int, got {depth!r}")
    if not ids.shape or ids.ndim > 6:
        raise ShapeError(f"one_hot: ids '{ids.label}' {show(ids.shape)} must have 1 to 6 axes")
    label = _label("one_hot({})", ids)
    return Tensor("one_hot", (ids,), (*ids.shape, depth), {"depth": depth}, None, label)


def embedding(ids, table) -> Tensor:
    """Rows of ``table`` (vocab, dim) picked by the integer ``ids``: shape ids.shape + (dim,)."""
    ids, table = _as_tensor(ids), _as_tensor(table)
    if table.ndim != 2 or None in table.shape:
        raise ShapeError(
            f"embedding: table '{table.label}' {show(table.shape)} must be (vocab, dim)"
        )
    vocab, dim = table.shape
    hot = one_hot(ids, vocab)
    axes = ["b", "s", "t", "u", "w", "z"][: ids.ndim]  # batch, then the positions
    sizes = {**dict(zip(axes, ids.shape, strict=True)), "v": vocab, "d": dim}
    maps = [tuple(A(a) for a in [*axes, "v"]), (A("v"), A("d"))]
    out = tuple(A(a) for a in [*axes, "d"])
    label = _label("embedding({}, {})", ids, table)
    return contract([hot, table], maps, out, sizes, (*ids.shape, dim), label, "embedding")


def layer_norm(x, gamma=None, beta=None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the last axis, then ``* gamma + beta`` when given."""
    x = _as_tensor(x)
    if not x.shape:
        raise ShapeError(f"layer_norm: '{x.label}' must have an axis to normalize")
    centered = x - mean(x, axis=-1, keepdims=True)
    variance = mean(power(centered, 2), axis=-1, keepdims=True)
    y = centered * power(variance + eps, -0.5)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def sparse_softmax_cross_entropy(logits, labels) -> Tensor:
    """softmax_cross_entropy with integer class labels: ``labels`` holds one class id per row of
    ``logits`` (shape ``logits.shape[:-1]``; for (batch, k) logits, an input of per-sample shape
    ``()``).  The one-hot rows are made in the kernel, one batch at a time, so the data set is
    never copied as one-hot rows; a label that is not a class id gives a NaN loss (one_hot's NaN
    row), which stops training with a report instead of training on a wrong class.
    """
    logits, labels = _as_tensor(logits), _as_tensor(labels)
    if len(logits.shape) < 2 or logits.shape[-1] is None:
        raise ShapeError(
            f"sparse_softmax_cross_entropy: logits '{logits.label}' {show(logits.shape)} need a "
            "class axis last"
        )
    rows, classes = logits.shape[:-1], logits.shape[-1]
    if labels.shape == (*rows, 1):  # a column of ids, as a spec's [inputs] y = [1] declares it
        return softmax_cross_entropy(logits, reshape(one_hot(labels, classes), logits.shape))
    if labels.shape != rows:
        raise ShapeError(
            f"sparse_softmax_cross_entropy: labels '{labels.label}' {show(labels.shape)} must "
            f"have the logits' shape without the class axis, {show(rows)}, or a last axis of 1 "
            "(one class id per row: per-sample shape () or (1,))"
        )
    return softmax_cross_entropy(logits, one_hot(labels, classes))

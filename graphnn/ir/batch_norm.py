"""Batch normalization with running statistics, from ops that already have rules.

A *running statistic* is a ``running(batch_value, state)`` node: its training form is the batch
value (so SymPy derives the gradient through it), its eval form is ``state``, a non-trainable
parameter (``attrs["state"]``).  The optimizers skip a state parameter: each training step
instead assigns it ``(1 - momentum) · state + momentum · correction · batch_value``, a node the
training graph computes next to the gradients (:func:`update`).  Prediction and evaluation run
the eval form, as they run dropout's.

``batch_norm`` normalizes over every axis but the last (the batch; for NHWC images the batch
and both spatial axes), per channel, with PyTorch's conventions: momentum 0.1 weighs the new
batch, the running variance is updated with the unbiased batch variance (``count / (count -
1)``), the normalization uses the biased one.

>>> import graphnn as gn
>>> y = gn.batch_norm(gn.input("h", (6,)), name="bn1")
>>> y.shape
(None, 6)
"""

from __future__ import annotations

import numbers

import sympy

from graphnn.errors import GraphError, ShapeError
from graphnn.ir.elementwise import ARGS, BATCH
from graphnn.ir.ops import Tensor, _as_tensor, _check_name, _label, count, ewise, mean, power
from graphnn.ir.shapes import show


def state(name: str, shape: tuple[int, ...], init: str) -> Tensor:
    """A non-trainable parameter: saved and loaded with the parameters, never optimized."""
    _check_name(name, "state")
    return Tensor("param", (), tuple(shape), {"init": init, "state": True}, name)


def running(batch_value, state_param: Tensor, momentum: float, correction=1, count=1) -> Tensor:
    """``batch_value`` while training, ``state_param`` in prediction and evaluation; each
    training step moves ``state_param`` towards ``correction · batch_value`` by ``momentum``.
    ``count``: how many elements the statistic is over (n, the batch size, for 2-D inputs)."""
    batch_value = _as_tensor(batch_value)
    if not state_param.attrs.get("state"):
        raise GraphError(f"running: '{state_param.label}' must be a state parameter")
    if batch_value.shape != state_param.shape:
        raise ShapeError(
            f"running: '{batch_value.label}' {show(batch_value.shape)} and state "
            f"'{state_param.label}' {show(state_param.shape)} must have the same shape"
        )
    attrs = {"momentum": float(momentum), "correction": sympy.sympify(correction)}
    attrs["count"] = sympy.sympify(count)
    label = _label("running({})", state_param)
    return Tensor("running", (batch_value, state_param), state_param.shape, attrs, None, label)


def update(t: Tensor) -> Tensor:
    """The new value of a running node's state after one training step."""
    m, c = t.attrs["momentum"], t.attrs["correction"]
    expr = (1 - sympy.Float(m)) * ARGS[1] + sympy.Float(m) * c * ARGS[0]
    return ewise("running_update", expr, list(t.inputs), label=f"new {t.inputs[1].label}")


def state_updates(ir, state_names) -> dict[str, Tensor]:
    """State parameter name -> its new value after a training step, one per running node of
    the graph IR ``ir``; GraphError for a graph (a model file, say) whose running statistics
    and state parameters do not pair up."""
    updates: dict[str, Tensor] = {}
    for t in ir.tensors:
        if t.op != "running":
            continue
        state_name = ir.name_of(t.inputs[1])
        if state_name not in state_names or state_name in updates:
            raise GraphError(
                f"running statistic '{ir.name_of(t)}' must read a state parameter of its own, "
                f"not '{state_name}'"
            )
        updates[state_name] = update(t)
    unread = [s for s in state_names if s not in updates]
    if unread:
        raise GraphError(f"state parameter '{unread[0]}' is read by no running statistic")
    return updates


def _check(x: Tensor, momentum, eps, name) -> None:
    if x.ndim < 2 or x.shape[0] is not None or x.shape[-1] is None:
        raise ShapeError(
            f"batch_norm: '{x.label}' {show(x.shape)} must be (batch, ..., channels): it "
            "normalizes each channel over the batch"
        )
    ok = isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
    if not (ok and 0 < momentum <= 1):
        raise GraphError(f"batch_norm '{name}': momentum must be in (0, 1], got {momentum!r}")
    ok = isinstance(eps, numbers.Real) and not isinstance(eps, bool)
    if not (ok and eps > 0):
        raise GraphError(f"batch_norm '{name}': eps must be a number > 0, got {eps!r}")


def batch_norm(
    x, gamma=None, beta=None, momentum: float = 0.1, eps: float = 1e-5, name: str = "bn"
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` per channel (the last axis), over the
    batch (and any axes between): batch statistics while training, the running statistics
    ``<name>_mean`` and ``<name>_var`` (state parameters) in prediction and evaluation.  Give
    each layer its own ``name``.  A batch of one row (of one element per channel) has variance
    0: the output is then ``beta``, and the running variance takes no unbiased correction."""
    x = _as_tensor(x)
    _check(x, momentum, eps, name)
    axes = tuple(range(x.ndim - 1))
    channels = (x.shape[-1],)
    size = count(x.shape, axes)
    mu = running(mean(x, axis=axes), state(f"{name}_mean", channels, "zeros"), momentum, 1, size)
    centered = x - mu
    batch_var = mean(power(centered, 2), axis=axes)
    unbiased = size / sympy.Max(size - 1, 1)
    var = running(batch_var, state(f"{name}_var", channels, "ones"), momentum, unbiased, size)
    y = centered * power(var + eps, -0.5)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def over_rows_only(ir) -> list[str]:
    """The state parameters of running statistics over the batch rows alone (batch norm of a
    2-D value): a batch of one row has no variance for them."""
    return [n.inputs[1] for n in ir.nodes if n.op == "running" and n.attr("count") == BATCH]

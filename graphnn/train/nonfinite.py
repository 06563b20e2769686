"""Diagnosis of a NaN/Inf stop: which step, which parameter, which graph node first.

Two ways training can break.  Usually a compiled step finds its loss or a gradient not finite and
stops before touching any parameter; the driver then re-runs that batch on the NumPy reference in
the model's dtype and names the first node, in topological order, whose value is not finite.
Rarely, the loss and gradients are finite but an optimizer update overflows (a huge learning
rate times a finite step); then a parameter or optimizer buffer itself holds NaN/Inf, and the
driver rewinds the epoch to the step before (:func:`update_overflow` words the error).

>>> import numpy as np
>>> first_nonfinite({"a": np.ones(2), "b": np.array([1.0, np.nan])}, ["a", "b"])
'b'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphnn.errors import NonFiniteError
from graphnn.optim.optimizers import state_key
from graphnn.train.checkpoint import latest_checkpoint

ADVICE = "Try a smaller learning rate or gradient clipping (clip_norm=...)."


def finite(a) -> bool:
    return bool(np.all(np.isfinite(a)))


def first_nonfinite(values, order) -> str | None:
    for name in order:
        if name in values and not finite(values[name]):
            return name
    return None


def broken_names(model) -> list[str]:
    """Parameters, then optimizer buffers, of ``model`` holding NaN or Inf.

    Runs after every epoch: with the back end's compiled ``all_finite`` when it has one (NumPy's
    isfinite-then-all costs 3-4 us per array, 30 us of every call of fit for a two-layer MLP),
    and first on all of them at once while the model holds them packed in one flat array (one
    call, 1 us for digits; array by array 4.4 us); array by array only to name what is broken.
    """
    compiled = getattr(model.trainer, "all_finite", None)
    flat = model.packed_values()
    if flat is not None and (finite(flat) if compiled is None else compiled(flat)):
        return []
    arrays = [*model.params.items(), *model.state.items()]
    if compiled is None:
        return [k for k, v in arrays if not finite(v)]
    return [k for k, v in arrays if not compiled(v.reshape(-1))]


def _ancestors(ir, name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for i in ir.node(todo.pop()).inputs:
            if i not in seen:
                seen.add(i)
                todo.append(i)
    return seen


def _largest(params, names) -> str:
    return max(names, key=lambda p: float(np.max(np.abs(params[p]), initial=0.0)))


def _magnitudes(params, names) -> str:
    return ", ".join(f"|{p}| <= {float(np.max(np.abs(params[p]), initial=0.0)):.3g}" for p in names)


def _checkpoint_note(checkpoint_dir) -> str:
    kept = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    return f"; last good checkpoint: {Path(kept)}" if kept else ""


def diagnose(model, batch, status, step, epoch, checkpoint_dir, lr=None) -> NonFiniteError:
    """The error to raise for step ``step`` that reported ``status`` (-1 loss, k > 0 gradient of
    parameter k)."""
    from codegen.numpy_ref import evaluate
    from codegen.steps import describe

    graph, names = model.graph, model.graph.param_names
    with np.errstate(all="ignore"):
        values = evaluate(graph.training, {**model.params, **batch}, model.dtype)
    node = first_nonfinite(values, [n.name for n in graph.training.nodes])
    bad_grads = [p for p in names if not finite(values[graph.grad_names[p]])]
    if status > len(names):  # then come the state parameters' new values (batch norm)
        param = graph.state_names[status - 1 - len(names)]
    elif status > 0:
        param = names[status - 1]
    elif bad_grads:
        param = bad_grads[0]
    else:  # only the loss overflowed: the parameter that has grown the most feeds it
        feeding = [p for p in names if node is None or p in _ancestors(graph.training, node)]
        param = _largest(model.params, feeding or names)
    what = f"the gradient of parameter '{param}'" if status > 0 else "the loss"
    if status > len(names):
        what = f"the new running value of state parameter '{param}'"
    if node is not None:
        where = f" It first appears at node '{node}' = {describe(graph.training.node(node))}."
    else:
        where = " (The NumPy reference re-run of this batch stays finite.)"
    others = [p for p in bad_grads if p != param or status <= 0]
    if others:
        where += f" The gradients of {', '.join(repr(p) for p in others)} are not finite."
    rate = f"; learning rate at this step {lr:.3g}" if lr is not None else ""
    message = (
        f"training stopped at step {step} (epoch {epoch}): {what} is NaN or Inf.{where} "
        f"Parameters hold their values from before this step "
        f"({_magnitudes(model.params, names)}{rate}){_checkpoint_note(checkpoint_dir)}. {ADVICE}"
    )
    return NonFiniteError(message, step=step, param=param, node=node)


def update_overflow(model, bad, step, epoch, checkpoint_dir, lr) -> NonFiniteError:
    """Step ``step``'s optimizer update made ``bad`` (parameters or optimizer buffers) NaN/Inf
    from a finite loss and gradients; the model holds its values from before that step."""
    graph = model.graph
    param = next((p for p in graph.param_names if p in bad), None)
    if param is None:  # only optimizer state; name the parameter it belongs to
        buffers = model.optimizer.state
        param = next(p for p in graph.param_names if {state_key(s, p) for s in buffers} & set(bad))
    names = ", ".join(repr(b) for b in bad)
    message = (
        f"training stopped at step {step} (epoch {epoch}): the optimizer update made {names} "
        "NaN or Inf although the loss and gradients were finite. Parameters and optimizer state "
        f"hold their values from before this step ({_magnitudes(model.params, graph.param_names)}"
        f"; learning rate at this step {lr:.3g}){_checkpoint_note(checkpoint_dir)}. {ADVICE}"
    )
    return NonFiniteError(message, step=step, param=param, node=param)

"""Diagnosis of a NaN/Inf stop: which step, which parameter, which graph node first.

When a compiled step reports a non-finite loss or gradient, the driver re-runs that batch on the
NumPy reference in the model's dtype and finds the first node, in topological order, whose value
is not finite.  Parameters were not updated by the failing step.

>>> import numpy as np
>>> first_nonfinite({"a": np.ones(2), "b": np.array([1.0, np.nan])}, ["a", "b"])
'b'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphnn.checkpoint import latest_checkpoint
from graphnn.errors import NonFiniteError


def first_nonfinite(values, order) -> str | None:
    for name in order:
        if name in values and not np.all(np.isfinite(values[name])):
            return name
    return None


def diagnose(model, batch, status: int, step: int, epoch: int, checkpoint_dir) -> NonFiniteError:
    """The error to raise for a step that reported ``status`` (-1 loss, k > 0 gradient k)."""
    from codegen.numpy_ref import evaluate

    graph = model.graph
    param = graph.param_names[status - 1] if status > 0 else None
    bad_param = first_nonfinite(model.params, graph.param_names)
    with np.errstate(all="ignore"):
        values = evaluate(graph.training, {**model.params, **batch}, model.dtype)
    node = bad_param or first_nonfinite(values, [n.name for n in graph.training.nodes])
    what = f"the gradient of parameter '{param}'" if param else "the loss"
    where = f"; it first appears at node '{node}'" if node else ""
    if node is not None and node in graph.training.by_name:
        where += f" ({graph.training.node(node).label})"
    kept = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    saved = f"; last good checkpoint: {Path(kept)}" if kept else ""
    message = (
        f"training stopped at step {step} (epoch {epoch}): {what} is NaN or Inf{where}. "
        f"Parameters hold their values from before this step{saved}. "
        "Try a smaller learning rate or gradient clipping (clip_norm=...)."
    )
    return NonFiniteError(message, step=step, param=param or bad_param, node=node)

"""The step of a small model written out inside ``train_epoch``: no call and no view per step.

For a model of a few small parameters (the textbook neuron, XOR), a step is a few dozen
multiply-adds, and what ``train_epoch`` spends around them is most of its time: the call of
``loss_and_grads`` (its workspace tuple in, a tuple of arrays out, the reference counts of each),
and the guard's and updates' calls over tuples of flat views.  Measured on the single neuron (8
inputs, batch 1, SGD): 142 ns a step as calls, 105 ns with ``loss_and_grads``' body written into
the loop, 55 ns with the guard and updates written out too; a hand-written Numba loop of the same
training takes 41 ns.

So for a small model (:func:`is_small`) ``train_epoch`` holds:

- ``loss_and_grads``' body, as the kernel prints it (the same statements: the same bits), its
  workspace unpacked once before the loop; when every block is a loop over the batch's rows,
  as one loop that runs each block's row in turn (codegen/cpu/row_loop.py);
- the guard: per parameter, a loop over its gradient's elements (``acc += g * 0``, NaN exactly
  when one is NaN or ±Inf, as ``all_finite``), status ``k`` naming the first bad one;
- the update: per parameter, a loop nest over its elements running ``apply_update``'s formulas
  (printed once, then their symbols renamed ``u_<name>`` so that, for example, Adam's ``m``
  cannot meet ``train_epoch``'s ``m``, the batch's row count; :func:`update_locals`).

Larger models keep the calls: there a step costs microseconds, and one copy of the update loop
per parameter was most of a 30-layer model's compile (``codegen.cpu.module._guard_and_updates``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from codegen.cpu.update import update_statements
from codegen.names import update_locals
from codegen.printer import print_expr
from codegen.signature import Signature
from codegen.steps import indent

SMALL_PARAMS = 4  # parameters a model may have for its step to be written out
SMALL_ELEMENTS = 4096  # and elements in all: beyond that a step's own work dwarfs its calls


def is_small(sig: Signature, optimizer) -> bool:
    """Whether ``train_epoch`` writes out the step (see the module docstring)."""
    shapes = [sig.forward.node(p).shape for p in sig.params]
    return (
        optimizer is not None
        and optimizer.clip_norm is None  # clipping needs every gradient's norm first: calls
        and sig.trainable == len(shapes)  # running statistics (batch norm) take the calls' path
        and 0 < len(shapes) <= SMALL_PARAMS
        and all(len(s) >= 1 for s in shapes)
        and sum(math.prod(s) for s in shapes) <= SMALL_ELEMENTS
    )


def inlined_call(parts: dict, results: Sequence[str]) -> list[str]:
    """``loss_and_grads``' body (``parts`` from :func:`codegen.cpu.module.kernel`), its return
    line turned into the assignment of ``results``."""
    body = list(parts["body"])
    last = body.pop()
    assert last.startswith("return "), last
    values = last[len("return ") :].split("  #", 1)[0]
    return [*body, f"{', '.join(results)} = {values}"]


def guard_and_updates(
    sig: Signature, optimizer, dtype: str, grads: Sequence[str], hyper: Sequence[str], fail, dim
) -> list[str]:
    """The NaN/Inf guard and every update, written out per parameter; ``hyper``: how the step
    reads each hyper-parameter and then t (as ``_guard_and_updates`` takes them); ``dim``
    spells a size (a variable the epoch holds it in, else the number: a loop of 1 vanishes).
    The update's statements are apply_update's (:func:`codegen.cpu.update.update_statements`)."""
    lit = f"np.{dtype}"
    local = update_locals(optimizer)
    lines = ["if not np.isfinite(loss):", f"    {fail('-1')}"]
    for k, (p, g) in enumerate(zip(sig.params, grads, strict=True)):
        index = _index(sig, p)
        lines += [f"acc = {lit}(0.0)", *_loops(sig, p, index, dim)]
        lines += indent([f"acc += {g}[{', '.join(index)}] * {lit}(0.0)"], len(index))
        lines += ["if not np.isfinite(acc):", f"    {fail(str(k + 1))}"]
    lines.append(f"gscale = {lit}(1.0)")
    exprs = [e for _, e in [*optimizer.scalars(), *optimizer.assignments()]]
    formulas = " ".join(print_expr(e, dtype=dtype) for e in exprs)
    names = [*optimizer.hyper, "t"]  # bound when a formula reads them (the module lints clean)
    read = [(h, v) for h, v in zip(names, hyper, strict=True) if re.search(rf"\b{h}\b", formulas)]
    lines += [f"{local[h]} = {value}" for h, value in read]
    n_state = len(optimizer.state)
    for k, (p, g) in enumerate(zip(sig.params, grads, strict=True)):
        index = _index(sig, p)
        at = f"[{', '.join(index)}]"
        states = sig.state[k * n_state : (k + 1) * n_state]  # sig.state: per parameter, per buffer
        arrays = {"P": p, "G": g, **dict(zip(optimizer.state, states, strict=True))}
        element = {s: a + at for s, a in arrays.items()}
        scalars, body = update_statements(optimizer, dtype, element.__getitem__, local)
        lines += scalars if k == 0 else []  # once per step, before the first parameter's loop
        lines += [f"# update of {p}", *_loops(sig, p, index, dim), *indent(body, len(index))]
    return lines


def _index(sig: Signature, p: str) -> list[str]:
    return [f"i{k}" for k in range(len(sig.forward.node(p).shape))]


def _loops(sig: Signature, p: str, index: list[str], dim) -> list[str]:
    shape = sig.forward.node(p).shape
    return [
        "    " * k + f"for {i} in range({dim(d)}):"
        for k, (i, d) in enumerate(zip(index, shape, strict=True))
    ]

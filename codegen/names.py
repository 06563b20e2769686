"""Identifiers a generated module defines or uses itself, and the node identifiers that avoid them.

A node keeps its name as its identifier unless the generated code already uses that name (or a
name the code derives from it, such as ``ws_<node>``); then it becomes ``<name>_1``, ``<name>_2``.

>>> RESERVED >= {"loss_and_grads", "np", "ws"}
True
"""

from __future__ import annotations

import keyword

# Identifiers the generated code uses itself; a node with one of these names is renamed.
RESERVED = set(keyword.kwlist) | {"np", "math", "njit", "FASTMATH", "range", "max", "min", "abs"}


RESERVED |= {"n", "nf", "m", "s", "d", "j", "t", "t0", "P", "G", "loss", "status", "total"}
RESERVED |= {"tsum"}  # softmax cross-entropy's row sum of the target


RESERVED |= {"steps", "idx", "perm", "batch_size", "lrs", "gscale", "norm", "clip_norm"}


RESERVED |= {"start", "all_finite", "sum_squares"}  # train_epoch's loop, train_step's helpers


RESERVED |= {"tanh_r", "x2", "xc", "p", "q", "ax", "tail"}  # codegen/cpu/approx.py
RESERVED |= {"r", "c", "p", "s"}  # codegen/cpu/matmul.py


RESERVED |= {"forward", "loss_and_grads", "apply_update", "train_step", "train_epoch"}


RESERVED |= {"ws", "workspace", "rows", "r"}


RESERVED |= {"init_params", "predict", "grads", "step", "main", "PARAMS"} | {
    f"i{k}" for k in range(8)
}


def identifiers(graph, taken: set[str]) -> dict[str, str]:
    """Node name -> identifier: the name itself unless the generated code already uses it."""
    names = list(dict.fromkeys(n.name for n in [*graph.training.nodes, *graph.forward.nodes]))
    taken = taken | {d for x in names for d in derived(x)}
    out, used = {}, set()
    for name in names:
        ident, k = name, 0
        # A new name must not clash, nor must the names derived from it (n -> n_1 -> n_1_v).
        while ident in taken or ident in used or (k and derived(ident) & (taken | used | {*names})):
            k += 1
            ident = f"{name}_{k}"
        out[name] = ident
        used |= {ident, *derived(ident)}
    return out


def derived(name: str) -> set[str]:
    """Identifiers the generated code makes from a node's: group scalar, epoch array and batch
    buffer, gradient, workspace buffer."""
    return {f"{name}_v", f"{name}_all", f"{name}_batch", f"grad_{name}", f"ws_{name}"}

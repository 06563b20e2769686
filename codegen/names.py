"""Every identifier a generated module defines or uses itself, in one table for all back ends,
and the node identifiers that avoid them.

A graph node becomes a variable of the generated code named after it.  A node whose name is in
:data:`RESERVED` (``ValueError``, ``np``, ``ws``, a CUDA kernel's ``tid``) would shadow what the
code means by that name, so it is renamed ``<name>_1``, ``<name>_2``..., as is a node whose name
clashes with a name the code derives from another (``ws_<node>``).  Python reads an identifier
in its NFKC normal form (``"ｘ"`` is ``x``, ``"ﬁ"`` is ``fi``), so names are compared, and
printed, in that form: :func:`identifier`.

``tests/test_names.py`` generates modules for every back end and optimizer and checks that
every identifier they use that does not come from a node is listed here.

>>> identifier("ﬁ"), "ValueError" in RESERVED, RESERVED >= {"loss_and_grads", "np", "ws"}
('fi', True, True)
"""

from __future__ import annotations

import builtins
import keyword
import unicodedata

PYTHON = {*keyword.kwlist, *keyword.softkwlist, *dir(builtins)}

# The CPU module (codegen/cpu/module.py, codegen/cpu/steps.py): globals, the kernels' loop
# variables, train_epoch's and train_step's locals, apply_update's flat views and scalars.
CPU = {"np", "math", "njit", "FASTMATH", "n", "nf", "m", "s", "d", "j", "t", "t0", "P", "G"}
CPU |= {"loss", "status", "total", "steps", "idx", "perm", "batch_size", "lrs", "gscale", "norm"}
CPU |= {"clip_norm", "start", "all_finite", "sum_squares", "ws", "workspace", "rows", "r"}
CPU |= {"forward", "loss_and_grads", "apply_update", "train_step", "train_epoch", "P_", "G_"}
# train_epoch's loop over the parameters (i), and the data row a batch row copies (_row)
CPU |= {"update_all", "i", "_row"}
CPU |= {f"i{k}" for k in range(8)} | {"tsum"}  # tsum: softmax cross-entropy's target row sum
CPU |= {f"z{k}" for k in range(8)}  # codegen/steps.py: the loop zeroing an accumulator
# codegen/contraction.py: the accumulator, a window's value and argmax; index variables are
# "_<index>" (and "_y<axis>" for an inverted output position), never a node's name
CPU |= {"acc", "v", "hit", "_kk", "_ll"}
CPU |= {"_r", "_s"}  # codegen/cpu/im2col.py, pool_mask.py: the input position of a window element
CPU |= {"_p", "_u", "_w", "_b0", "_nb"}  # codegen/cpu/im2col.py: row chunks, image groups
CPU |= {"_acc", "_found", "_first"}  # codegen/cpu/pool_mask.py: each channel's maximum, argmax
# dropout: the draw's arguments (codegen/cpu/module.py), its hashes and the counter in a row
CPU |= {"step", "draw", "sample_ids", "key", "rowkey", "e", "dropout_mix"}
APPROX = {"tanh_r", "x2", "xc", "p", "q", "ax", "tail"}  # codegen/cpu/approx.py
MATMUL = {"r", "c", "p", "s"}  # codegen/cpu/matmul.py

# The CUDA module (codegen/cuda/module.py, library.py, steps.py)
CUDA = {"cuda", "TILE", "TILE_PAD", "THREADS", "MAX_BLOCKS", "REDUCE_THREADS", "SIGNATURES"}
CUDA |= {"blocks", "tiles", "Workspace", "gather_rows", "batch_mean", "check_step", "k", "o"}
CUDA |= {f"matmul_{a}{b}" for a in "nt" for b in "nt"}
CUDA |= {"tid", "part", "acc", "lr", "losses", "bad", "i"}
CUDA |= {"step", "draw", "sample_ids", "key", "h"}  # dropout

# The exported module's wrappers (codegen/export/): its API, and the locals of its functions.
# An input argument named like one of them gets a trailing "_".
EXPORT_API = {"DTYPE", "INPUTS", "PARAMS", "STATE", "PREDICTION", "init_params", "init_state"}
EXPORT_API |= {"EPOCHS", "BATCH_SIZE", "_batch", "loss", "grads", "step", "fit_epoch"}
EXPORT_API |= {"predict", "main", "forward_prediction", "forward", "loss_and_grads"}
EXPORT_API |= {"train_step", "train_epoch", "workspace", "_workspace", "np", "zlib", "scipy"}
EXPORT_API |= {"_arrays", "_data", "_check"} | set(dir(builtins))
EXPORT_LOCALS = {"data", "params", "state", "t", "t0", "batch_size", "perm", "arrays", "n"}
EXPORT_LOCALS |= {"steps", "lrs", "total", "done", "status", "value", "out", "hyper", "ws", "h"}

# The CUDA export's wrappers (codegen/export/cuda.py): the CUDA module's globals they see, and
# their locals
EXPORT_CUDA = {"cuda", "math", "Workspace", "TILE", "TILE_PAD", "THREADS", "MAX_BLOCKS"}
EXPORT_CUDA |= {"REDUCE_THREADS", "blocks", "tiles", "_device", "launched", "weights", "buffers"}
EXPORT_CUDA |= {"losses", "gscale", "code", "bad_step", "rows", "names", "values", "device"}
EXPORT_CUDA |= {"pairs", "g"}

# For a node in a kernel module (whose text the exported module embeds beside its API); the
# wrappers of an exported module also keep input arguments clear of EXPORT_TAKEN.
RESERVED = frozenset(PYTHON | CPU | APPROX | MATMUL | CUDA | EXPORT_API)
EXPORT_TAKEN = EXPORT_LOCALS | EXPORT_CUDA


def identifier(name: str) -> str:
    """``name`` as Python reads it as an identifier: in NFKC normal form."""
    return unicodedata.normalize("NFKC", name)


def identifiers(graph, taken: set[str]) -> dict[str, str]:
    """Node name -> identifier: the name itself (NFKC-normalized) unless the generated code
    already uses it."""
    names = list(dict.fromkeys(n.name for n in [*graph.training.nodes, *graph.forward.nodes]))
    idents = {identifier(x) for x in names}
    taken = {identifier(x) for x in taken} | {d for x in idents for d in derived(x)}
    out, used = {}, set()
    for name in names:
        ident, k = identifier(name), 0  # as Python would read it: "ｘ" is x
        base = ident
        # A new name must not clash, nor must the names derived from it (n -> n_1 -> n_1_v).
        while ident in taken or ident in used or (k and derived(ident) & (taken | used | idents)):
            k += 1
            ident = f"{base}_{k}"
        out[name] = ident
        used |= {ident, *derived(ident)}
    return out


def update_locals(optimizer) -> dict[str, str]:
    """Symbol -> the variable a written-out update keeps it in (codegen/cpu/small_step.py):
    ``u_<symbol>``, so that an optimizer's names (Adam's ``m``) meet none of train_epoch's."""
    names = ["P", "G", "t", *optimizer.state, *optimizer.hyper, *(k for k, _ in optimizer.per_step)]
    return {name: f"u_{name}" for name in names}


def derived(name: str) -> set[str]:
    """Identifiers the generated code makes from a node's: group scalar, row-loop variable
    (codegen/cpu/row_loop.py), epoch array and batch buffer, gradient, workspace buffer, a
    convolution's im2col patches (and their cotangent)."""
    made = {f"{name}_v", f"{name}_r", f"{name}_all", f"{name}_batch", f"grad_{name}", f"ws_{name}"}
    made |= {f"{name}_cols", f"ws_{name}_cols", f"{name}_dcols", f"ws_{name}_dcols"}
    return made | {f"{name}_part", f"ws_{name}_part", f"{name}_m", f"{name}_part_m"}


def size_variables(graph) -> set[str]:
    """``dim1``, ``dim2``, ...: the variables the CPU kernels keep sizes in (read from their
    arrays' shapes; codegen/cpu/module.py), at most one per axis of an input or parameter."""
    leaves = [*graph.forward.inputs, *graph.forward.params]
    return {f"dim{k}" for k in range(1, sum(len(n.shape) for n in leaves) + 1)}

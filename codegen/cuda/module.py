"""Assemble the CUDA module: kernels for each plan step, and host functions launching them in order.

The module has the same functions as the CPU one, but they are plain Python on the host that
take device arrays and launch kernels: ``loss_and_grads(ws, ...)``, ``forward(ws, ...)`` and
``train_epoch(ws, ...)`` (which also gathers each mini-batch, checks the step for NaN/Inf and
launches ``apply_update`` per parameter).  ``ws`` is the module's ``Workspace`` of device buffers.
``SIGNATURES`` at the end gives every kernel's argument types (for ``numba.cuda.compile_ptx``).

>>> import graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> src = module_source(gn.Graph(gn.mse(x @ w, t)), gn.SGD(lr=0.1))
>>> "@cuda.jit(cache=True)" in src and "def train_epoch(ws, " in src
True
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from codegen.cuda.library import GPU, Launch, array_type, block_sum, library
from codegen.cuda.steps import CudaSteps, Kernel, count, dims_text
from codegen.names import RESERVED
from codegen.plan import make_plan
from codegen.printer import print_expr
from codegen.signature import Signature, forward_inputs, signature
from codegen.steps import drop_unused_sizes, header, indent, returned


def cuda_signature(graph, optimizer) -> Signature:
    """The CPU back end's :func:`~codegen.signature.signature`: codegen.names reserves the names
    of the CUDA module too, so a node named like one of them is renamed there already."""
    return signature(graph, optimizer)


def host_function(name, ir, outputs, args, dtype, taken, prefix, doc, returns=()):
    """(kernels, source lines of the host function, matmul variants used)."""
    plan = make_plan(ir, outputs)
    scope = CudaSteps(dtype, ir, plan, taken, prefix)
    scope.draw_arg = "draw" if "draw" in args else None  # None: dropout's eval form
    scope.eval_form = name == "forward"  # running statistics: the state, not the batch's
    draw = ("draw", "sample_ids")
    batch = next((a for a in args if a not in draw and ir.node(a).op == "input"), None)
    body = [f'"""{doc}"""', f"n = {batch}.shape[0]" if batch else "n = 1", f"nf = np.{dtype}(n)"]
    kernels: list[Kernel] = []
    for step in plan.steps:
        piece = scope.emit(step)
        kernels += piece.kernels
        body += piece.host + ([""] if piece.host else [])
    body += returned(outputs, returns, tuple_of_one=True)
    body = drop_unused_sizes(body)
    return kernels, [f"def {name}(ws, {', '.join(args)}):", *indent(body, 1)], scope.matmuls


def update_kernel(optimizer, dtype: str) -> Kernel:
    """apply_update on flat views: the optimizer's formulas, one thread per element."""
    sym = optimizer.symbols
    vector = array_type(dtype, 1)
    args = [(f"{s}_", vector) for s in ["P", "G", *optimizer.state]]
    args += [(h, dtype) for h in optimizer.hyper]
    args += [("t", dtype), ("gscale", vector), ("status", "int64[::1]")]
    body = ["if status[0] != 0:", "    return  # a NaN/Inf step: parameters keep their values"]
    body += [f"{k} = {_print(e, dtype)}" for k, e in optimizer.scalars()]
    loop = ["G = G_[i] * gscale[0]"] + [f"{s} = {s}_[i]" for s in ["P", *optimizer.state]]
    for target, expr in optimizer.assignments():
        loop.append(f"{target} = {_print(expr.xreplace({sym['t']: sympy.Symbol('t')}), dtype)}")
    loop += [f"{s}_[i] = {s}" for s in dict.fromkeys(str(t) for t, _ in optimizer.assignments())]
    body += ["for i in range(cuda.grid(1), P_.size, cuda.gridsize(1)):", *indent(loop, 1)]
    formulas = "; ".join(f"{t} <- {e}" for t, e in optimizer.assignments())
    return Kernel("apply_update", args, body, [f"# {optimizer.name}: {formulas}"])


def assign_kernel(dtype: str) -> Kernel:
    """assign_state: a state parameter (a running statistic) takes the value the step computed,
    unless the step was NaN/Inf; no optimizer touches it."""
    vector = array_type(dtype, 1)
    args = [("P_", vector), ("G_", vector), ("status", "int64[::1]")]
    body = ["if status[0] != 0:", "    return  # a NaN/Inf step: parameters keep their values"]
    body += ["for i in range(cuda.grid(1), P_.size, cuda.gridsize(1)):", "    P_[i] = G_[i]"]
    return Kernel("assign_state", args, body, ["# a running statistic <- its new value"])


def grad_names(sig: Signature) -> list[str]:
    """loss_and_grads' results after the loss: gradients, then the states' new values."""
    grads = [f"grad_{p}" for p in sig.params[: sig.trainable]]
    return grads + [f"new_{p}" for p in sig.params[sig.trainable :]]


def _print(expr, dtype: str) -> str:
    return print_expr(expr, dtype=dtype, fn_module="math", backend="cuda")


def check_kernel(sig: Signature, optimizer, dtype: str) -> Kernel:
    """check_step: one block looks at the loss and every gradient before any update.

    A finite step stores its loss in losses[step] (and, with clipping, the gradient scale); the
    first step with NaN/Inf writes status = (code, step), code -1 for the loss or k for the
    gradient of parameter k (1-based) - the CPU's status codes - and every later update skips.
    """
    grads = grad_names(sig)
    clip = optimizer.clip_norm is not None
    vector = array_type(dtype, 1)
    body = [f"bad = cuda.shared.array({len(grads)}, np.int32)  # bad[k]: gradient k has NaN/Inf"]
    body += [f"part = cuda.shared.array(REDUCE_THREADS, np.{dtype})"] if clip else []
    body += [
        "tid = cuda.threadIdx.x",
        f"for k in range(tid, {len(grads)}, REDUCE_THREADS):",
        "    bad[k] = 0",
        "cuda.syncthreads()",
    ]
    body += [f"acc = np.{dtype}(0.0)  # the squared gradient norm, for clipping"] if clip else []
    for k, g in enumerate(grads):
        body += [f"for i in range(tid, {g}.size, REDUCE_THREADS):"]
        body += [f"    acc += {g}[i] * {g}[i]"] if clip and k < sig.trainable else []
        body += [f"    if not math.isfinite({g}[i]):", f"        bad[{k}] = 1"]
    body += block_sum("acc", "total") if clip else ["cuda.syncthreads()"]
    verdict = ["if not math.isfinite(loss[0]):", "    status[0] = -1"]
    for k in range(len(grads)):
        verdict += [f"elif bad[{k}] != 0:", f"    status[0] = {k + 1}"]
    verdict += ["else:", "    losses[step] = loss[0]"]
    if clip:
        one, eps = f"np.{dtype}(1.0)", f"np.{dtype}(1e-06)"
        verdict += [f"    gscale[0] = min({one}, clip_norm / (math.sqrt(total) + {eps}))"]
    verdict += ["if status[0] != 0:", "    status[1] = step"]
    body += ["if tid == 0 and status[0] == 0:", *indent(verdict, 1)]
    args = [("loss", vector)] + [(g, vector) for g in grads]
    args += [("losses", vector), ("status", "int64[::1]"), ("gscale", vector), ("step", "int64")]
    args += [("clip_norm", dtype)] if clip else []
    head = "# the step's loss and gradients: record the loss, or the first NaN/Inf (stops updates)"
    return Kernel("check_step", args, body, [head])


def epoch_function(graph, sig: Signature, optimizer, dtype: str) -> list[str]:
    """train_epoch: every launch of one epoch, in order; nothing comes back to the host here."""
    loop = ["n = min(batch_size, perm.shape[0] - start)", "# this step's rows of every input"]
    for node, x in zip(graph.forward.inputs, sig.inputs, strict=True):
        dims = dims_text(node.shape)
        src, dst = (
            (f"{x}_all", x) if len(node.shape) == 2 else (f"ws.rows({x}_all)", f"ws.rows({x})")
        )
        loop += [f'{x} = ws.array("{x}", {dims})']
        loop += [f"gather_rows[blocks({count(node.shape)}), THREADS]({src}, perm, start, {dst})"]
    grads = grad_names(sig)
    # dropout's draw: the epoch (its first step) and the batch's rows (perm is on the device)
    call = [*sig.inputs, *sig.params, *(["t0", "perm[start : start + n]"] if sig.draws else [])]
    loop += [f"{', '.join(['loss', *grads])} = loss_and_grads(ws, {', '.join(call)})"]
    check = ["loss", *(f"ws.flat({g})" for g in grads), "losses", "status", "gscale", "steps"]
    check += ["clip_norm"] if optimizer.clip_norm is not None else []
    loop += ["# record the loss, or the first NaN/Inf (then no update runs)"]
    loop += [f"check_step[1, REDUCE_THREADS]({', '.join(check)})"]
    loop += [f"t = np.{dtype}(t0 + steps + 1)", f"lr = np.{dtype}(lrs[steps])"]
    n_state = len(optimizer.state)
    for k, (p, g) in enumerate(zip(sig.params, grads, strict=True)):
        if k >= sig.trainable:  # a running statistic: assigned, not optimized
            loop += [f"# {p} <- {g}"]
            flat = f"ws.flat({p}), ws.flat({g}), status"
            loop += [f"assign_state[blocks({p}.size), THREADS]({flat})"]
            continue
        state = sig.state[k * n_state : (k + 1) * n_state]
        flat = ", ".join(f"ws.flat({a})" for a in [p, g, *state])
        hyper = ", ".join(optimizer.hyper)
        loop += [f"# {', '.join([p, *state])} <- {optimizer.name} update with {g}"]
        loop += [f"apply_update[blocks({p}.size), THREADS]({flat}, {hyper}, t, gscale, status)"]
    loop += ["steps += 1"]
    doc = [
        '"""Launch every step of one epoch in the order of perm; returns the number of steps.',
        "",
        "losses[step] gets each step's loss; status gets (code, step) of the first NaN/Inf,",
        'after which the update kernels leave parameters and state alone."""',
    ]
    body = [*doc, "steps = 0", "for start in range(0, perm.shape[0], batch_size):"]
    body += indent(loop, 1) + ["return steps"]
    hyper = [h for h in sig.hyper if h != "lr"]
    args = [f"{x}_all" for x in sig.inputs] + ["perm", "batch_size", *sig.params, *sig.state]
    args += ["lrs", *hyper, "t0", "losses", "status", "gscale"]
    return [f"def train_epoch(ws, {', '.join(args)}):", *indent(body, 1)]


def _header(graph, optimizer, dtype: str) -> list[str]:
    lines = header(graph, optimizer, dtype)
    end = max(k for k, line in enumerate(lines) if line == '"""')
    lines = lines[:end]
    lines.insert(1, "")
    lines.insert(
        2, "CUDA back end: @cuda.jit kernels, launched in plan order by the host functions."
    )
    return lines + [
        '"""',
        "",
        "import math",
        "",
        "import numpy as np",
        "from numba import cuda",
        "",
    ]


def module_source(
    graph,
    optimizer=None,
    dtype: str = "float32",
    outputs: Sequence[str] = (),
    launch: Launch = GPU,
) -> str:
    """The whole CUDA module for a graph (and its optimizer) as Python source text."""
    sig = cuda_signature(graph, optimizer)
    taken = set(sig.ident.values()) | RESERVED
    train_doc = "Loss and gradients on one batch: device arrays in, workspace buffers out."
    train = host_function(
        "loss_and_grads", sig.training, [sig.loss, *sig.grads],
        [*sig.inputs, *sig.params, *(["draw", "sample_ids"] if sig.draws else [])], dtype, taken,
        "k", train_doc,
        returns=["loss", *(f"dloss/d{p}" for p in sig.params[: sig.trainable])]
        + [f"new {p}" for p in sig.params[sig.trainable :]],
    )  # fmt: skip
    names = list(outputs) or [graph.loss_name]
    outs = [sig.ident[o] for o in names]
    fwd_args = [sig.ident[i] for i in forward_inputs(graph, names)]
    fwd = host_function(
        "forward", sig.forward, outs, fwd_args + list(sig.params), dtype, taken, "fwd",
        "The requested forward values: device arrays in, workspace buffers out.",
    )  # fmt: skip
    text, signatures = library(dtype, train[2] | fwd[2], launch)
    lines = _header(graph, optimizer, dtype) + [text, ""]
    kernels = train[0] + fwd[0]
    step_kernels = []
    if optimizer is not None:
        step_kernels = [update_kernel(optimizer, dtype), check_kernel(sig, optimizer, dtype)]
        step_kernels += [assign_kernel(dtype)] if sig.trainable < len(sig.params) else []
        kernels += step_kernels
    for kernels_, host in ((train[0], train[1]), (fwd[0], fwd[1])):
        for kernel in kernels_:
            lines += ["", *kernel.lines(), ""]
        lines += ["", *host, ""]
    if optimizer is not None:
        for kernel in step_kernels:
            lines += ["", *kernel.lines(), ""]
        lines += ["", *epoch_function(graph, sig, optimizer, dtype), ""]
    signatures |= {k.name: k.signature for k in kernels}
    lines += ["", "# Argument types of every kernel (numba.cuda.compile_ptx, eager compilation)"]
    lines += ["SIGNATURES = {", *(f'    "{k}": "{v}",' for k, v in signatures.items()), "}"]
    return "\n".join(lines) + "\n"

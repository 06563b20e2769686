"""Assemble a self-contained kernel module (forward, backward, update, step, epoch) as source text.

The module imports only numpy, numba and math, so Numba's on-disk cache can key on its text
alone, and ``export`` can hand the same text to users.  Every block starts with a comment naming
the graph node it computes.

>>> import graphnn as gn
>>> x = gn.input("x", (2,)); t = gn.input("t", (1,)); w = gn.param("w", (2, 1))
>>> src = module_source(gn.Graph(gn.mse(x @ w, t)), gn.SGD(lr=0.1))
>>> "def train_epoch(" in src
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from codegen.cpu import small_step
from codegen.cpu.helpers import with_helpers
from codegen.cpu.row_loop import row_loop
from codegen.cpu.steps import CpuSteps
from codegen.cpu.stepwise import StepKernel, split_blocks
from codegen.cpu.update import update_statements
from codegen.plan import make_plan
from codegen.signature import Signature, forward_inputs, signature
from codegen.steps import (
    Scope,
    drop_unused_sizes,
    header,
    indent,
    loop_header,
    needs,
    returned,
)

# No fast-math flag in the kernels: each can change whether a value is NaN or Inf, and NaN must
# reach the step's guard as it does in the NumPy reference.  reassoc folded exp(log(z)) and
# log(exp(z)) into z and (a*1e30)*1e-30 into a; arcp made a/1e-39 a*inf; contract's FMA turned
# inf - inf = NaN into -inf; afn licenses the same folds.  Measured on the digits step (64-128
# relu-10, batch 32): every flag 19.0 us, none 27.1 us; reassoc alone 19.9 us, each other flag
# alone 26.9-29.7 us.  What reassoc bought was all_finite's vectorized sum, which keeps it below.
JIT = '@njit(cache=True, error_model="numpy")'
# all_finite and sum_squares only: in any order, a sum of zeros and NaNs is NaN exactly when a
# term is, and float64 squares of float32 values cannot overflow; reassoc lets the sums vectorize.
SUM_JIT = '@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")'


def size_names(sig: Signature) -> dict[int, str]:
    """``dim1``, ``dim2``, ...: a variable for each size of the inputs' and parameters' shapes
    (other than 1), numbered in signature order.

    Kernels read these sizes from their arrays' shapes instead of printing them, so the module's
    text, and with it its cache file and Numba's compiled code, is the same for every model
    that differs only in widths: a new width reuses them instead of compiling for seconds.  A
    size of 1 stays a number (it decides broadcasting, and loops over it vanish).
    """
    names: dict[int, str] = {}
    for a in [*sig.inputs, *sig.params]:
        for d in sig.forward.node(a).shape:
            if d is not None and d != 1 and d not in names:
                names[d] = f"dim{len(names) + 1}"
    return names


def _size_sources(sizes: Mapping[int, str], arrays: Mapping[str, tuple]) -> dict[int, str]:
    """size -> ``<array>.shape[<axis>]`` for each size in ``sizes`` that one of ``arrays`` (name
    -> shape, in argument order) has; the first array and axis that has it."""
    found: dict[int, str] = {}
    for a, shape in arrays.items():
        for axis, d in enumerate(shape):
            if d in sizes and d not in found:
                found[d] = f"{a}.shape[{axis}]"
    return found


def _bindings(sizes: Mapping[int, str], sources: Mapping[int, str], lines: list[str]):
    """``dim<k> = <array>.shape[<axis>]`` for each size variable that ``lines`` read (outside
    comments: a comment may name a size, and an unused variable fails the export's lint)."""
    text = "\n".join(line.split("#", 1)[0] for line in lines)
    return [
        f"{sizes[d]} = {src}" for d, src in sources.items() if re.search(rf"\b{sizes[d]}\b", text)
    ]


def kernel(
    name: str,
    ir,
    outputs: Sequence[str],
    args: Sequence[str],
    dtype: str,
    workspace=False,
    returns: Sequence[str] = (),
    sizes: Mapping[int, str] | None = None,
    stepwise: list[StepKernel] | None = None,
    ws_function: str = "workspace",
    parts: dict | None = None,
) -> list[str]:
    """One njit function computing ``outputs`` of ``ir`` from ``args``; ``returns`` says what
    each output is, in a comment above the return.  ``sizes`` (size -> variable, see
    :func:`size_names`): sizes the arguments' shapes hold are read from them, not printed.

    With ``workspace``, the function takes a last argument ``ws`` (what the ``workspace(n,
    *args)`` function printed before it returns), and every array with a leading batch dimension
    or no batch dimension is a view of a buffer of ``ws`` (array constants that are not inlined,
    and arrays whose batch dimension is not first, are still allocated).  Training then reuses
    one set of buffers for every step; freshly allocated multi-MB arrays cost a page fault per
    4 KiB on every step (40% of a step of a 1024-wide MLP), because malloc hands freed large
    blocks back to the OS.
    """
    plan = make_plan(ir, outputs, inline_consts=True, fuse_reductions=True)
    sources = _size_sources(sizes or {}, {a: ir.node(a).shape for a in args if a in ir.by_name})
    bound = {d: (sizes or {})[d] for d in sources}
    # float32 tanh as a vectorizable rational function (codegen/cpu/approx.py): libm's tanhf is a
    # scalar call that cost 30% of a step of a wide tanh MLP.
    scope = CpuSteps(
        dtype, ir, plan, fast_tanh=dtype == "float32", workspace=workspace, sizes=bound
    )
    scope.draw_arg = "draw" if "draw" in args else None  # None: dropout's eval form
    scope.eval_form = name == "forward"  # running statistics: the state, not the batch's
    # The batch size comes from an input the graph reads (an input feeding only another output
    # of the forward graph is an argument but not a node of the training graph).
    batch = next((a for a in args if a in ir.by_name and ir.node(a).op == "input"), None)
    head = [f"n = {batch}.shape[0]" if batch else "n = 1", f"nf = np.{dtype}(n)"]
    blocks = emitted = [scope.emit(step) for step in plan.steps]
    tail = returned(outputs, returns)
    jit = [JIT]
    if stepwise is not None:
        scalars = {v.name: f"np.{dtype}" for v in ir.nodes if v.shape == () and v.name}
        kernels = split_blocks(blocks, tail, scalars, dtype)
        stepwise += [k for k in kernels if k.name]
        blocks, jit = [k.call for k in kernels], []
    body = [line for lines in blocks if lines for line in [*lines, ""]] + tail
    if not workspace:
        body = head + _bindings(bound, sources, body) + body
        return [*jit, f"def {name}({', '.join(args)}):", *indent(drop_unused_sizes(body), 1)]
    views = [f"ws_{b}" for b in scope.buffers]
    unpack = ["(", *indent([f"{v}," for v in views], 1), ") = ws"] if views else []
    rows = next((f"ws_{b}" for b, shape in scope.buffers.items() if shape[0] is None), None)
    bindings = _bindings(bound, sources, body)
    if parts is not None:  # for a caller that writes the body out (codegen/cpu/small_step.py)
        parts.update(unpack=unpack, check=_rows_check(rows, "rows", ws_function))
        written, written_bindings = body, bindings
        one = row_loop(scope, plan.steps, emitted, outputs)
        if one is not None:  # one loop over the rows, while its products run as loops
            blocks = body[: len(body) - len(tail)]
            if one.condition is None:
                written = [*one.lines, "", *tail]
            else:
                written = [f"if {one.condition}:", *indent(one.lines, 1), "else:"]
                written += [*indent(blocks, 1), "", *tail]
            written_bindings = _bindings(bound, sources, written)
        parts["body"] = drop_unused_sizes(head + written_bindings + written)
    body = head + _rows_check(rows, "n", ws_function) + bindings + body
    signature = [*jit, f"def {name}({', '.join([*args, 'ws'])}):"]
    body = unpack + drop_unused_sizes(body)
    # the buffers' sizes come from the data and parameter arrays only
    arrays = [a for a in args if a not in ("draw", "sample_ids")]
    workspace_lines = _workspace_function(scope, arrays, sources, ws_function)
    return workspace_lines + ["", ""] + signature + indent(body, 1)


def _rows_check(buffer: str | None, count: str, ws_function: str) -> list[str]:
    """Refuse a batch of ``count`` rows when the workspace's row buffer ``buffer`` (None: it
    has none) holds fewer: a view past a buffer's end would write out of bounds."""
    if buffer is None:
        return []
    message = f"the workspace has fewer rows than the batch: make it with {ws_function}(n, ...)"
    return [f"if {buffer}.shape[0] < {count}:", f'    raise ValueError("{message}")']


def _workspace_function(
    scope: Scope, args: Sequence[str], sources, name: str = "workspace"
) -> list[str]:
    """workspace(n, *args): the buffers of the kernel printed next, for batches of up to n rows
    (its other arguments are the kernel's, for the sizes it reads from their shapes).

    Plain Python: it runs once per fit, and compiling it cost 0.4 s of every cold start.
    """
    news = [
        f"np.empty({scope.dims(shape)}, dtype=np.{scope.dtype}),  # {name}"
        for name, shape in scope.buffers.items()
    ]
    what = "training step" if name == "workspace" else "call of the kernel printed next"
    doc = f'"""Buffers for one {what} on up to n rows; it overwrites them."""'
    body = [doc, *_bindings(scope.size_vars, sources, news), "return (", *indent(news, 1), ")"]
    return [f"def {name}({', '.join(['n', *args])}):", *indent(body, 1)]


def _update_function(optimizer, dtype: str) -> list[str]:
    """apply_update(P_, G_, <state>_, <hyper>, t, gscale): the optimizer's formulas, in place.

    The arrays are flat views (train_step passes ``.ravel()`` of arrays of rank 2 and more): one
    compiled signature for every parameter, and no second ravel per step.

    Serial on purpose, as is all_finite (issue 18; benchmarks/step_profile.py reruns it with
    ``--parallel-update``).  On 2 cores with OpenBLAS on both, a prange update is faster alone
    but makes the step slower: OpenBLAS's worker spins after each product and the OpenMP
    pool's after each parallel loop, and each holds the core the other pool needs next.
    Fastest of 30, quiet machine: mnist_mlp (Adam, 270k parameters) serial: products and
    elementwise 1.10 ms, guard 15 us, update 141 us, step 1.22 ms; prange (omp layer, Numba's
    choice here): update 95-118 us, step 3.9-6.6 ms (median up to 148 ms); workqueue layer:
    update 497 us; both pools' spinning cut by environment (GOMP_SPINCOUNT=1000,
    OPENBLAS_THREAD_TIMEOUT=4): step 1.26 ms.  wide (SGD, 3.2M parameters): update 706 ->
    218 us alone, but the next products 30.5 -> 38.5 ms (median 127 ms).  And flush-to-zero
    is per thread (graphnn/train/denormals.py): Numba's workers would not flush the denormals
    the stepwise update flushes, and the fused and stepwise bits would differ.
    """
    flat = [f"{s}_" for s in ["P", "G", *optimizer.state]]
    args = [*flat, *optimizer.hyper, "t", "gscale"]
    body, loop = update_statements(optimizer, dtype, "{}_[i]".format)
    body += ["for i in range(P_.shape[0]):", *indent(loop, 1)]
    head = f"# {optimizer.name}: " + "; ".join(f"{t} <- {e}" for t, e in optimizer.assignments())
    return [head, JIT, f"def apply_update({', '.join(args)}):", *indent(body, 1)]


def _array_helpers(dtype: str) -> list[str]:
    """all_finite (exact) and sum_squares (float64, so a large norm cannot overflow).

    all_finite sums ``x * 0``: 0 for every finite x, NaN for NaN and +-Inf. Without an early exit
    the loop vectorizes (under reassoc, see SUM_JIT); it is 10x faster than testing each
    element, which cost 10-15% of a step. LLVM may fold ``x * 0`` to 0 only under nnan.
    """
    lit = f"np.{dtype}"
    return [
        SUM_JIT,
        "def all_finite(a):",
        '    """True if no element of the flat array a is NaN or +-Inf."""',
        f"    acc = {lit}(0.0)",
        "    for i in range(a.shape[0]):",
        f"        acc += a[i] * {lit}(0.0)",
        "    return np.isfinite(acc)",
        "",
        "",
        SUM_JIT,
        "def sum_squares(a):",
        '    """The sum of squares of the flat array a, in float64."""',
        "    total = 0.0",
        "    for i in range(a.shape[0]):",
        "        total += np.float64(a[i]) * np.float64(a[i])",
        "    return total",
    ]


def _flat(sig: Signature, names: Sequence[str]) -> str:
    """A tuple of flat views of one array per parameter (``.ravel()`` of rank 2 and more).

    Every element has the same type, 1-D and contiguous, so ``update_all`` loops over the
    tuple: one copy of the guard and update code for any number of parameters (unrolled, 60
    inlined update loops of a 30-layer MLP were most of its cold compile).  A ravel costs 13 ns,
    a twentieth of a step of a single neuron, so 1-D arrays are passed as they are.
    """
    # the first len(names) parameters: optimizer buffers exist for the trainable ones only
    ranks = [len(sig.forward.node(p).shape) for p in sig.params[: len(names)]]
    views = [a if rank == 1 else f"{a}.ravel()" for a, rank in zip(names, ranks, strict=True)]
    return f"({', '.join(views)}{',' if len(views) == 1 else ''})"


def _guard_and_updates(
    optimizer, dtype: str, hyper: Sequence[str], fail, sig: Signature
) -> list[str]:
    """update_all's statements: the NaN/Inf guard, clipping, then every update, over the flat
    view tuples ``P_``, ``G_`` and the state's; ``hyper``: how the update reads each
    hyper-parameter and the step number t; ``fail(status)``: the line leaving on a bad step.

    Loops over the tuples, not one copy per parameter: 60 inlined update loops of a 30-layer
    MLP were most of its cold compile.  The state parameters (after the trainable ones in ``P_``)
    are assigned their new values from ``G_``, guarded but neither clipped nor optimized.
    """
    lit = f"np.{dtype}"
    trainable = sig.trainable
    every = trainable == len(sig.params)
    body = ["if not np.isfinite(loss):", f"    {fail('-1')}"]
    body += ["for i in range(len(G_)):", "    if not all_finite(G_[i]):"]
    body.append(f"        {fail('i + 1')}")
    if optimizer.clip_norm is not None:
        body += [
            "norm = 0.0",
            "for i in range(len(G_)):" if every else f"for i in range({trainable}):",
            "    norm += sum_squares(G_[i])",
            "norm = np.sqrt(norm)",
            f"gscale = {lit}(min(1.0, clip_norm / (norm + 1e-6)))",
        ]
    else:
        body.append(f"gscale = {lit}(1.0)")
    call = ", ".join(["P_[i]", "G_[i]", *(f"{b}_[i]" for b in optimizer.state)])
    body += ["for i in range(len(P_)):" if every else f"for i in range({trainable}):"]
    body += [f"    apply_update({call}, {', '.join([*hyper, 'gscale'])})"]
    if not every:  # running statistics: assigned the values the forward pass computed
        body += ["# state parameters (running statistics): the values this step computed"]
        body += [f"for i in range({trainable}, len(P_)):", "    P_[i][:] = G_[i]"]
    return body


def _update_all_function(sig: Signature, optimizer, dtype: str) -> list[str]:
    """update_all: after loss_and_grads, the NaN/Inf guard, clipping, then every update.

    Status: 0 done, -1 loss not finite, k > 0 gradient of parameter k not finite; on a nonzero
    status no parameter has been touched.  train_epoch does the same inline (see
    :func:`_epoch_function`); train_step calls this.
    """
    body = _guard_and_updates(
        optimizer, dtype, [*optimizer.hyper, "t"], lambda s: f"return {s}", sig
    )
    body.append("return 0")
    doc = [
        '"""The guard and every update of one step; P_, G_ and the state tuples hold flat views',
        "of the parameters, their gradients and buffers, in parameter order.",
        "",
        "Returns 0, -1 (loss not finite) or k (gradient of parameter k not finite); on a nonzero",
        'status no parameter has been touched."""',
    ]
    tuples = ["P_", "G_", *(f"{b}_" for b in optimizer.state)]
    args = ["loss", *tuples, *sig.hyper, "t"]
    head = [JIT, f"def update_all({', '.join(args)}):"]
    return _array_helpers(dtype) + ["", ""] + head + indent(doc + body, 1)


def _grad_names(sig: Signature) -> tuple[str, ...]:
    """What train_step and train_epoch call loss_and_grads' results: each trainable
    parameter's gradient, then each state parameter's new value."""
    grads = [f"grad_{p}" for p in sig.params[: sig.trainable]]
    return tuple(grads + [f"new_{p}" for p in sig.params[sig.trainable :]])


def _step_function(sig: Signature, optimizer, dtype: str) -> list[str]:
    """train_step: one step, as train_epoch takes each (the export's ``step`` calls it)."""
    grads = _grad_names(sig)
    # dropout's draw: the step, the batch's rows as samples 0..n-1
    draw = ["int(t)", f"np.arange({sig.inputs[0]}.shape[0])"] if sig.draws else []
    call = ", ".join([*sig.inputs, *sig.params, *draw, "ws"])
    body = [f"loss, {', '.join(grads)} = loss_and_grads({call})"]
    n_state = len(optimizer.state)
    states = [_flat(sig, sig.state[k::n_state]) for k in range(n_state)] if n_state else []
    flat = [_flat(sig, sig.params), _flat(sig, grads), *states]
    body.append(f"status = update_all(loss, {', '.join([*flat, *sig.hyper, 't'])})")
    body.append("return loss, status")
    args = [*sig.inputs, *sig.params, *sig.state, *sig.hyper, "t", "ws"]
    return [JIT, f"def train_step({', '.join(args)}):", *indent(body, 1)]


def _epoch_function(
    sig: Signature,
    optimizer,
    dtype: str,
    sizes: Mapping[int, str],
    jit: bool = True,
    written: dict | None = None,
) -> list[str]:
    """train_epoch: every mini-batch of ``perm`` in one compiled call.

    The loop calls loss_and_grads itself, not train_step: Numba links a callee's
    code into its caller and LLVM optimizes it again at every call level, so the extra level
    cost a cold start 16% (digits) to 43% (10 dense layers) more.

    ``lrs`` (one learning rate per step) takes the place of ``lr``, which Optimizer keeps first
    among the hyper-parameters; the compiled back ends and export both rely on that order.

    It does update_all's work inline (the same statements, :func:`_guard_and_updates`), compiled
    or not: the call, which passes tuples of array views, cost 45 of a single neuron's 170 ns
    per step.

    ``written``: the parts of loss_and_grads (:func:`kernel`) of a small model, whose step the
    loop then writes out with no call (codegen/cpu/small_step.py).
    """
    batches = [f"{i}_all" for i in sig.inputs]
    hyper = ["lrs" if h == "lr" else h for h in sig.hyper]
    state_buffers = optimizer.state
    n_state = len(state_buffers)
    arrays = {f"{i}_all": sig.forward.node(i).shape for i in sig.inputs}
    if written is not None:  # the written-out updates loop over the parameters' sizes
        arrays |= {p: sig.forward.node(p).shape for p in sig.params}
    sources = _size_sources(sizes, arrays)
    scope = Scope(dtype, sizes={d: sizes[d] for d in sources})
    # compiled: the rows are perm[start : start + m], read in place (a view of perm cost 7 ns)
    first = "idx = perm[start : start + batch_size]"
    loop = [first if not jit else "m = min(batch_size, perm.shape[0] - start)"]
    for i in sig.inputs:  # gather the batch's rows into a buffer: no allocation per step
        if not jit:  # stepwise: NumPy copies the rows (a copy: the same bits)
            loop += [f"{i} = {i}_batch[: idx.shape[0]]", f"np.take({i}_all, idx, 0, {i})"]
            continue
        # Element loops: Numba compiles a row assignment (x[r] = x_all[k]) 2 s slower.  The
        # source row is read once per row: read in the inner loop, LLVM must reload it after
        # every store (it cannot tell that the batch does not alias perm), and the copy does
        # not vectorize: 100 us per batch of mnist_mlp (128 x 784, 8% of its step), 22 us so.
        dims = sig.forward.node(i).shape[1:]
        index = [f"i{k + 1}" for k in range(len(dims))]
        copy = [f"{i}[{', '.join(['r', *index])}] = {i}_all[{', '.join(['_row', *index])}]"]
        loop += [f"{i} = {i}_batch[:m]", "for r in range(m):", "    _row = perm[start + r]"]
        loop += indent(loop_header(dims, index, scope) + indent(copy, len(dims)), 1)
    grads = _grad_names(sig)
    hyper_t = ["lrs[steps]" if h == "lr" else h for h in optimizer.hyper]
    hyper_t.append(f"np.{dtype}(t0 + steps + 1)")
    fail = lambda status: f"return total, steps, {status}"  # noqa: E731
    # the batch's rows, after the step: a written-out step's kernels may use m (a row maximum)
    rows = "min(batch_size, perm.shape[0] - start)" if written is not None else "m"
    if written is not None:
        loop += ["draw = t0", "sample_ids = perm[start : start + m]"] if sig.draws else []
        loop += [
            "# loss_and_grads, written out",
            *small_step.inlined_call(written, ["loss", *grads]),
        ]
        loop += ["# the guard and the updates, written out"]
        loop += small_step.guard_and_updates(sig, optimizer, dtype, grads, hyper_t, fail, scope.dim)
    else:
        # dropout's draw: the epoch (its first step) and the batch's rows in the training data
        draw = ["t0", "perm[start : start + m]" if jit else "idx"] if sig.draws else []
        call = [*sig.inputs, *sig.params, *draw, "ws"]
        loop.append(f"loss, {', '.join(grads)} = loss_and_grads({', '.join(call)})")
        loop += ["# update_all's guard and updates, inline", f"G_ = {_flat(sig, grads)}"]
        loop += _guard_and_updates(optimizer, dtype, hyper_t, fail, sig)
    loop += [
        # float64, as Numba multiplies a float32 by an int64 (NumPy would keep float32)
        "total += float(loss) * idx.shape[0]" if not jit else f"total += loss * {rows}",
        "steps += 1",
    ]
    body = _bindings(scope.size_vars, sources, loop)
    body += ["total = 0.0  # float64: only the reported epoch mean", "steps = 0"]
    body += ["rows = min(batch_size, perm.shape[0])"]
    body += [f"{i}_batch = np.empty_like({i}_all[:rows])" for i in sig.inputs]
    if written is not None:  # the workspace's buffers, once; checked against every batch
        body += written["unpack"] + written["check"]
    else:  # flat views of the parameters and optimizer buffers, made once for every step
        body.append(f"P_ = {_flat(sig, sig.params)}")
        body += [f"{b}_ = {_flat(sig, sig.state[k::n_state])}" for k, b in enumerate(state_buffers)]
    body += ["for start in range(0, perm.shape[0], batch_size):", *indent(loop, 1)]
    body.append("return total, steps, 0")
    args = [*batches, "perm", "batch_size", *sig.params, *sig.state, *hyper, "t0", "ws"]
    doc = [
        '"""Mini-batch steps in the order of perm; returns (loss sum, steps, status).',
        "",
        "ws: workspace(rows, ...) for rows >= min(batch_size, perm.shape[0]), reused by every",
        "step.",
        '"""',
    ]
    return [
        *([JIT] if jit else []),
        f"def train_epoch({', '.join(args)}):",
        *indent([*doc, *body], 1),
    ]


def forward_kernel(
    graph, outputs: Sequence[str], sig: Signature, dtype: str, stepwise=None
) -> list[str]:
    """``forward``; stepwise, with a workspace (``forward_workspace(n, ...)``): its blocks are
    then the training step's forward blocks, the same step kernels, so evaluate and predict
    compile none of their own."""
    outs = [sig.ident[o] for o in outputs]
    args = [sig.ident[i] for i in forward_inputs(graph, outputs)] + list(sig.params)
    return kernel(
        "forward",
        sig.forward,
        outs,
        args,
        dtype,
        sizes=size_names(sig),
        stepwise=stepwise,
        workspace=stepwise is not None,
        ws_function="forward_workspace",
    )


def training_kernel(
    sig: Signature, dtype: str = "float32", stepwise=None, parts: dict | None = None
) -> list[str]:
    """``workspace(n, ...)`` and the ``loss_and_grads`` kernel: the loss and every gradient."""
    return kernel(
        "loss_and_grads",
        sig.training,
        [sig.loss, *sig.grads],
        [*sig.inputs, *sig.params, *(["draw", "sample_ids"] if sig.draws else [])],
        dtype,
        workspace=True,
        returns=["loss", *(f"dloss/d{p}" for p in sig.params[: sig.trainable])]
        + [f"new {p}" for p in sig.params[sig.trainable :]],
        sizes=size_names(sig),
        stepwise=stepwise,
        parts=parts,
    )


def module_source(
    graph, optimizer=None, dtype: str = "float32", outputs: Sequence[str] = ()
) -> str:
    """The whole kernel module for a graph (and its optimizer) as Python source text."""
    sig = signature(graph, optimizer)
    sizes = size_names(sig)
    lines = header(graph, optimizer, dtype, sizes)
    lines += [""]
    written = {} if small_step.is_small(sig, optimizer) else None
    lines += training_kernel(sig, dtype, parts=written)
    lines += ["", ""] + forward_kernel(graph, outputs or [graph.loss_name], sig, dtype)
    if optimizer is not None:
        lines += ["", ""] + _update_function(optimizer, dtype)
        lines += ["", ""] + _update_all_function(sig, optimizer, dtype)
        lines += ["", ""] + _step_function(sig, optimizer, dtype)
        lines += ["", ""] + _epoch_function(sig, optimizer, dtype, sizes, written=written)
    text = with_helpers("\n".join(lines) + "\n", dtype)  # each defined once, before the kernels
    if "math." in text:  # erf; imported only when used so the module lints clean
        text = text.replace("import numpy as np\n", "import math\n\nimport numpy as np\n", 1)
    return needs(text)


def update_kernels_source(optimizer, dtype: str) -> str:
    """The update kernels stepwise training shares with every model of the same optimizer and
    dtype: ``apply_update``, ``all_finite`` and ``sum_squares``, as in the fused module."""
    lines = ['"""graphnn update kernels (shared by stepwise training)."""', ""]
    lines += ["import numpy as np", "from numba import njit", "", ""]
    if optimizer is not None:
        lines += _update_function(optimizer, dtype) + ["", ""]
    return "\n".join(lines + _array_helpers(dtype)) + "\n"


def stepwise_source(
    graph, optimizer=None, dtype: str = "float32", outputs: Sequence[str] = ()
) -> tuple[str, list[StepKernel]]:
    """The stepwise module: the fused module's functions as plain Python calling one step kernel
    per block (each block's kernel in its own content-addressed module), and the kernels.

    The caller binds each kernel's function to its ``step_<hash>`` name in the module, and
    ``apply_update``/``all_finite``/``sum_squares`` to :func:`update_kernels_source`'s.
    """
    sig = signature(graph, optimizer)
    sizes = size_names(sig)
    kernels: list[StepKernel] = []
    lines = [f'"""graphnn stepwise glue for loss \'{graph.loss_name}\' ({dtype}).', ""]
    lines += ["Each step_<hash> is a compiled step kernel shared across models (see"]
    lines += ["codegen.cpu.stepwise); the functions here only call them in order."]
    lines += ['"""', "", "import numpy as np", "", ""]
    lines += training_kernel(sig, dtype, stepwise=kernels)
    outs = outputs or [graph.loss_name]
    lines += ["", ""] + forward_kernel(graph, outs, sig, dtype, stepwise=kernels)
    if optimizer is not None:
        lines += ["", ""] + _epoch_function(sig, optimizer, dtype, sizes, jit=False)
    unique = list({k.name: k for k in kernels}.values())
    return "\n".join(lines) + "\n", unique

"""CUDA source for each kind of plan step: the CPU's kernel plan, printed as ``@cuda.jit`` kernels.

An emitter returns a :class:`Piece`: the kernels it defines at module level and the host lines
(inside ``loss_and_grads`` / ``forward``) that take its output buffer from the workspace and
launch them.  Values of shape ``()`` live in 1-element device arrays and are read as ``x[0]``.
Elementwise formulas are printed by :mod:`codegen.printer` (``math.*`` calls), loops and
indexing here.

>>> launch_lines("k_y", ["x", "y", "n"], "n * 3")
['k_y[blocks(n * 3), THREADS](x, y, n)']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy

from codegen.contraction import Nest, window_mask, window_max
from codegen.cuda.library import array_type, block_sum
from codegen.plan import Plan, Step
from codegen.printer import print_expr
from codegen.steps import StepEmitter, describe, indent
from graphnn.ir.dropout import MIX_LINES, threshold
from graphnn.ir.elementwise import ARGS, BATCH
from graphnn.ir.graph import GraphIR, Node


@dataclass
class Kernel:
    """One ``@cuda.jit`` kernel: argument names with their Numba types, and its body lines."""

    name: str
    args: list[tuple[str, str]]
    body: list[str]
    comment: list[str] = field(default_factory=list)

    @property
    def signature(self) -> str:
        return "void(" + ", ".join(t for _, t in self.args) + ")"

    def lines(self) -> list[str]:
        head = f"def {self.name}({', '.join(a for a, _ in self.args)}):"
        return [*self.comment, "@cuda.jit(cache=True)", head, *indent(self.body, 1)]


@dataclass
class Piece:
    kernels: list[Kernel]
    host: list[str]


class CudaScope(StepEmitter):
    """Names, types and printing shared by the kernels of one host function."""

    def __init__(self, dtype: str, ir: GraphIR, plan: Plan, taken: set[str], prefix: str):
        super().__init__(dtype, ir, plan)
        self.taken, self.prefix = taken, prefix  # taken: every global name of the module
        self.matmuls: set[tuple[bool, bool]] = set()

    def expr(self, e: sympy.Expr) -> str:
        e = e.xreplace({BATCH: sympy.Symbol("nf")})
        return print_expr(e, dtype=self.dtype, fn_module="math", backend="cuda")

    def value(self, name: str, shape, index: list[str]) -> sympy.Expr:
        node = self.ir.node(name)
        if node.shape == () and node.op != "const":
            return sympy.Symbol(f"{name}[0]")
        return super().value(name, shape, index)

    def inline(self, name: str) -> bool:
        """Scalar constants are printed as literals, never passed."""
        node = self.ir.node(name)
        return node.op == "const" and node.shape == ()

    def array_arg(self, name: str) -> tuple[str, str]:
        return name, array_type(self.dtype, max(1, len(self.ir.node(name).shape)))

    def alloc(self, name: str, shape, key: str | None = None) -> str:
        return f'{name} = ws.array("{key or name}", {dims_text(shape)})'

    def kernel_name(self, node: Node) -> str:
        name, k = f"{self.prefix}_{node.name}", 0
        while name in self.taken:
            k += 1
            name = f"{self.prefix}_{node.name}_{k}"
        self.taken.add(name)
        return name

    def sizes(self, body: list[str]) -> list[tuple[str, str]]:
        """The batch-size arguments a kernel body uses: n (int64) and/or nf (float)."""
        text = "\n".join(body)
        out = [("n", "int64")] if re.search(r"\bn\b", text) else []
        return out + ([("nf", self.dtype)] if re.search(r"\bnf\b", text) else [])


def comment(node: Node) -> str:
    return f"# {node.name} = {describe(node)}"


def dims_text(shape) -> str:
    """A shape as a tuple expression; () is stored as (1,), the batch dimension is n."""
    inner = ", ".join("n" if d is None else str(d) for d in shape) or "1"
    return f"({inner},)" if len(shape) <= 1 else f"({inner})"


def count(dims) -> str:
    """The number of elements of dims as an expression (each batch dimension is n: an
    (n, n) array, e.g. x @ x^T, has n * n)."""
    known = 1
    for d in dims:
        known *= d or 1
    factors = ["n"] * sum(d is None for d in dims)
    return " * ".join(factors + [str(known)] * (known != 1 or not factors))


def unravel(flat: str, names: list[str], dims) -> list[str]:
    """Lines splitting the row-major flat index into one index per dim (a None dim is n: the
    batch axis need not lead, e.g. a (batch,) input broadcast against a (3, 1) parameter)."""
    lines = []
    for j, name in enumerate(names):
        stride = count(dims[j + 1 :])
        stride = stride if stride.isdigit() else f"({stride})"
        value = flat if stride == "1" else f"{flat} // {stride}"
        size = "n" if dims[j] is None else dims[j]
        lines.append(f"{name} = {value}" if j == 0 else f"{name} = {value} % {size}")
    return lines


def launch_lines(kernel: str, args: list[str], total: str | None) -> list[str]:
    config = f"blocks({total}), THREADS" if total else "1, 1"
    return [f"{kernel}[{config}]({', '.join(args)})"]


def grid_stride(shape, body: list[str]) -> list[str]:
    """body once per element of shape, spread over every thread of the grid."""
    if not shape:
        return body
    index = [f"i{k}" for k in range(len(shape))]
    head = f"for k in range(cuda.grid(1), {count(shape)}, cuda.gridsize(1)):"
    return [head, *indent(unravel("k", index, shape) + body, 1)]


class CudaSteps(CudaScope):
    """``@cuda.jit`` kernels and host lines of each kind of plan step: an ``emit_<kind>`` each."""

    backend = "cuda"

    def _kernel(self, step: Step, reads, writes, body, total_shape) -> Piece:
        args = [self.array_arg(x) for x in [*reads, *writes]] + self.sizes(body)
        name = self.kernel_name(step.nodes[-1])
        comments = [comment(n) for n in step.nodes]
        kernel = Kernel(name, args, body, comments)
        host = comments + [self.alloc(w, self.ir.node(w).shape) for w in writes]
        total = count(total_shape) if total_shape else None
        return Piece([kernel], host + launch_lines(name, [a for a, _ in args], total))

    def emit_group(self, step: Step) -> Piece:
        """One thread per element computes the whole fused chain; stored members go to arrays."""
        shape = step.shape
        index = [f"i{k}" for k in range(len(shape))]
        at = f"[{', '.join(index)}]" if shape else "[0]"
        members = {n.name for n in step.nodes}
        stored = [n.name for n in step.nodes if n.name in self.plan.stored]
        read_in_group = {i for n in step.nodes for i in n.inputs if i in members}
        local = {n.name: f"{n.name}_v" if n.name in stored else n.name for n in step.nodes}
        reads: dict[str, None] = {}
        body: list[str] = []
        for node in step.nodes:
            subs = {}
            for k, i in enumerate(node.inputs):
                if i in members:
                    subs[ARGS[k]] = sympy.Symbol(local[i])
                else:
                    subs[ARGS[k]] = self.value(i, shape, index)
                    if not self.inline(i):
                        reads[i] = None
            text = self.expr(node.attr("expr").xreplace(subs))
            if node.name not in stored:
                body.append(f"{node.name} = {text}")
            elif node.name in read_in_group:
                body += [f"{local[node.name]} = {text}", f"{node.name}{at} = {local[node.name]}"]
            else:
                body.append(f"{node.name}{at} = {text}")
        return self._kernel(step, list(reads), stored, grid_stride(shape, body), shape)

    def emit_const(self, step: Step) -> Piece:
        node = step.node
        index = [f"i{k}" for k in range(len(node.shape))]
        at = f"[{', '.join(index)}]" if node.shape else "[0]"
        value = self.expr(sympy.sympify(node.attr("value")))
        body = grid_stride(node.shape, [f"{node.name}{at} = {value}"])
        return self._kernel(step, [], [node.name], body, node.shape)

    def emit_matmul(self, step: Step) -> Piece:
        node = step.node
        ta, tb = bool(node.attr("ta")), bool(node.attr("tb"))
        self.matmuls.add((ta, tb))
        rows, cols = (count([d]) for d in node.shape)
        kernel = "matmul_" + ("t" if ta else "n") + ("t" if tb else "n")
        a, b = node.inputs
        host = [comment(node), self.alloc(node.name, node.shape)]
        host.append(f"{kernel}[tiles({rows}, {cols}), (TILE, TILE)]({a}, {b}, {node.name})")
        return Piece([], host)

    def emit_reduce_sum(self, step: Step) -> Piece:
        """One block per output element (grid-stride over outputs); its threads stride over the
        summed elements and combine their partial sums in a shared-memory tree."""
        node = step.node
        (x,) = node.inputs
        src = self.ir.node(x).shape
        axes, keep = node.attr("axes"), node.attr("keepdims")
        index = [f"i{k}" for k in range(len(src))]
        kept = [k for k in range(len(src)) if k not in axes]
        out = [("0" if keep else None) if k in axes else i for k, i in enumerate(index)]
        out = [i for i in out if i is not None] or ["0"]
        summed = [src[k] for k in axes]
        loop = [f"for r in range(tid, {count(summed)}, REDUCE_THREADS):"]
        loop += indent(unravel("r", [index[k] for k in axes], summed), 1)
        loop += [f"    acc += {x}[{', '.join(index)}]"]
        per_output = unravel("o", [index[k] for k in kept], [src[k] for k in kept])
        per_output += [f"acc = {self.literal(0)}", *loop, *block_sum("acc", "total")]
        per_output += ["if tid == 0:", f"    {node.name}[{', '.join(out)}] = total"]
        n_out = count([src[k] for k in kept])
        body = [
            f"part = cuda.shared.array(REDUCE_THREADS, np.{self.dtype})",
            "tid = cuda.threadIdx.x",
            f"for {'o' if kept else '_'} in range(cuda.blockIdx.x, {n_out}, cuda.gridDim.x):"
            "  # one block per output",
            *indent(per_output, 1),
        ]
        args = [self.array_arg(x), self.array_arg(node.name), *self.sizes(body)]
        name = self.kernel_name(node)
        config = f"min({n_out}, MAX_BLOCKS), REDUCE_THREADS"
        host = [comment(node), self.alloc(node.name, node.shape)]
        host.append(f"{name}[{config}]({', '.join(a for a, _ in args)})")
        return Piece([Kernel(name, args, body, [comment(node)])], host)

    def _per_element(self, step: Step, names: list[str], shape, body: list[str]) -> Piece:
        """One thread per element of shape (grid-stride), its indices named ``names``."""
        node = step.node
        head = f"for k in range(cuda.grid(1), {count(shape)}, cuda.gridsize(1)):"
        loop = [head, *indent(unravel("k", names, shape) + body, 1)]
        return self._kernel(step, list(dict.fromkeys(node.inputs)), [node.name], loop, shape)

    def emit_contract(self, step: Step) -> Piece:
        """One thread per output element sums its products (:class:`codegen.contraction.Nest`:
        bounds-checked reads, output maps inverted: no atomics)."""
        node = step.node
        attrs = {k: node.attr(k) for k in ("sizes", "maps", "out")}
        shapes = [self.ir.node(i).shape for i in node.inputs]
        nest = Nest(attrs, node.inputs, shapes, self.dim, self.literal(0))
        return self._per_element(step, nest.out_vars, node.shape, nest.body(node.name))

    def emit_max_pool(self, step: Step) -> Piece:
        node = step.node
        (x,) = node.inputs
        scan = window_max(dict(node.attrs), x, self.ir.node(x).shape, self.dim, self.dtype)
        body = scan + [f"{node.name}[_b, _i, _j, _c] = acc"]
        return self._per_element(step, ["_b", "_i", "_j", "_c"], node.shape, body)

    def emit_max_pool_mask(self, step: Step) -> Piece:
        node = step.node
        (x,) = node.inputs
        scan = window_max(dict(node.attrs), x, self.ir.node(x).shape, self.dim, self.dtype)
        body = scan + window_mask(dict(node.attrs), node.name, self.literal(1), self.literal(0))
        b, oh, ow, _, _, c = node.shape
        return self._per_element(step, ["_b", "_i", "_j", "_c"], (b, oh, ow, c), body)

    def emit_running(self, step: Step) -> Piece:
        """A running statistic: the batch's value while training, the state in the eval form
        (graphnn.ir.batch_norm); the training step assigns the state afterwards."""
        node = step.node
        batch, state = node.inputs
        if self.eval_form:
            note = comment(node) + "  (eval form: the running statistic)"
            return Piece([], [note, f"{node.name} = {state}"])
        note = comment(node) + "  (training form: the batch statistic)"
        return Piece([], [note, f"{node.name} = {batch}"])

    def emit_dropout(self, step: Step) -> Piece:
        """One thread per element; element j of row i0 (row-major within the row, as the CPU
        counts) is kept when its hash, from (seed, draw, the row's sample id, j), clears the
        rate's threshold (graphnn.ir.dropout); the eval form is the identity."""
        node = step.node
        (x,) = node.inputs
        if self.draw_arg is None:
            note = comment(node) + "  (eval form: the identity)"
            return Piece([], [note, f"{node.name} = {x}"])
        rate, seed = node.attr("rate"), node.attr("seed")
        mix = [line.replace("return ", "h = ") for line in MIX_LINES]
        index = [f"i{k}" for k in range(len(node.shape))]
        at = f"[{', '.join(index)}]"
        row = count(node.shape[1:]) if len(node.shape) > 1 else "1"
        body = [f"h = {seed}", *mix, f"h = h ^ {self.draw_arg}", *mix, "key = h"]
        loop = [
            "h = key ^ (sample_ids[i0] & 0xFFFFFFFF)  # the row's sample",
            *mix,
            f"h = h ^ (k - i0 * {row})  # the element's row-major index within its row",
            *mix,
            f"if h >= {threshold(rate)}:",
            f"    {node.name}{at} = {x}{at} * {self.literal(1 / (1 - rate))}",
            "else:",
            f"    {node.name}{at} = {self.literal(0)}",
        ]
        body += grid_stride(node.shape, loop)
        args = [self.array_arg(x), self.array_arg(node.name), (self.draw_arg, "int64")]
        args += [("sample_ids", "int64[::1]")] + self.sizes(body)
        name = self.kernel_name(node)
        host = [comment(node), self.alloc(node.name, node.shape)]
        host += launch_lines(name, [a for a, _ in args], count(node.shape))
        return Piece([Kernel(name, args, body, [comment(node)])], host)

    def emit_one_hot(self, step: Step) -> Piece:
        """One thread per element: 1 at the id, 0 elsewhere, NaN for an id that is not a whole
        number in [0, depth)."""
        node = step.node
        (ids,) = node.inputs
        names = [f"i{k}" for k in range(len(node.shape) - 1)] + ["j"]
        at = ", ".join(names[:-1])
        depth = self.dim(node.shape[-1])
        body = [
            f"v = {ids}[{at}]",
            f"if v >= 0 and v < {depth} and v == math.floor(v):",
            f"    {node.name}[{at}, j] = {self.literal(1)} if v == j else {self.literal(0)}",
            "else:",
            f"    {node.name}[{at}, j] = np.{self.dtype}(math.nan)",
        ]
        return self._per_element(step, names, node.shape, body)

    def emit_reshape(self, step: Step) -> Piece:
        node = step.node
        reshape = f"{node.name} = {node.inputs[0]}.reshape({dims_text(node.shape)})"
        return Piece([], [comment(node), reshape])

    def _row_stats(self, z: str, k: str) -> list[str]:
        """Lines computing the row max ``m`` and ``s = sum(exp(z - m))`` of row i0 of z."""
        return [
            f"m = {z}[i0, 0]",
            f"for j in range(1, {k}):",
            f"    m = max(m, {z}[i0, j])",
            f"s = {self.literal(0)}",
            f"for j in range({k}):",
            f"    s += math.exp({z}[i0, j] - m)",
        ]

    def emit_softmax(self, step: Step) -> Piece:
        node = step.node
        (z,), k = node.inputs, count(node.shape[-1:])  # the classes may be the batch: n
        body = self._row_stats(z, k) + [
            f"for j in range({k}):",
            f"    {node.name}[i0, j] = math.exp({z}[i0, j] - m) / s",
        ]
        return self._rows_kernel(step, [z], [node.name], body, node.shape[0])

    def emit_softmax_grad(self, step: Step) -> Piece:
        node = step.node
        (y, g), k = node.inputs, count(node.shape[-1:])
        body = [
            f"d = {self.literal(0)}",
            f"for j in range({k}):",
            f"    d += {g}[i0, j] * {y}[i0, j]",
            f"for j in range({k}):",
            f"    {node.name}[i0, j] = {y}[i0, j] * ({g}[i0, j] - d)",
        ]
        return self._rows_kernel(step, [y, g], [node.name], body, node.shape[0])

    def _rows_kernel(self, step, reads, writes, body, rows_dim, extra=()) -> Piece:
        rows = count([rows_dim])
        loop = [f"for i0 in range(cuda.grid(1), {rows}, cuda.gridsize(1)):  # one thread per row"]
        body = loop + indent(body, 1)
        args = [self.array_arg(x) for x in [*reads, *writes]] + list(extra) + self.sizes(body)
        name = self.kernel_name(step.nodes[-1])
        comments = [comment(n) for n in step.nodes]
        host = comments + [self.alloc(w, self.ir.node(w).shape) for w in writes]
        host += launch_lines(name, [a for a, _ in args], rows)
        return Piece([Kernel(name, args, body, comments)], host)

    def _partner(self, step: Step, op: str) -> Node | None:
        for other in self.plan.steps:
            if other.kind == op and other.node.inputs == step.node.inputs:
                return other.node
        return None

    def emit_softmax_ce(self, step: Step) -> Piece:
        """Per-row losses (and the gradient rows, when the plan needs them) in one pass, then the
        mean of the row losses in one block."""
        node = step.node
        if node.name in self.done:
            return Piece([], [])
        loss, grad = node, self._partner(step, "softmax_ce_grad")
        if node.op == "softmax_ce_grad":
            loss, grad = self._partner(step, "softmax_ce"), node
        z, t = node.inputs
        rows_dim, classes = self.ir.node(z).shape
        k = count([classes])
        # the mean over the logits' rows: the batch only when they have a batch axis
        denominator = "nf" if rows_dim is None else self.literal(rows_dim)
        body = self._row_stats(z, k)
        # tsum = sum(t): the general -sum(t log softmax(z)), also for rows that do not sum to 1
        body += [f"tsum = {self.literal(0)}", f"for j in range({k}):", f"    tsum += {t}[i0, j]"]
        extra = []
        if loss is not None:
            extra = [("rows", array_type(self.dtype, 1))]
            body += [
                f"d = {self.literal(0)}",
                f"for j in range({k}):",
                f"    d += {t}[i0, j] * {z}[i0, j]",
            ]
            body += ["rows[i0] = tsum * (m + math.log(s)) - d"]
        if grad is not None:
            p = f"math.exp({z}[i0, j] - m) / s"
            body += [
                f"for j in range({k}):",
                f"    {grad.name}[i0, j] = ({p} * tsum - {t}[i0, j]) / {denominator}",
            ]
        self.done.update(n.name for n in (loss, grad) if n is not None)
        parts = Step(step.kind, [n for n in (loss, grad) if n is not None])
        writes = [grad.name] if grad is not None else []
        piece = self._rows_kernel(parts, [z, t], writes, body, rows_dim, extra)
        if loss is None:
            return piece
        rows = count([rows_dim])
        head = [self.alloc("rows", (rows_dim,), f"{loss.name}/rows")]
        launch = f"batch_mean[1, REDUCE_THREADS](rows, {loss.name}, {rows}, {denominator})"
        host = piece.host[:-1] + head + [piece.host[-1], self.alloc(loss.name, ()), launch]
        return Piece(piece.kernels, host)

    emit_softmax_ce_grad = emit_softmax_ce

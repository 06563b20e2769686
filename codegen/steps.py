"""What every back end's step emitters share: the :class:`Scope` of one kernel (names, printing,
workspace buffers), loop and indentation helpers, and the comment that names each block's node.

A back end's ``steps.py`` turns each kind of plan step into source lines using these; the module
text around them (header, return line) comes from here too, so every back end reads alike.

>>> Scope("float32").literal(0.5)
'np.float32(0.5)'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sympy

from codegen.plan import Plan
from codegen.printer import print_expr
from graphnn.derive.contraction import text as contraction_text
from graphnn.errors import CodegenError
from graphnn.ir.elementwise import BATCH
from graphnn.ir.graph import GraphIR, Node
from graphnn.ir.shapes import show


class Scope:
    """Names and printing shared by the emitters of one kernel."""

    def __init__(
        self,
        dtype: str,
        ir: GraphIR | None = None,
        plan: Plan | None = None,
        fast_tanh=False,
        workspace=False,
        sizes=None,
    ):
        self.dtype, self.ir, self.plan = dtype, ir, plan
        # size -> the variable holding it (``dim2``, read from an array's shape): printed in
        # place of the size, so the text serves every model whose sizes follow the same pattern
        self.size_vars: dict[int, str] = dict(sizes or {})
        self.fast_tanh = fast_tanh  # print tanh as codegen.cpu.approx.tanh_r
        self.draw_arg: str | None = None  # dropout's draw argument; None: the eval form
        self.eval_form = False  # prediction/evaluation: running statistics read their state
        self.done: set[str] = set()  # steps already emitted by a fused neighbour
        # im2col patches gathered so far in this kernel: (image, window) -> the array holding them
        self.gathered: dict[tuple, str] = {}
        # With a workspace, arrays are views of buffers the caller allocated once (name -> shape)
        # instead of new allocations: a step then allocates nothing.
        self.buffers: dict[str, tuple] | None = {} if workspace else None

    def literal(self, value) -> str:
        return f"np.{self.dtype}({float(value)!r})"

    def expr(self, e: sympy.Expr) -> str:
        e = e.xreplace({BATCH: sympy.Symbol("nf")})
        return print_expr(e, dtype=self.dtype, fast_tanh=self.fast_tanh)

    def dim(self, d) -> str:
        """How the code spells one size: ``n`` (the batch), its variable, or the number."""
        return "n" if d is None else self.size_vars.get(d, str(d))

    def count(self, d: int) -> str:
        """A size as a number of the kernel's float type (a mean's divisor)."""
        var = self.size_vars.get(d)
        return f"np.{self.dtype}({var})" if var else self.literal(d)

    def dims(self, shape) -> str:
        inner = ", ".join(self.dim(d) for d in shape)
        return f"({inner},)" if len(shape) == 1 else f"({inner})"

    def empty(self, name: str, shape, fill: str = "empty") -> list[str]:
        """Lines making array ``name`` (uninitialized, or zeros); a scalar for shape ()."""
        if fill == "zeros" and not shape:
            return [f"{name} = {self.literal(0)}"]
        view = self.buffer(name, shape)
        if view is None:
            return [f"{name} = np.{fill}({self.dims(shape)}, dtype=np.{self.dtype})"]
        if fill != "zeros":
            return [f"{name} = {view}"]
        # zeroed by a loop, not ``name[:] = 0``: Numba's slice assignment costs about 5 ns a
        # call, most of a small model's step when it zeroes a bias gradient of one element
        index = [f"z{k}" for k in range(len(shape))]
        zero = loop_header(shape, index, self) + indent(
            [f"{name}[{', '.join(index)}] = {self.literal(0)}"], len(shape)
        )
        return [f"{name} = {view}", *zero]

    def buffer(self, name: str, shape) -> str | None:
        """The workspace view holding array ``name`` (None: no workspace, or not a leading batch).

        Buffers are sized for the largest batch; ``[:n]`` is the current batch's leading part.
        """
        if self.buffers is None or not shape or None in shape[1:]:
            return None
        self.buffers[name] = tuple(shape)
        return f"ws_{name}[:n]" if shape[0] is None else f"ws_{name}"

    def value(self, name: str, shape, index: list[str]) -> sympy.Expr:
        """The element of node ``name`` at loop ``index`` of a loop over ``shape``."""
        node = self.ir.node(name)
        if node.op == "const" and (node.shape == () or name in self.plan.inlined):
            return sympy.sympify(node.attr("value"))  # uniform: the same literal everywhere
        if not node.shape:
            return sympy.Symbol(name)
        lead = len(shape) - len(node.shape)
        idx = [
            "0" if d == 1 and shape[lead + j] != 1 else index[lead + j]
            for j, d in enumerate(node.shape)
        ]
        return sympy.Symbol(f"{name}[{', '.join(idx)}]")


def extent(d: int | None) -> str:
    """The size of one dimension as the generated code reads it (the batch dimension is n)."""
    return "n" if d is None else str(d)


class StepEmitter(Scope):
    """A back end's emitters: ``emit_<kind>`` methods, one per kind of plan step (the SymPy
    printers' ``_print_<Class>`` pattern).  A kind with no method fails here, naming it."""

    backend = "?"

    def emit(self, step):
        method = getattr(self, f"emit_{step.kind}", None)
        if method is None:
            raise CodegenError(
                f"the {self.backend} back end has no emitter for op '{step.kind}' "
                f"(node '{step.node.name}')"
            )
        return method(step)


def loop_header(shape, index: list[str], scope: Scope | None = None) -> list[str]:
    """Nested ``for`` lines over shape; the caller indents the body by len(shape) levels.
    With ``scope``, sizes it holds in variables are spelled by them (:meth:`Scope.dim`)."""
    dim = scope.dim if scope is not None else extent
    return [
        "    " * k + f"for {i} in range({dim(d)}):"
        for k, (i, d) in enumerate(zip(index, shape, strict=True))
    ]


def drop_unused_sizes(lines: list[str]) -> list[str]:
    """Drop ``nf = ...``, then ``n = ...``, when no other line reads the name (a function with no
    mean has no use for nf; one that reads no input, none for n): the module then lints clean."""
    for name in ("nf", "n"):
        head = f"{name} = "
        others = [ln for ln in lines if not ln.strip().startswith(head)]
        if not any(re.search(rf"\b{name}\b", ln) for ln in others):
            lines = others
    return lines


def indent(lines: list[str], levels: int) -> list[str]:
    return ["    " * levels + line if line else "" for line in lines]


def describe(node: Node) -> str:
    """The node as a short formula over its input node names, for comments."""
    ins = list(node.inputs)
    if node.op == "matmul":
        a = ins[0] + ("^T" if node.attr("ta") else "")
        b = ins[1] + ("^T" if node.attr("tb") else "")
        return f"{a} @ {b}"
    if node.op == "reduce_sum":
        return f"sum({ins[0]}, axes={node.attr('axes')})"
    if node.op == "const":
        return str(node.attr("value"))
    if node.op == "contract":
        return contraction_text(dict(node.attrs), ins)
    fn = node.attr("fn", node.op)
    return f"{fn}({', '.join(ins)})"


def comment(node: Node) -> str:
    return f"# {node.name} = {describe(node)}"


def returned(outputs: Sequence[str], returns: Sequence[str], tuple_of_one=False) -> list[str]:
    """The return line, with a comment naming what each value is when that is not its name."""
    line = "return " + ", ".join(outputs) + ("," if tuple_of_one and len(outputs) == 1 else "")
    if returns and list(returns) != list(outputs):
        line += f"  # {', '.join(returns)}"
    return [line]


NEEDS_NUMBA = "needs only numpy and numba"
NEEDS_SCIPY = "needs numpy, numba and SciPy (Numba computes np.dot with SciPy's BLAS)"


def needs(text: str) -> str:
    """The module text with its header naming SciPy too when its code calls np.dot."""
    return text.replace(NEEDS_NUMBA, NEEDS_SCIPY, 1) if "np.dot(" in text else text


def header(graph, optimizer, dtype: str, sizes=None) -> list[str]:
    """The module docstring; with ``sizes`` (size -> variable) shapes are shown in those names."""
    lines = [f'"""graphnn kernels for loss \'{graph.loss_name}\' ({dtype}).', ""]
    leaves = graph.forward.inputs + graph.forward.params
    if sizes:
        lines += [f"Generated by graphnn; {NEEDS_NUMBA}."]
        lines += [
            "Shapes (dim<k> is read from the arrays: the module serves any sizes in this pattern):"
        ]
        scope = Scope(dtype, sizes=sizes)
        shown = {n.name: scope.dims(n.shape).replace("(n,", "(batch,") for n in leaves}
        lines += [f"    {name}: {shape}" for name, shape in shown.items()]
    else:
        lines += [f"Generated by graphnn; {NEEDS_NUMBA}. Shapes:"]
        lines += [f"    {n.name}: {show(n.shape)}" for n in leaves]
    lines += ["", "Gradients (matrix form; n is the batch size):"]
    lines += [f"    dL/d{p} = {graph.gradient(p)}" for p in graph.param_names]
    if optimizer is not None:
        lines += ["", f"Optimizer: {optimizer.name}"]
    return lines + ['"""', "", "import numpy as np", "from numba import njit", ""]

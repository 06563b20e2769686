"""Gradient inspection: why each gradient is what it is, and the code that computes it.

``explain(graph, param)`` gathers, for one parameter: the gradient in matrix form (text and
LaTeX, the formula the kernels run); the chain rule step by step (the δ at each node from the loss
down, and each consumer's local derivative); the elementwise derivative forms the stability
screen chose and why; and the lines of the generated kernel that compute it.  ``report`` does so
for every parameter, as Markdown or self-contained HTML; ``to_dot``/``render_png`` draw the graph
and its gradient flow; ``stability_audit`` probes every derivative at extreme float32 inputs.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> e = explain(gn.Graph(gn.mse(gn.sigmoid(x @ W), t)), "W")
>>> print(e.steps[-1].formula)
x^T δ(matmul1)
>>> [(f.node, f.derivative.form, f.expr) for f in e.forms]
[('power1', 'input', 2*sub1), ('sigmoid1', 'output', -sigmoid1*(sigmoid1 - 1))]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from codegen.cpu.module import training_kernel
from codegen.signature import signature
from graphnn.derive.formula import Formula
from graphnn.derive.formula import show as show_expr
from graphnn.derive.readable import readable
from graphnn.derive.screen import PREFERENCE, SCREEN_POINTS, Derivative, rank
from graphnn.inspect.chain import Local, Step, backward_nodes, chain
from graphnn.ir.elementwise import BATCH
from graphnn.ir.shapes import show

__all__ = ["Explanation", "KernelBlock", "explain", "kernel_blocks", "why"]

KERNEL = "loss_and_grads"
_COMMENT = re.compile(r"\s*# (\w+) = ")
_WHY = {
    "output": "it reads the op's stored output Y, so the input need not be kept",
    "input": "it is sympy.diff's own form",
    "sigmoid": "its exponentials go through the bounded sigmoid",
    "simplified": "it is shorter",
}


@dataclass(frozen=True)
class KernelBlock:
    """One comment-delimited block of the generated kernel; ``nodes`` as the comments name them."""

    nodes: tuple[str, ...]
    lines: tuple[str, ...]  # verbatim, with the kernel's indentation

    def text(self) -> str:
        return "\n".join(line[4:] if line.startswith("    ") else line for line in self.lines)


@dataclass(frozen=True)
class Explanation:
    """dLoss/d(param): formula, chain of δ, derivative forms and kernel lines."""

    param: str
    shape: tuple
    formula: Formula
    steps: tuple[Step, ...]
    blocks: tuple[KernelBlock, ...]
    backprop: object = None  # the gradient with its shared δ named (graph.backprop([param]))

    @property
    def forms(self) -> list[Local]:
        """The non-constant elementwise derivatives on the path (one per consumer and input)."""
        return [
            loc
            for s in self.steps
            for loc in s.locals
            if loc.derivative is not None and loc.expr.free_symbols - {BATCH}
        ]

    def text(self) -> str:
        out = [f"dL/d{self.param}  ({self.param}: {show(self.shape)}; n is the batch size)"]
        out += [f"  = {self.formula}", f"  LaTeX: {self.formula.latex()}", ""]
        if self.backprop is not None and self.backprop.deltas:  # a deep chain, textbook style
            out += ["With the shared δ named (δ1 nearest the inputs):"]
            out += ["  " + line for line in self.backprop.text().splitlines()] + [""]
        out += [f"Chain rule, from the loss down to {self.param} (δ(v) = dL/dv):"]
        for s in self.steps:
            held = f"held in {s.delta}" if s.delta else s.holder()
            out.append(f"  δ({s.node}) = {s.formula}    [{held}]")
            out += [f"      {loc.equation}: {loc.rule}" for loc in s.locals]
        out += ["", f"Elementwise derivative forms (float32 screen at {_points()}):"]
        for loc in self.forms:
            out += ["  " + line for line in _form_text(loc)]
        if not self.forms:
            out.append("  (none: only structural rules and constant derivatives on this path)")
        out += ["", f"Generated kernel lines ({KERNEL} in g.source(backend='cpu')):"]
        for b in self.blocks:
            out += ["    " + line if line else "" for line in b.text().splitlines()] + [""]
        return "\n".join(out).rstrip() + "\n"

    __str__ = text

    def markdown(self, level: int = 2) -> str:
        h = "#" * level
        out = [
            f"{h} dL/d{self.param}",
            "",
            f"`{self.param}`: {show(self.shape)}; n is the batch size.",
        ]
        out += ["", f"$$\n{self.formula.latex()}\n$$", "", "```text", str(self.formula), "```", ""]
        out += [f"{h}# Chain rule (δ(v) = dL/dv), from the loss down", ""]
        out += ["| node | δ | held in | local rule |", "|---|---|---|---|"]
        for s in self.steps:
            rules = "<br>".join(f"`{_cell(loc.equation)}`: {_cell(loc.rule)}" for loc in s.locals)
            held = f"`{s.delta}`" if s.delta else s.holder()
            out.append(f"| `{s.node}` | `{_cell(str(s.formula))}` | {held} | {rules} |")
        out += ["", f"{h}# Elementwise derivative forms", ""]
        out += [f"Each candidate evaluated in float32 at {_points()} against 50 digits.", ""]
        for loc in self.forms:
            out += _form_markdown(loc)
        out += [f"{h}# Generated kernel lines (`{KERNEL}`)", "", "```python"]
        out += ["\n\n".join(b.text() for b in self.blocks), "```", ""]
        return "\n".join(out)

    def _repr_markdown_(self) -> str:
        return self.markdown()


def explain(graph, param: str, source: str | None = None) -> Explanation:
    """dLoss/d(param) explained; ``source`` is the generated module if already at hand."""
    graph._param(param)
    sig = signature(graph, None)
    text = source if source is not None else "\n".join(training_kernel(sig))
    ident = sig.ident
    wanted = {ident[n] for n in backward_nodes(graph, param)}
    blocks = tuple(b for b in kernel_blocks(text) if wanted & set(b.nodes))
    shape = graph.forward.node(param).shape
    steps = tuple(chain(graph, param))
    return Explanation(param, shape, graph.gradient(param), steps, blocks, graph.backprop([param]))


def kernel_blocks(source: str, function: str = KERNEL) -> list[KernelBlock]:
    """The blocks of ``function`` in a generated module: from a node comment to a blank line."""
    lines = source.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"def {function}("))
    chunks: list[list[str]] = [[]]
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        chunks.append([]) if not line.strip() else chunks[-1].append(line)
    blocks = []
    for chunk in chunks:
        first = next((k for k, line in enumerate(chunk) if _COMMENT.match(line)), None)
        if first is not None:
            body = tuple(chunk[first:])
            names = tuple(m.group(1) for line in body if (m := _COMMENT.match(line)))
            blocks.append(KernelBlock(names, body))
    return blocks


def why(d: Derivative) -> list[str]:
    """One line per rejected candidate: the first screen criterion on which it lost."""
    best = next(c for c in d.candidates if c.form == d.form)
    out = []
    for c in sorted(d.candidates, key=rank):
        if c is best:
            continue
        if len(c.nonfinite) != len(best.nonfinite):
            out.append(f"{c.form} rejected: NaN/Inf at {_pts(c.nonfinite)}")
        elif len(c.inaccurate) != len(best.inaccurate):
            out.append(f"{c.form} rejected: precision lost at {_pts(c.inaccurate)}")
        elif PREFERENCE[c.form] != PREFERENCE[best.form]:
            out.append(f"{c.form} as good; {best.form} preferred: {_WHY[best.form]}")
        else:
            out.append(f"{c.form} as good but longer")
    if not out:
        out.append("the only candidate form")
    return out


def _form_text(loc: Local) -> list[str]:
    d = loc.derivative
    shown = show_expr(readable(loc.expr))  # simplified for reading; the kernel's form is below
    out = [f"∂{loc.node}/∂{loc.wrt} ({loc.equation}): chosen form '{d.form}' = {shown}"]
    for c in d.candidates:
        mark = "*" if c.form == d.form else " "
        bad = [f"NaN/Inf at {_pts(c.nonfinite)}"] if c.nonfinite else []
        bad += [f"precision lost at {_pts(c.inaccurate)}"] if c.inaccurate else []
        verdict = "; ".join(bad) or "finite and accurate"
        out.append(f"  {mark} {c.form:<10} {show_expr(loc.named(c.expr))}    {verdict}")
    out += [f"    why: {line}" for line in why(d)]
    return out


def _form_markdown(loc: Local) -> list[str]:
    d = loc.derivative
    shown = _cell(show_expr(readable(loc.expr)))
    out = [f"**∂{loc.node}/∂{loc.wrt}** (`{_cell(loc.equation)}`): chosen form *{d.form}*"]
    out += [f"= `{shown}`", ""]
    out += ["| form | expression | NaN/Inf at | precision lost at |", "|---|---|---|---|"]
    for c in d.candidates:
        form = f"**{c.form}** (chosen)" if c.form == d.form else c.form
        expr = _cell(show_expr(loc.named(c.expr)))
        out.append(f"| {form} | `{expr}` | {_pts(c.nonfinite)} | {_pts(c.inaccurate)} |")
    return out + [""] + [f"- {line}" for line in why(d)] + [""]


def _points() -> str:
    return ", ".join(f"{p:g}" for p in SCREEN_POINTS)


def _pts(points) -> str:
    return ", ".join(f"{p:g}" for p in points) if points else "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

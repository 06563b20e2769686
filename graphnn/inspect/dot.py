"""The graph and its gradient flow as Graphviz DOT, and as a PNG when Graphviz is installed.

Forward nodes are black (inputs as ellipses, parameters as filled boxes, the loss as a double
octagon), labelled with name, op and shape.  Backward nodes and the edges between them are
dashed red, labelled with the δ they hold; the loss seeds the backward pass (δ = 1), and each
gradient node points at its parameter with a bold red ``dL/dW`` edge.  Forward values that
backward nodes read are dotted grey edges that do not affect the layout.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); t = gn.input("t", (2,)); W = gn.param("W", (3, 2))
>>> print(to_dot(gn.Graph(gn.softmax_cross_entropy(x @ W, t))).splitlines()[0])
digraph graphnn {
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from graphnn.errors import GraphnnError
from graphnn.inspect.chain import cotangent_nodes
from graphnn.ir.shapes import show

INSTALL_HINT = (
    "Graphviz is not installed: the 'dot' program was not found on PATH. Install it with your "
    "system's package manager: 'apt-get install graphviz' (Debian/Ubuntu), 'dnf install "
    "graphviz' (Fedora), 'brew install graphviz' (macOS) or 'conda install graphviz'. Note that "
    "'pip install graphviz' installs only the Python bindings, not the 'dot' binary. "
    "Without it, write the DOT text (graphnn.inspect.dot.to_dot) and render it elsewhere."
)

_SHAPES = {"input": "ellipse", "param": "box", "const": "plaintext"}
_FORWARD_EDGE = "[color=black]"
_BACKWARD_EDGE = '[color=red, style=dashed, fontcolor=red, fontsize=9, label="{}"]'
_READ_EDGE = "[color=gray60, style=dotted, arrowsize=0.5, constraint=false]"
_GRAD_EDGE = '[color=red, style=bold, fontcolor=red, label="dL/d{}", constraint=false]'


class GraphvizError(GraphnnError, RuntimeError):
    """Graphviz's ``dot`` is missing or failed to render."""


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _op(node) -> str:
    return str(node.attr("fn", node.op))


def to_dot(graph, forward_only: bool = False) -> str:
    """Graphviz DOT text of the forward graph and the gradient flow of every parameter;
    ``forward_only``: the forward graph alone (a deep net's gradient edges cross everywhere)."""
    fwd, training = graph.forward, graph.training
    forward = set(fwd.by_name)
    deltas = cotangent_nodes(graph).items()
    held = {d: v for v, d in deltas if isinstance(d, str) and d not in forward}
    lines = ["digraph graphnn {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];']
    lines.append('  edge [fontname="Helvetica"];')
    for n in fwd.nodes:
        shape = "doubleoctagon" if n.name == graph.loss_name else _SHAPES.get(n.op, "box")
        style = ', style=filled, fillcolor="#dbe9ff"' if n.op == "param" else ""
        label = f"{n.name}\n{_op(n)} {show(n.shape)}"
        lines.append(f"  {_q(n.name)} [label={_q(label)}, shape={shape}{style}];")
    for n in fwd.nodes:
        lines += [f"  {_q(i)} -> {_q(n.name)} {_FORWARD_EDGE};" for i in n.inputs]
    if forward_only:
        return "\n".join(lines + ["}"]) + "\n"
    backward = [n for n in training.nodes if n.name not in forward]
    for n in backward:
        delta = f"\nδ({held[n.name]})" if n.name in held else ""
        label = f"{n.name}\n{_op(n)} {show(n.shape)}{delta}"
        lines.append(
            f"  {_q(n.name)} [label={_q(label)}, shape=box, color=red, fontcolor=red, "
            "style=dashed];"
        )
    for n in backward:
        for i in n.inputs:
            edge = _READ_EDGE if i in forward else _BACKWARD_EDGE.format("")
            lines.append(f"  {_q(i)} -> {_q(n.name)} {edge};")
        if not any(i not in forward for i in n.inputs):  # a first step of the backward pass
            lines.append(f"  {_q(graph.loss_name)} -> {_q(n.name)} {_BACKWARD_EDGE.format('δ=1')};")
    for p, g in graph.grad_names.items():
        lines.append(f"  {_q(g)} -> {_q(p)} {_GRAD_EDGE.format(p)};")
    return "\n".join(lines + ["}"]) + "\n"


def render_png(graph, path, forward_only: bool = False) -> Path:
    """Render :func:`to_dot` (``forward_only`` as there) to a PNG at ``path`` with Graphviz's
    ``dot``; returns the path.

    Raises :class:`GraphvizError` saying how to install Graphviz when ``dot`` is not on PATH.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError(INSTALL_HINT)
    path = Path(path)
    try:
        done = subprocess.run(
            [exe, "-Tpng", "-o", str(path)],
            input=to_dot(graph, forward_only).encode(),
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GraphvizError(f"could not run Graphviz's dot ({exe}): {e}") from e
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise GraphvizError(
            f"Graphviz's dot ({exe}) failed with exit code {done.returncode}: {err}"
        )
    return path

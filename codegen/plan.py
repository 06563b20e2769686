"""Kernel planning: which nodes become one loop, which values live in arrays.

The plan walks the training graph in topological order.  Structural nodes (matmul, reductions,
softmax, the fused softmax cross-entropy) are one step each.  Elementwise nodes of the same shape
join a *fused group* - one loop nest - when every input they read from outside the group was
computed before the group starts; the loop computes the whole chain per element, forward and
backward alike.  A value is stored in an array only when something outside its group reads it
(or it is an output); everything else stays a scalar in a register.

Two options serve the sequential CPU loops (a parallel back end keeps them off):
``inline_consts`` prints a constant that only elementwise nodes read as a literal at each use
instead of filling an array with it (the cotangent ``1/(2n)`` of a mean, say), which also lets the
backward chain of mse or bce join the forward loop; ``fuse_reductions`` accumulates a
``reduce_sum`` of a group member inside that group's loop (bias gradients, the loss sum), so the
member is not read again, and not stored at all when nothing else needs it.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); W = gn.param("W", (3, 2)); b = gn.param("b", (2,))
>>> g = gn.Graph(gn.mse(gn.tanh(x @ W + b), gn.input("y", (2,))))
>>> [s.kind for s in make_plan(g.training, [g.loss_name]).steps][:2]
['matmul', 'group']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from graphnn.ir.graph import GraphIR, Node

LEAVES = ("input", "param")


@dataclass
class Step:
    """One statement block of a kernel: a structural node, or a fused group of ewise nodes."""

    kind: str  # the structural op name, or "group"
    nodes: list[Node] = field(default_factory=list)
    reductions: list[Node] = field(default_factory=list)  # reduce_sum nodes fused into a group

    @property
    def node(self) -> Node:
        return self.nodes[0]

    @property
    def shape(self):
        return self.nodes[0].shape


@dataclass
class Plan:
    steps: list[Step]
    stored: set[str]  # node names whose values are arrays (or scalar variables) after their step
    outputs: list[str]
    needed: set[str]  # every node the outputs depend on
    inlined: set[str] = field(default_factory=set)  # constants printed as literals at each use

    def group_of(self, name: str) -> Step | None:
        return next(
            (s for s in self.steps if any(n.name == name for n in [*s.nodes, *s.reductions])),
            None,
        )


def _fusable(node: Node) -> bool:
    return node.op == "ewise"


def make_plan(
    ir: GraphIR,
    outputs: Sequence[str],
    *,
    inline_consts: bool = False,
    fuse_reductions: bool = False,
) -> Plan:
    """Group the nodes needed for ``outputs`` into steps, in an order that respects the graph."""
    needed = ir.ancestors(outputs)
    inlined = {
        n.name
        for n in ir.nodes
        if n.name in needed and n.op == "const" and n.name not in outputs
        if n.shape == () or (inline_consts and _only_ewise_reads(ir, n.name, needed))
    }
    steps: list[Step] = []
    position: dict[str, int] = {}
    for node in ir.nodes:
        if node.name not in needed or node.op in LEAVES or node.name in inlined:
            continue
        if _fusable(node):
            k = _join_group(node, steps, position)
            if k is not None:
                steps[k].nodes.append(node)
                position[node.name] = k
                continue
            steps.append(Step("group", [node]))
        else:
            steps.append(Step(node.op, [node]))
        position[node.name] = len(steps) - 1
    if fuse_reductions:
        steps = _fuse_reductions(steps, position)
    stored = _stored(ir, steps, outputs, needed)
    return Plan(steps, stored, list(outputs), needed, inlined)


def _only_ewise_reads(ir: GraphIR, name: str, needed: set[str]) -> bool:
    return all(ir.node(u).op == "ewise" for u in ir.consumers(name) if u in needed)


def _join_group(node: Node, steps: list[Step], position: dict[str, int]) -> int | None:
    """The latest group this node can join: same shape, and its outside inputs already exist."""
    for k in range(len(steps) - 1, -1, -1):
        step = steps[k]
        if step.kind != "group" or step.shape != node.shape:
            continue
        if all(position.get(i, -1) < k or position.get(i) == k for i in node.inputs):
            return k
    return None


def _fuse_reductions(steps: list[Step], position: dict[str, int]) -> list[Step]:
    """Move each reduce_sum of a group member into that group's loop.

    The reduction keeps its place in the order for everything else: what reads it was planned
    after it, so never inside the group that accumulates it.
    """
    kept = []
    for step in steps:
        if step.kind == "reduce_sum":
            k = position.get(step.node.inputs[0])
            if k is not None and steps[k].kind == "group" and steps[k].shape:
                steps[k].reductions.append(step.node)
                continue
        kept.append(step)
    return kept


def _stored(ir: GraphIR, steps: list[Step], outputs, needed: set[str]) -> set[str]:
    stored = set(outputs)
    for step in steps:
        if step.kind != "group":
            stored.update(n.name for n in step.nodes)
            continue
        stored.update(r.name for r in step.reductions)
        inside = {n.name for n in [*step.nodes, *step.reductions]}
        for node in step.nodes:
            if any(u in needed and u not in inside for u in ir.consumers(node.name)):
                stored.add(node.name)
    return stored

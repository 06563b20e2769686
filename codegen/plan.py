"""Kernel planning: which nodes become one loop, which values live in arrays.

The plan walks the training graph in topological order.  Structural nodes (matmul, reductions,
softmax, the fused softmax cross-entropy) are one step each.  Elementwise nodes of the same shape
join a *fused group* - one loop nest - when every input they read from outside the group was
computed before the group starts; the loop computes the whole chain per element, forward and
backward alike.  A value is stored in an array only when something outside its group reads it
(or it is an output); everything else stays a scalar in a register.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); W = gn.param("W", (3, 2)); b = gn.param("b", (2,))
>>> g = gn.Graph(gn.mse(gn.tanh(x @ W + b), gn.input("y", (2,))))
>>> [s.kind for s in make_plan(g.training, [g.loss_name]).steps][:2]
['matmul', 'group']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from graphnn.graph import GraphIR, Node

LEAVES = ("input", "param")


@dataclass
class Step:
    """One statement block of a kernel: a structural node, or a fused group of ewise nodes."""

    kind: str  # the structural op name, or "group"
    nodes: list[Node] = field(default_factory=list)

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

    def group_of(self, name: str) -> Step | None:
        return next((s for s in self.steps if any(n.name == name for n in s.nodes)), None)


def _fusable(node: Node) -> bool:
    return node.op == "ewise"


def make_plan(ir: GraphIR, outputs: Sequence[str]) -> Plan:
    """Group the nodes needed for ``outputs`` into steps, in an order that respects the graph."""
    needed = _needed(ir, outputs)
    steps: list[Step] = []
    position: dict[str, int] = {}
    for node in ir.nodes:
        if node.name not in needed or node.op in LEAVES:
            continue
        if node.op == "const" and node.shape == () and node.name not in outputs:
            continue  # printed inline as a literal
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
    stored = _stored(ir, steps, position, outputs)
    return Plan(steps, stored, list(outputs), needed)


def _needed(ir: GraphIR, outputs: Sequence[str]) -> set[str]:
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(ir.node(name).inputs)
    return needed


def _join_group(node: Node, steps: list[Step], position: dict[str, int]) -> int | None:
    """The latest group this node can join: same shape, and its outside inputs already exist."""
    for k in range(len(steps) - 1, -1, -1):
        step = steps[k]
        if step.kind != "group" or step.shape != node.shape:
            continue
        if all(position.get(i, -1) < k or position.get(i) == k for i in node.inputs):
            return k
    return None


def _stored(ir: GraphIR, steps, position, outputs) -> set[str]:
    stored = set(outputs)
    for k, step in enumerate(steps):
        for node in step.nodes:
            if step.kind != "group":
                stored.add(node.name)
                continue
            for user in ir.consumers(node.name):
                if position.get(user, k) != k:
                    stored.add(node.name)
    return stored

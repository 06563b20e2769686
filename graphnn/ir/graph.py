"""The graph IR: the immutable graph of named nodes that the tensors users build form.

A :class:`~graphnn.ir.ops.Tensor` is what user code holds (``x @ W1 + b1``); it records its op,
its input tensors, its attributes and its shape.  :class:`GraphIR` freezes the tensors reachable
from some outputs into :class:`Node` records, names every node (user names first, then
``{op}{k}`` in topological order) and orders them without recursion, so deep graphs work.  It is
plain Python: networkx took 0.12 s of every ``import graphnn`` for a topological sort.

>>> import graphnn as gn
>>> x = gn.input("x", (3,)); w = gn.param("w", (3, 1))
>>> ir = GraphIR([gn.sigmoid(x @ w)])
>>> [n.name for n in ir.nodes]
['x', 'w', 'matmul1', 'sigmoid1']
"""

from __future__ import annotations

import heapq
import itertools
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphnn.errors import GraphError, NameNotFoundError, shown
from graphnn.ir.ops import Tensor
from graphnn.ir.shapes import Shape

LEAF_OPS = ("input", "param", "const")


@dataclass(frozen=True)
class Node:
    """One frozen node of a GraphIR: inputs are node names; attrs a sorted tuple of pairs."""

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: Shape
    attrs: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def attr(self, key: str, default=None):
        return dict(self.attrs).get(key, default)


def topological_tensors(outputs: Sequence[Tensor]) -> list[Tensor]:
    """Every tensor reachable from outputs, inputs before users; iterative (no recursion limit)."""
    order: list[Tensor] = []
    done: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(t, False) for t in reversed(outputs)]
    while stack:
        t, expanded = stack.pop()
        if id(t) in done:
            continue
        if expanded:
            done.add(id(t))
            order.append(t)
            continue
        stack.append((t, True))
        stack.extend((i, False) for i in reversed(t.inputs) if id(i) not in done)
    return order


class GraphIR:
    """Immutable graph of the tensors reachable from ``outputs``, with stable node names."""

    def __init__(self, outputs: Sequence[Tensor], names: Mapping[int, str] | None = None):
        self.outputs = tuple(outputs)
        self.tensors = topological_tensors(self.outputs)
        self._names = self._assign_names(names or {})
        frozen = [self._freeze(t) for t in self.tensors]
        # name -> the names of its users, in creation order (a user reading a node twice once)
        self._consumers: dict[str, list[str]] = {n.name: [] for n in frozen}
        for node in frozen:
            for i in dict.fromkeys(node.inputs):
                self._consumers[i].append(node.name)
        self.nodes = _topological(frozen, self._consumers)
        self.by_name = {n.name: n for n in self.nodes}
        self._by_op: dict[str, tuple[Node, ...]] = {}  # of_op's answers: the graph never changes
        self.tensor_by_name = {self._names[id(t)]: t for t in self.tensors}

    def _assign_names(self, base: Mapping[int, str]) -> dict[int, str]:
        names = dict(base)
        taken: dict[str, Tensor] = {}  # by the name as Python reads an identifier (NFKC)
        for t in self.tensors:
            if id(t) in names or t.name is None:
                continue
            key = unicodedata.normalize("NFKC", t.name)
            other = taken.get(key)
            if other is not None and other is not t:
                if other.name == t.name:
                    # batch norm names its running statistics for its name= argument
                    hint = "; give each batch_norm its own name=" if t.attrs.get("state") else ""
                    raise GraphError(f"two different nodes are both named '{t.name}'{hint}")
                raise GraphError(
                    f"nodes {other.name!r} and {t.name!r} have the same name as Python reads "
                    f"it ({key!r}, NFKC-normalized); rename one"
                )
            names[id(t)] = t.name
            taken[key] = t
        used = {unicodedata.normalize("NFKC", n) for n in names.values()}
        counters: dict[str, itertools.count] = {}
        for t in self.tensors:
            if id(t) in names:
                continue
            stem = str(t.attrs.get("fn", t.op))
            counter = counters.setdefault(stem, itertools.count(1))
            name = f"{stem}{next(counter)}"
            while unicodedata.normalize("NFKC", name) in used:
                name = f"{stem}{next(counter)}"
            names[id(t)] = name
            used.add(unicodedata.normalize("NFKC", name))
        return names

    def _freeze(self, t: Tensor) -> Node:
        attrs = tuple(sorted(t.attrs.items()))
        inputs = tuple(self._names[id(i)] for i in t.inputs)
        return Node(self._names[id(t)], t.op, inputs, t.shape, attrs, t.label)

    def name_of(self, t: Tensor) -> str:
        return self._names[id(t)]

    @property
    def names(self) -> dict[int, str]:
        return dict(self._names)

    def node(self, name: str) -> Node:
        try:
            return self.by_name[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            known = ", ".join(list(self.by_name)[:20]) + (", ..." if len(self.by_name) > 20 else "")
            raise NameNotFoundError(f"no node named {shown(name)}; nodes: {known}") from None

    def of_op(self, op: str) -> list[Node]:
        """The nodes of ``op`` in topological order (a new list; found once per op: each fit
        call asks for the inputs and parameters several times)."""
        found = self._by_op.get(op)
        if found is None:
            found = self._by_op[op] = tuple(n for n in self.nodes if n.op == op)
        return list(found)

    @property
    def params(self) -> list[Node]:
        return self.of_op("param")

    @property
    def inputs(self) -> list[Node]:
        return self.of_op("input")

    def ancestors(self, outputs: Iterable[str]) -> set[str]:
        """The named nodes and every node they depend on (iterative)."""
        needed, stack = set(), list(outputs)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(self.node(name).inputs)
        return needed

    def descendants(self, name: str) -> set[str]:
        """The nodes that depend on ``name``, not counting itself (iterative)."""
        found, stack = set(), [name]
        while stack:
            for user in self._consumers[stack.pop()]:
                if user not in found:
                    found.add(user)
                    stack.append(user)
        return found

    def consumers(self, name: str) -> list[str]:
        return list(self._consumers[name])

    def __iter__(self) -> Iterable[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)


def _topological(nodes: list[Node], consumers: Mapping[str, list[str]]) -> list[Node]:
    """Inputs before users; among the nodes ready at once, the earliest created first (stable:
    the same graph always gets the same order, so the same node names and the same kernels)."""
    position = {n.name: k for k, n in enumerate(nodes)}
    waiting = {n.name: len(set(n.inputs)) for n in nodes}
    ready = [k for k, n in enumerate(nodes) if not waiting[n.name]]
    heapq.heapify(ready)
    order = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for user in consumers[node.name]:
            waiting[user] -= 1
            if not waiting[user]:
                heapq.heappush(ready, position[user])
    return order

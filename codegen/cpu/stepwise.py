"""Stepwise kernels: each block of a kernel as a small compiled function of its own, shared by
every model and every layer that has the same block, called in order by plain-Python glue.

Why: Numba compiles a fused module as one LLVM unit, and its time grows with the model (digits
3.6 s, 30 dense layers 61 s cold), while training a small model takes a fraction of a second.
A block's text does not depend on which layer it belongs to once its names are replaced by
positional ones (arguments ``a0, a1, ...``, locals ``v0, v1, ...``) and its sizes are read from
arguments, so a 30-layer MLP has the same few distinct blocks as a 2-layer one.  Each is a
content-addressed module compiled once with ``cache=True`` and loaded from disk by every later
model (a few ms each).

The arithmetic is the fused module's, statement for statement: no kernel uses fast-math, so LLVM
may not reorder or contract floating-point operations, and a step run block by block gives the
same bits as the fused step (``tests/test_stepwise.py`` checks this on every case of
``tests/cases.py``).  What differs is the cost of a step: a Numba dispatch per block, 1-3 us,
which the fused module does not pay; the back end therefore trains stepwise only until the fused
module is compiled (:mod:`codegen.cpu.fused_compile`).

A float scalar crossing from one block to the next passes through Python, which boxes a Numba
float32 as a Python float; the glue casts it back (``np.float32(...)``) so the next block does its
arithmetic in float32, as the fused code does.

>>> k = split_block(["# y = relu(x)", "y = np.maximum(x, np.float32(0.0))"], {"y"}, {}, "float32")
>>> k.call
['# y = relu(x)', 'y = step_...(x)']
"""

from __future__ import annotations

import ast
import builtins
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from codegen.cpu.helpers import HELPERS, with_helpers

# Names a block may read that are the module's, not the kernel's: never arguments.
MODULE_NAMES = frozenset({"np", "math", "njit", *HELPERS}) | frozenset(dir(builtins))
JIT = '@njit(cache=True, error_model="numpy")'


class _Names(ast.NodeVisitor):
    """The names of a block in the order Python evaluates them: a name read before anything in
    the block assigns it is free (an argument); every name is recorded at its first sight."""

    def __init__(self):
        self.order: list[str] = []
        self.free: list[str] = []
        self.stored: set[str] = set()

    def _see(self, name: str, load: bool):
        if name in MODULE_NAMES:
            return
        if name not in self.order:
            self.order.append(name)
        if load and name not in self.stored and name not in self.free:
            self.free.append(name)
        if not load:
            self.stored.add(name)

    def visit_Name(self, node: ast.Name):
        self._see(node.id, isinstance(node.ctx, ast.Load))

    def visit_Assign(self, node: ast.Assign):
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign):
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._see(node.target.id, True)
        self.visit(node.target)

    def visit_For(self, node: ast.For):
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)


class _Rename(ast.NodeTransformer):
    def __init__(self, names: Mapping[str, str]):
        self.names = names

    def visit_Name(self, node: ast.Name):
        return ast.copy_location(ast.Name(self.names.get(node.id, node.id), node.ctx), node)


def names_of(lines: Sequence[str]) -> _Names:
    """The free and assigned names of a block of statements (at indentation 0)."""
    seen = _Names()
    for stmt in ast.parse("\n".join(lines)).body:
        seen.visit(stmt)
    return seen


@dataclass
class StepKernel:
    """One block as a compiled function: its module ``source``, the ``name`` the glue calls it
    by (``step_<hash>``) and the glue's ``call`` lines (the block's node comments, then the
    call)."""

    name: str
    source: str
    call: list[str] = field(default_factory=list)


def split_block(
    lines: Sequence[str], later: set[str], scalars: Mapping[str, str], dtype: str
) -> StepKernel:
    """The block ``lines`` as a step kernel.  ``later``: names that later blocks or the return
    read (the block returns those it assigns); ``scalars``: name -> float type of the graph's
    scalar values, which the glue casts back after the call."""
    comments = [line for line in lines if line.startswith("#")]
    seen = names_of(lines)
    args = list(seen.free)
    outs = [n for n in seen.order if n in seen.stored and n in later]
    positional = {a: f"a{k}" for k, a in enumerate(args)}
    locals_ = [n for n in seen.order if n not in positional]
    positional |= {v: f"v{k}" for k, v in enumerate(locals_)}
    body = ast.parse("\n".join(lines)).body
    body = [_Rename(positional).visit(stmt) for stmt in body]
    renamed = [positional[o] for o in outs]
    if renamed:
        ret = ast.parse(f"return {', '.join(renamed)}").body[0]
        body.append(ret)
    fn = ast.FunctionDef(
        name="step",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(positional[a]) for a in args],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        ),
        body=body or [ast.Pass()],
        decorator_list=[],
        returns=None,
        type_params=[],
    )
    text = ast.unparse(ast.fix_missing_locations(fn))
    source = _module(text, dtype)
    name = "step_" + hashlib.sha256(source.encode()).hexdigest()[:12]
    call = f"{name}({', '.join(args)})"
    if outs:
        call = f"{', '.join(outs)} = {call}"
    casts = [f"{o} = {scalars[o]}({o})" for o in outs if o in scalars]
    return StepKernel(name, source, [*comments, call, *casts])


def _module(function: str, dtype: str) -> str:
    """A step kernel's module: the imports and helpers its text uses, then the function."""
    head = ['"""A graphnn step kernel, shared by every model and layer with this step."""', ""]
    if "math." in function:
        head += ["import math", ""]
    head += ["import numpy as np", "from numba import njit", "", ""]
    return with_helpers("\n".join([*head, JIT, function]) + "\n", dtype)


def split_blocks(
    blocks: Sequence[Sequence[str]], tail: Sequence[str], scalars: Mapping[str, str], dtype: str
) -> list[StepKernel]:
    """Every non-empty block as a step kernel; ``tail``: the lines after the blocks (the
    return), whose names count as read later."""
    later = set(names_of(tail).free) if tail else set()
    kernels: list[StepKernel] = []
    for block in reversed(blocks):
        if not block:
            continue
        if not ast.parse("\n".join(block)).body:  # comments only
            kernels.append(StepKernel("", "", list(block)))
            continue
        kernel = split_block(block, later, scalars, dtype)
        kernels.append(kernel)
        later |= set(names_of(block).free)
    return kernels[::-1]

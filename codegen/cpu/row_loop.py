"""A small model's step as one loop over the batch's rows, every step's row in turn.

A small model's step (codegen/cpu/small_step.py) is a few blocks, each its own loop over the
batch: the product ``x @ w`` row by row, the elementwise chain, the weight gradient ``x^T @ d``.
At batch 1 each loop runs once and the step is their entry and exit, and every value goes out
to its array and comes back in the next block.  When every block is a loop over the batch's rows
in which row ``i0`` reads only row ``i0`` of the blocks before it, one loop can run all of them
for row 0, then for row 1, ...: a row's values are still in registers when the next block reads
them.  A value of one element per row that only the loop reads lives in a variable, not in its
array.  Measured on the single neuron (8 inputs, batch 1, SGD): 52.5 ns a step as separate
loops, 46.5 ns as one loop (a hand-written Numba loop: 41 ns, 34 ns with fast-math).

The statements are the separate loops' own (:meth:`CpuSteps.group_parts`,
:func:`codegen.cpu.matmul.row_parts`), so each element is computed by the same operations in
the same order: a sum over the rows (a bias gradient, the loss, a weight gradient ``x^T @ d``)
still adds row 0, then row 1, ...  The bits are the separate loops' (tests/test_stepwise.py
and the fuzzer's training property compare them with the stepwise kernels').  What reads a sum
over the rows (the loss's mean) runs after the loop; what reads parameters and constants alone
(a weight penalty), and reshapes (views), before it.

A step that is not such a loop (a product through BLAS, a dropout, a convolution, ...) leaves
the step as it was: :func:`row_loop` returns None.  A product that runs as loops only while the
batch is small (``n * 8 <= 128``) makes the one loop conditional on that: the step tests it and
runs the one loop, or the separate blocks, which then call BLAS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from codegen.cpu import matmul
from codegen.plan import Step
from codegen.steps import comment, indent, loop_header

ROW = "i0"  # the batch row the loop is at: the groups' first index


@dataclass
class RowLoop:
    condition: str | None  # when the loop may run (every product as loops), None: always
    lines: list[str]


def row_loop(scope, steps: list[Step], blocks: list[list[str]], outputs) -> RowLoop | None:
    """The steps as one loop over the batch's rows, or None (see the module docstring).

    ``scope``: the kernel's :class:`codegen.cpu.steps.CpuSteps`, after it emitted the steps
    as ``blocks`` (one per step: a step outside the loop keeps its block's text; its workspace
    buffers are the ones the separate loops use); ``outputs``: what the kernel returns."""
    before: list[str] = []  # views, zeroed sums, constants, what only parameters give
    per_row: list[str] = []
    after: list[str] = []  # what reads the sums over the rows
    in_loop: set[str] = set()  # values the loop makes row by row
    summed: set[str] = set()  # values complete only after the last row
    late: set[str] = set()  # values made after the loop
    viewed: set[str] = set()  # arrays a reshape also reads: they stay arrays
    paired: set[str] = set()  # softmax cross-entropy nodes done (loss and gradient: one pass)
    conditions: list[str] = []
    rows = 0
    for step, block in zip(steps, blocks, strict=True):
        names = {n.name for n in step.nodes}
        reads = {i for n in [*step.nodes, *step.reductions] for i in n.inputs}
        if step.kind == "const":
            before += block
        elif step.kind == "reshape":  # a view: made where its input's array exists
            (source,) = reads
            if source in in_loop and step.shape[:1] != (None,):
                return None  # its rows would not be the loop's
            if source in late:
                after += block
                late |= names
            else:
                before += block
                viewed.add(source)
            in_loop |= names if source in in_loop else set()
            summed |= names if source in summed | late else set()
        elif step.kind == "group" and None not in step.shape:  # no batch axis
            if reads & in_loop:
                return None
            if reads & summed:  # e.g. the loss's mean: after the loop
                after += block
                summed |= names
                late |= names
            else:  # from parameters and constants alone
                before += block
        else:
            if reads & summed:  # a row would read a value the loop has not finished
                return None
            if step.node.name in paired:  # computed with its softmax cross-entropy partner
                continue
            form = _row_form(scope, step)
            if form is None:
                return None
            start, row, totals, condition, ending = form
            before += start
            per_row += row
            after += ending
            if step.kind in ("softmax_ce", "softmax_ce_grad"):
                names = set(scope.ce_pair(step))
                paired |= names
            in_loop |= names - totals
            summed |= totals
            late |= totals if ending else set()
            conditions += [condition] if condition else []
            rows += 1
    if rows == 0:
        return None
    per_row = _one_column_scalars(scope, steps, per_row, summed | viewed, outputs)
    loop = [
        "# one loop over the batch's rows: each block below runs for row i0 in turn",
        "# (codegen/cpu/row_loop.py)",
        f"for {ROW} in range(n):",
        *indent(per_row, 1),
    ]
    condition = " and ".join(dict.fromkeys(conditions)) or None
    return RowLoop(condition, before + loop + after)


def _row_form(scope, step: Step):
    """(lines before the loop, lines for row i0, the names it sums over the rows, the condition
    it needs, lines after the loop) of a step that is a loop over the batch's rows, else
    None."""
    if step.kind in ("softmax", "softmax_grad", "softmax_ce", "softmax_ce_grad"):
        rows = scope.ir.node(step.node.inputs[0]).shape  # the logits' (or the softmax's)
        if not rows or rows[0] is not None or None in rows[1:]:
            return None
        lines, row, after = scope.row_parts(step)
        notes, start = _notes_apart(lines)
        if step.kind in ("softmax", "softmax_grad"):
            return start, notes + row, set(), None, after
        # the loss: a sum over the rows, divided after the loop
        totals = {n for n in scope.ce_pair(step) if scope.ir.node(n).op == "softmax_ce"}
        return start, notes + row, totals, None, after
    if step.kind == "group":
        if step.shape[0] is not None or None in step.shape[1:]:  # rows: the batch, once
            return None
        lines, index, body = scope.group_parts(step)
        notes, start = _notes_apart(lines)
        inner = len(step.shape) - 1
        row = notes + loop_header(step.shape[1:], index[1:], scope) + indent(body, inner)
        totals = {r.name for r in step.reductions if 0 in r.attr("axes")}
        return start, row, totals, None, []
    if step.kind == "matmul":
        node = step.node
        a, b = node.inputs
        ta, tb = bool(node.attr("ta")), bool(node.attr("tb"))
        a_shape, b_shape = scope.ir.node(a).shape, scope.ir.node(b).shape
        how, why = matmul.choose(a_shape, b_shape, ta, tb, scope.dim)
        if how == "blas":
            return None
        parts = matmul.row_parts(
            node.name, a, b, a_shape, b_shape, ta, tb, scope.dtype, scope.dim, ROW
        )
        if parts is None:
            return None
        init, row = parts
        start = scope.empty(node.name, node.shape) + init
        totals = {node.name} if ta else set()  # a^T @ b sums over the rows
        condition = None if how == "loops" else how
        return start, [comment(node), f"# {why}", *row], totals, condition, []
    return None


def _notes_apart(lines: list[str]) -> tuple[list[str], list[str]]:
    """(the comments naming a step's nodes, its other lines before its loop): the comments go
    into the loop, above the step's row, the rest before the loop."""
    return [ln for ln in lines if ln.startswith("#")], [
        ln for ln in lines if not ln.startswith("#")
    ]


def _one_column_scalars(scope, steps, per_row: list[str], summed: set, outputs) -> list[str]:
    """``per_row`` with each value of one element per row (shape (n,) or (n, 1)) that only the
    loop reads held in a variable ``<name>_r`` instead of row i0 of its array: its block
    writes it and the next reads it back, and LLVM keeps it in memory between the two (any
    store could be to the same address).  The same float32 value: the same bits."""
    made = {n.name for step in steps for n in step.nodes if step.kind in ("group", "matmul")}
    for name in sorted(made - summed - set(outputs), key=len, reverse=True):
        shape = scope.ir.node(name).shape
        if not shape or shape[0] is not None or any(d != 1 for d in shape[1:]):
            continue
        element = re.compile(rf"\b{name}\[i0(, [^\]]+)*\]")
        per_row = [element.sub(f"{name}_r", line) for line in per_row]
    return per_row

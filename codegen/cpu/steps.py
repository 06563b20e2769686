"""CPU source text for each kind of plan step: :class:`CpuSteps`, an ``emit_<kind>`` method per
kind of step (a :class:`~codegen.steps.StepEmitter`).
Emitters return lines of Python (without indentation of the enclosing function).  Elementwise
formulas are printed by :mod:`codegen.printer` only; this module decides loops, indexing and
storage for ``numba.njit`` (NumPy calls allowed, BLAS through ``np.dot``).
"""

from __future__ import annotations

import sympy

from codegen.contraction import Nest, window_max
from codegen.conv_pattern import recognise
from codegen.cpu import im2col, matmul, pool_mask
from codegen.plan import Step
from codegen.steps import StepEmitter, comment, indent, loop_header
from graphnn.ir.dropout import threshold
from graphnn.ir.elementwise import ARGS
from graphnn.ir.graph import Node


def _reduce_target(node: Node, index: list[str]) -> str:
    """The accumulator element that element ``index`` of a reduce_sum's input adds to."""
    axes, keep = node.attr("axes"), node.attr("keepdims")
    out = [("0" if keep else None) if k in axes else i for k, i in enumerate(index)]
    out = [i for i in out if i is not None]
    return f"{node.name}[{', '.join(out)}]" if out else node.name


def _over_rows(rows: str, body: list[str]) -> list[str]:
    """body once per row i0 of a 2-D value: its own rows (``rows``, as the code spells their
    number), which are the batch only when its first dimension is (a softmax of a parameter has
    as many rows as the parameter)."""
    return [f"for i0 in range({rows}):", *indent(body, 1)]


class CpuSteps(StepEmitter):
    """Source lines of each kind of plan step for ``numba.njit``: an ``emit_<kind>`` per kind."""

    backend = "cpu"

    def emit_group(self, step: Step) -> list[str]:
        """One loop nest computing every node of a fused elementwise group (and its reductions)."""
        lines, index, body = self.group_parts(step)
        if not step.shape:
            return lines + body
        return lines + loop_header(step.shape, index, self) + indent(body, len(step.shape))

    def group_parts(self, step: Step) -> tuple[list[str], list[str], list[str]]:
        """(the lines before a group's loop nest, its index names, the body for one element)."""
        shape = step.shape
        index = [f"i{k}" for k in range(len(shape))]
        members = {n.name for n in step.nodes}
        consts = dict.fromkeys(i for n in step.nodes for i in n.inputs if i in self.plan.inlined)
        lines = [comment(self.ir.node(c)) + "  (inlined)" for c in consts]
        lines += [comment(n) for n in [*step.nodes, *step.reductions]]
        stored = [n for n in step.nodes if n.name in self.plan.stored]
        if shape:
            lines += [line for n in stored for line in self.empty(n.name, shape)]
        lines += [line for r in step.reductions for line in self.empty(r.name, r.shape, "zeros")]
        body: list[str] = []
        read_in_group = {
            i for n in [*step.nodes, *step.reductions] for i in n.inputs if i in members
        }
        scalar = {
            n.name: n.name + "_v" if n.name in self.plan.stored and shape else n.name
            for n in step.nodes
        }
        for node in step.nodes:
            subs = {
                ARGS[k]: sympy.Symbol(scalar[i]) if i in members else self.value(i, shape, index)
                for k, i in enumerate(node.inputs)
            }
            text = self.expr(node.attr("expr").xreplace(subs))
            store = f"{node.name}[{', '.join(index)}]"
            if scalar[node.name] == node.name:
                body.append(f"{node.name} = {text}")
            elif node.name in read_in_group:
                body += [f"{scalar[node.name]} = {text}", f"{store} = {scalar[node.name]}"]
            else:
                body.append(f"{store} = {text}")
        body += [f"{_reduce_target(r, index)} += {scalar[r.inputs[0]]}" for r in step.reductions]
        return lines, index, body

    def emit_matmul(self, step: Step) -> list[str]:
        node = step.node
        a, b = node.inputs
        ta, tb = bool(node.attr("ta")), bool(node.attr("tb"))
        a_shape, b_shape = self.ir.node(a).shape, self.ir.node(b).shape
        how, why = matmul.choose(a_shape, b_shape, ta, tb, self.dim)
        head = [comment(node), f"# {why}"]
        dot = f"np.dot({a}{'.T' if ta else ''}, {b}{'.T' if tb else ''}"
        if how == "blas":
            view = self.buffer(node.name, node.shape)
            if view is None:
                return [*head, f"{node.name} = {dot})"]
            return [*head, f"{node.name} = {view}", f"{dot}, {node.name})"]
        lines = head + self.empty(node.name, node.shape)
        loops = matmul.loop_lines(node.name, a, b, a_shape, b_shape, ta, tb, self.dtype, self.dim)
        if how == "loops":
            return lines + loops
        return lines + [f"if {how}:", *indent(loops, 1), "else:", f"    {dot}, {node.name})"]

    def emit_contract(self, step: Step) -> list[str]:
        """A loop over the output's elements, each summing its products over the other indices
        (:class:`codegen.contraction.Nest`: bounds-checked reads, inverted output maps); a
        convolution large enough for it is im2col + BLAS instead (:mod:`codegen.cpu.im2col`)."""
        node = step.node
        form = recognise({k: node.attr(k) for k in ("sizes", "maps", "out")}, node.inputs)
        how, why = im2col.choose(form) if form is not None else ("loops", None)
        if how == "im2col":
            return self._im2col(node, form, why)
        nest = self._nest(node)
        lines = [comment(node), *([f"# {why}"] if why else [])]
        lines += self.empty(node.name, node.shape)
        if nest.row_index is None:
            lines += loop_header(node.shape, nest.out_vars, self)
            return lines + indent(nest.body(node.name), len(node.shape))
        rows = node.shape[:-1]
        lines += loop_header(rows, nest.out_vars[:-1], self)
        return lines + indent(nest.row_body(node.name), len(rows))

    def _im2col(self, node: Node, form, why: str) -> list[str]:
        """A convolution form as im2col (or col2im) and one BLAS product (codegen.cpu.im2col).

        The kernel's gradient reuses the patches the forward convolution gathered into the same
        workspace buffer earlier in this kernel; a buffer is only ever written by the gather of
        one image and window, so what it holds is still those patches."""
        image = node.shape if form.role == "input_grad" else self.ir.node(form.image).shape
        dim, lines = self.dim, [comment(node), f"# {why}"]
        if form.role == "input_grad":
            dcols = f"{node.name}_dcols"
            lines += self.empty(dcols, im2col.cols_shape(form))
            lines += im2col.product_lines(form, node.name, dcols, dim)
            lines += self.empty(node.name, node.shape, "zeros")
            return lines + im2col.scatter(form, image, dcols, node.name, dim)
        key = im2col.geometry(form, image)
        cols = self.gathered.get(key)
        if cols is None and form.role == "forward" and key not in self._reread():
            cols = f"{node.name}_cols"
            lines += self.empty(cols, (im2col.group_size(form), *im2col.cols_shape(form)[1:]))
            lines += self.empty(node.name, node.shape)
            return lines + im2col.grouped_forward(
                form, image, cols, node.name, dim, self.literal(0)
            )
        if cols is None:
            cols = self.gathered[key] = f"{node.name}_cols"
            lines += self.empty(cols, im2col.cols_shape(form))
            lines += im2col.gather(form, image, cols, dim, self.literal(0))
        else:
            lines += [f"# the patches of {form.image} are in {cols} (gathered above)"]
        lines += self.empty(node.name, node.shape)
        if im2col.chunked(form):
            part = f"{node.name}_part"
            lines += self.empty(part, (form.kh, form.kw, form.c, form.o))
            return lines + im2col.chunked_lines(form, node.name, cols, part, dim)
        return lines + im2col.product_lines(form, node.name, cols, dim)

    def _reread(self) -> set:
        """The gathers (:func:`codegen.cpu.im2col.geometry`) a kernel's gradient of this
        kernel reads: their forward convolution keeps the whole batch's patches for it."""
        keys = set()
        for step in self.plan.steps:
            node = step.node
            if node.op != "contract":
                continue
            attrs = {k: node.attr(k) for k in ("sizes", "maps", "out")}
            form = recognise(attrs, node.inputs)
            if form is not None and form.role == "kernel_grad":
                keys.add(im2col.geometry(form, self.ir.node(form.image).shape))
        return keys

    def _nest(self, node: Node) -> Nest:
        attrs = {k: node.attr(k) for k in ("sizes", "maps", "out")}
        shapes = [self.ir.node(i).shape for i in node.inputs]
        return Nest(attrs, node.inputs, shapes, self.dim, self.literal(0))

    def emit_max_pool(self, step: Step) -> list[str]:
        """Per output element, the maximum over its window (padding never wins)."""
        node = step.node
        (x,) = node.inputs
        scan = window_max(dict(node.attrs), x, self.ir.node(x).shape, self.dim, self.dtype)
        body = scan + [f"{node.name}[_b, _i, _j, _c] = acc"]
        out = ["_b", "_i", "_j", "_c"]
        lines = [comment(node), *self.empty(node.name, node.shape)]
        return lines + loop_header(node.shape, out, self) + indent(body, 4)

    def emit_max_pool_mask(self, step: Step) -> list[str]:
        """1 at the first maximum of each window, 0 elsewhere (the max pool's adjoint reads it),
        channels innermost (:mod:`codegen.cpu.pool_mask`)."""
        node = step.node
        (x,) = node.inputs
        shape = self.ir.node(x).shape
        body = pool_mask.mask_lines(
            dict(node.attrs), x, shape, node.name, node.shape, self.dim, self.literal
        )
        return [comment(node), *self.empty(node.name, node.shape), *body]

    def emit_dropout(self, step: Step) -> list[str]:
        """Training: keep element e of a row (row-major within it) when dropout_mix(rowkey ^ e)
        clears the rate's threshold, rowkey a hash of (seed, draw, the row's sample id); the
        forward kernel's eval form is the identity (graphnn.ir.dropout)."""
        node = step.node
        (x,) = node.inputs
        if self.draw_arg is None:
            return [comment(node) + "  (eval form: the identity)", f"{node.name} = {x}"]
        rate, seed = node.attr("rate"), node.attr("seed")
        index = [f"i{k}" for k in range(len(node.shape))]
        at = f"[{', '.join(index)}]"
        body = [
            f"if dropout_mix(rowkey ^ e) >= {threshold(rate)}:",
            f"    {node.name}{at} = {x}{at} * {self.literal(1 / (1 - rate))}",
            "else:",
            f"    {node.name}{at} = {self.literal(0)}",
            "e += 1",
        ]
        lines = [comment(node), *self.empty(node.name, node.shape)]
        lines += [f"key = dropout_mix(dropout_mix({seed}) ^ {self.draw_arg})"]
        row = ["rowkey = dropout_mix(key ^ (sample_ids[i0] & 0xFFFFFFFF))", "e = 0"]
        inner = loop_header(node.shape[1:], index[1:], self) + indent(body, len(index) - 1)
        return lines + [f"for i0 in range({self.dim(node.shape[0])}):", *indent(row + inner, 1)]

    def emit_running(self, step: Step) -> list[str]:
        """A running statistic: the batch's value while training, the state in the eval form
        (graphnn.ir.batch_norm); the training step assigns the state afterwards."""
        node = step.node
        batch, state = node.inputs
        if self.eval_form:
            return [
                comment(node) + "  (eval form: the running statistic)",
                f"{node.name} = {state}",
            ]
        return [comment(node) + "  (training form: the batch statistic)", f"{node.name} = {batch}"]

    def emit_one_hot(self, step: Step) -> list[str]:
        """Each id's row: 1 at the id, 0 elsewhere; all NaN for an id that is not a whole
        number in [0, depth), so the step's finite check stops on it."""
        node = step.node
        (ids,) = node.inputs
        lead = node.shape[:-1]
        index = [f"i{k}" for k in range(len(lead))]
        at = ", ".join(index)
        depth = self.dim(node.shape[-1])
        body = [
            f"v = {ids}[{at}]",
            "for j in range(" + depth + "):",
            f"    {node.name}[{at}, j] = {self.literal(1)} if v == j else {self.literal(0)}",
            f"if not (v >= 0 and v < {depth} and v == np.floor(v)):",
            f"    for j in range({depth}):",
            f"        {node.name}[{at}, j] = np.{self.dtype}(np.nan)",
        ]
        lines = [comment(node), *self.empty(node.name, node.shape)]
        return lines + loop_header(lead, index, self) + indent(body, len(lead))

    def emit_reduce_sum(self, step: Step) -> list[str]:
        node = step.node
        (x,) = node.inputs
        src = self.ir.node(x).shape
        index = [f"i{k}" for k in range(len(src))]
        lines = [comment(node), *self.empty(node.name, node.shape, "zeros")]
        lines += loop_header(src, index, self)
        lines += indent([f"{_reduce_target(node, index)} += {x}[{', '.join(index)}]"], len(src))
        return lines

    def emit_reshape(self, step: Step) -> list[str]:
        node = step.node
        return [comment(node), f"{node.name} = {node.inputs[0]}.reshape({self.dims(node.shape)})"]

    def emit_const(self, step: Step) -> list[str]:
        node = step.node
        value = self.expr(sympy.sympify(node.attr("value")))
        if not node.shape:
            return [comment(node), f"{node.name} = {value}"]
        return [comment(node), f"{node.name} = np.full({self.dims(node.shape)}, {value})"]

    def _row_stats(self, z: str, k: str, keep: str | None = None) -> list[str]:
        """Lines computing the row max ``m`` and ``s = sum(exp(z - m))`` of row i0 of z.

        With ``keep``, each ``exp(z - m)`` is also stored in row i0 of that array, so a softmax or
        its gradient divides by ``s`` without calling exp a second time.
        """
        lines = [
            f"m = {z}[i0, 0]",
            f"for j in range(1, {self.dim(k)}):",
            f"    m = max(m, {z}[i0, j])",
            f"s = {self.literal(0)}",
            f"for j in range({self.dim(k)}):",
        ]
        if keep is None:
            return lines + [f"    s += np.exp({z}[i0, j] - m)"]
        return lines + [f"    {keep}[i0, j] = np.exp({z}[i0, j] - m)", f"    s += {keep}[i0, j]"]

    def emit_softmax(self, step: Step) -> list[str]:
        before, per_row, _ = self.row_parts(step)
        return before + _over_rows(self.dim(step.node.shape[0]), per_row)

    emit_softmax_grad = emit_softmax

    def row_parts(self, step: Step) -> tuple[list[str], list[str], list[str]]:
        """A softmax, its gradient or the softmax cross-entropy as (lines before its loop over
        the rows, the lines for row i0, lines after): for the emitters, and for a small
        model's one loop over the rows (codegen/cpu/row_loop.py)."""
        node = step.node
        if node.op in ("softmax_ce", "softmax_ce_grad"):
            return self._softmax_ce_parts(step)
        k = node.shape[-1]  # the classes may be the batch: n
        if node.op == "softmax":
            (z,) = node.inputs
            body = self._row_stats(z, k, keep=node.name) + [
                f"for j in range({self.dim(k)}):",
                f"    {node.name}[i0, j] = {node.name}[i0, j] / s",
            ]
        else:  # softmax_grad
            (y, g) = node.inputs
            body = [
                f"d = {self.literal(0)}",
                f"for j in range({self.dim(k)}):",
                f"    d += {g}[i0, j] * {y}[i0, j]",
                f"for j in range({self.dim(k)}):",
                f"    {node.name}[i0, j] = {y}[i0, j] * ({g}[i0, j] - d)",
            ]
        return [comment(node), *self.empty(node.name, node.shape)], body, []

    def _ce_partner(self, step: Step, op: str) -> Node | None:
        for other in self.plan.steps:
            if other.kind == op and other.node.inputs == step.node.inputs:
                return other.node
        return None

    def emit_softmax_ce(self, step: Step) -> list[str]:
        """Loss (and, when the plan also needs it, its gradient) in one pass over the rows."""
        node = step.node
        if node.name in self.done:
            return []
        before, per_row, after = self._softmax_ce_parts(step)
        self.done.update(self.ce_pair(step))
        shape = self.ir.node(node.inputs[0]).shape
        return before + _over_rows(self.dim(shape[0]), per_row) + after

    emit_softmax_ce_grad = emit_softmax_ce

    def ce_pair(self, step: Step) -> list[str]:
        """The softmax cross-entropy and its gradient that one pass computes (either may be
        absent from the plan)."""
        loss, grad = self._ce_nodes(step)
        return [n.name for n in (loss, grad) if n is not None]

    def _ce_nodes(self, step: Step):
        node = step.node
        loss, grad = (node, self._ce_partner(step, "softmax_ce_grad"))
        if node.op == "softmax_ce_grad":
            loss, grad = self._ce_partner(step, "softmax_ce"), node
        return loss, grad

    def _softmax_ce_parts(self, step: Step) -> tuple[list[str], list[str], list[str]]:
        node = step.node
        loss, grad = self._ce_nodes(step)
        (z, t) = node.inputs
        shape = self.ir.node(z).shape
        k = shape[-1]
        # the mean over the logits' rows: the batch only when they have a batch axis
        rows = "nf" if shape[0] is None else self.count(shape[0])
        lines, body = [], self._row_stats(z, k, keep=grad.name if grad is not None else None)
        # A row's loss is tsum logsumexp(z) - sum(t z), tsum = sum(t): -sum(t log softmax(z))
        # also for target rows that do not sum to 1 (padding rows of zeros, multi-label rows),
        # as in torch.
        body += [
            f"tsum = {self.literal(0)}",
            f"for j in range({self.dim(k)}):",
            f"    tsum += {t}[i0, j]",
        ]
        if loss is not None:
            lines += [comment(loss), f"{loss.name} = {self.literal(0)}"]
            body += [
                f"d = {self.literal(0)}",
                f"for j in range({self.dim(k)}):",
                f"    d += {t}[i0, j] * {z}[i0, j]",
            ]
            body += [f"{loss.name} += tsum * (m + np.log(s)) - d"]
        if grad is not None:
            lines += [comment(grad), *self.empty(grad.name, grad.shape)]
            body += [
                f"for j in range({self.dim(k)}):",
                f"    {grad.name}[i0, j] = ({grad.name}[i0, j] / s * tsum - {t}[i0, j]) / {rows}",
            ]
        after = [f"{loss.name} = {loss.name} / {rows}"] if loss is not None else []
        return lines, body, after

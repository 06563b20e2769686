"""The loop nest of an indexed contraction, shared by the CPU and CUDA emitters.

Both compute one output element at a time (a CPU loop over the output, a CUDA thread each): the
element's indices are the output loop's variables, and the body sums the product of the operand
reads over the remaining indices.  An output position that is not a plain index (the input
adjoint of a strided convolution writes ``dx[b, 2i + k - 1, ...]``) is *inverted*: for each
value of the other indices of that position, the one index left is solved for, and the term is
skipped when it is not a whole number in range.  Every read outside an operand is skipped the
same way (zero padding), so no generated loop reads or writes outside an array.

The CPU uses these loops for every contraction except the convolution forms it recognises
(:mod:`codegen.conv_pattern`), which it lowers to im2col and BLAS (:mod:`codegen.cpu.im2col`)
unless the module may not call BLAS; the CUDA back end uses them for all.

>>> from graphnn.ir.indexed import A
>>> attrs = {"sizes": (("i", 3), ("k", 2)), "maps": ((A("i", "k", const=-1),), (A("k"),)),
...          "out": (A("i"),)}
>>> nest = Nest(attrs, ["x", "w"], [(3,), (2,)], str, "0.0")
>>> nest.out_vars
['_i']
>>> print("\\n".join(nest.body("y")))
acc = 0.0
for _k in range(2):
    if 0 <= _i + _k - 1 < 3:
        acc += x[_i + _k - 1] * w[_k]
y[_i] = acc
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from codegen.steps import indent
from graphnn.ir.indexed import Affine, plain, show_access


def var(index: str) -> str:
    """The code's name of an index: a leading underscore keeps it clear of node names."""
    return f"_{index}"


def _term(idx: str, c: int) -> str:
    return var(idx) if c == 1 else f"{c} * {var(idx)}"


def spell(a: Affine) -> str:
    """An affine expression as code over the index variables (``2 * _i + _k - 1``)."""
    terms, const = a
    out = ""
    for idx, c in terms:
        if not out:
            out = _term(idx, c) if c > 0 else f"-{_term(idx, -c)}"
        else:
            out += f" + {_term(idx, c)}" if c > 0 else f" - {_term(idx, -c)}"
    if const or not out:
        out += str(const) if not out else (f" + {const}" if const > 0 else f" - {-const}")
    return out


class Nest:
    """The per-output-element body of one contraction node.

    ``shapes``: the operands' shapes; ``dim``: how the code spells a size (the batch is ``n``);
    ``zero``: the accumulator's initial value as a literal of the kernel's float type.
    """

    def __init__(self, attrs, operands: Sequence[str], shapes, dim: Callable, zero: str):
        self.sizes = dict(attrs["sizes"])
        self.maps, self.out = attrs["maps"], attrs["out"]
        self.operands, self.shapes, self.dim, self.zero = list(operands), shapes, dim, zero
        self.out_vars = [var(plain(a)) if plain(a) else f"_y{d}" for d, a in enumerate(self.out)]
        bound = {plain(a) for a in self.out} - {None}
        # a non-plain output position is solved for its term of the largest coefficient
        self.solved: dict[str, tuple[int, Affine]] = {}
        for d, a in enumerate(self.out):
            if plain(a) is None:
                idx, _ = max(a[0], key=lambda t: abs(t[1]))
                self.solved[idx] = (d, a)
        ahead = [i for _, a in self.solved.values() for i, _ in a[0] if i not in self.solved]
        rest = [i for i in self.sizes if i not in bound and i not in self.solved]
        self.loops = sorted(rest, key=lambda i: (i not in ahead, list(self.sizes).index(i)))

    def _guards(self, known: set[str], done: set) -> list[tuple[str, list[str]]]:
        """(condition, lines before it) of each check whose indices are all known by now."""
        found = []
        for idx, (d, a) in self.solved.items():
            others = {i for i, _ in a[0] if i != idx}
            if idx in done or not others <= known:
                continue
            done.add(idx)
            c = dict(a[0])[idx]
            rest = ((a[0][k] for k in range(len(a[0])) if a[0][k][0] != idx), a[1])
            rest = (tuple(rest[0]), rest[1])
            num = self.out_vars[d] + (f" - ({spell(rest)})" if rest[0] or rest[1] else "")
            size = self.dim(self.sizes[idx])
            v = var(idx)
            why = f"  # {show_access('', [a])[1:-1]} = {self.out_vars[d]}, solved for {idx}"
            if c == 1:
                found.append((f"0 <= {v} < {size}", [f"{v} = {num}{why}"]))
            else:
                cond = f"{v} % {c} == 0 and 0 <= {v} // {c} < {size}"
                found.append((cond, [f"{v} = {num}{why}"], f"{v} = {v} // {c}"))
            known.add(idx)
        for k, comps in enumerate(self.maps):
            for axis, a in enumerate(comps):
                key = (k, axis)
                idxs = {i for i, _ in a[0]}
                if key in done or plain(a) is not None or not idxs <= known:
                    continue
                done.add(key)
                found.append((f"0 <= {spell(a)} < {self.dim(self.shapes[k][axis])}", []))
        return found

    @property
    def row_index(self) -> str | None:
        """The output's last index when it can run innermost over a whole output row: it is
        plain in the output and wherever an operand reads it (no bounds check depends on it),
        so the CPU loop over it vectorizes (a conv's output channels: out[b, i, j, :] +=
        x[b, r, c, ci] * K[k, l, ci, :])."""
        last = plain(self.out[-1])
        for comps in self.maps:
            if any(last in dict(a[0]) and plain(a) != last for a in comps):
                return None
        return last

    def _product(self) -> str:
        return " * ".join(
            f"{name}[{', '.join(spell(a) for a in comps)}]"
            for name, comps in zip(self.operands, self.maps, strict=True)
        )

    def row_body(self, out_name: str) -> list[str]:
        """Lines computing the output row at ``out_vars[:-1]``, the :attr:`row_index` innermost:
        the row is zeroed, then every product is added to it."""
        v = self.row_index
        size = self.dim(self.sizes[v])
        at = ", ".join(self.out_vars)
        zero = [f"for {var(v)} in range({size}):", f"    {out_name}[{at}] = {self.zero}"]
        inner = [f"for {var(v)} in range({size}):", f"    {out_name}[{at}] += {self._product()}"]
        return zero + self._nested(inner)

    def _nested(self, inner: list[str]) -> list[str]:
        """inner inside the loops over the summed indices, each bounds check as far out as the
        indices it needs allow."""
        known = {plain(a) for a in self.out} - {None}
        done: set = set()
        levels = [self._guard(g) for g in self._guards(known, done)]
        for idx in self.loops:
            levels.append(([], f"for {var(idx)} in range({self.dim(self.sizes[idx])}):", []))
            known.add(idx)
            levels += [self._guard(g) for g in self._guards(known, done)]
        lines = inner
        for before, header, after in reversed(levels):
            lines = [*before, header, *indent(after + lines, 1)]
        return lines

    def body(self, out_name: str) -> list[str]:
        """Lines computing the element at ``out_vars`` and storing it in ``out_name``."""
        known = {plain(a) for a in self.out} - {None}
        done: set = set()
        product = self._product()
        # each level: (lines before its header, the header, lines opening its body)
        levels = [self._guard(g) for g in self._guards(known, done)]
        for idx in self.loops:
            levels.append(([], f"for {var(idx)} in range({self.dim(self.sizes[idx])}):", []))
            known.add(idx)
            levels += [self._guard(g) for g in self._guards(known, done)]
        lines = [f"acc += {product}"]
        for before, header, after in reversed(levels):
            lines = [*before, header, *indent(after + lines, 1)]
        at = ", ".join(self.out_vars)
        return [f"acc = {self.zero}", *lines, f"{out_name}[{at}] = acc"]

    @staticmethod
    def _guard(found) -> tuple[list[str], str, list[str]]:
        cond, before, *after = found
        return before, f"if {cond}:", list(after)


def window_max(attrs, x: str, shape, dim: Callable, dtype: str) -> list[str]:
    """Lines leaving in ``acc`` the maximum of x's pooling window at ``_b, _i, _j, _c`` and in
    ``_kk, _ll`` its first position (row-major); padding is skipped, NaN wins (as np.max)."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["size"], attrs["stride"], attrs["padding"]
    row, col = spell(((("i", sh), ("k", 1)), -ph)), spell(((("j", sw), ("l", 1)), -pw))
    return [
        f"acc = np.{dtype}(0.0)",
        "_kk = -1",
        "_ll = -1",
        f"for _k in range({kh}):",
        f"    if 0 <= {row} < {dim(shape[1])}:",
        f"        for _l in range({kw}):",
        f"            if 0 <= {col} < {dim(shape[2])}:",
        f"                v = {x}[_b, {row}, {col}, _c]",
        "                if _kk < 0 or v > acc or (v != v and acc == acc):",
        "                    acc = v",
        "                    _kk = _k",
        "                    _ll = _l",
    ]


def window_mask(attrs, name: str, one: str, zero: str) -> list[str]:
    """After :func:`window_max`: the window's row of the argmax mask, 1 at ``_kk, _ll``."""
    (kh, kw) = attrs["size"]
    return [
        f"for _k in range({kh}):",
        f"    for _l in range({kw}):",
        "        hit = _k == _kk and _l == _ll",
        f"        {name}[_b, _i, _j, _k, _l, _c] = {one} if hit else {zero}",
    ]

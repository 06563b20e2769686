"""Recognising a 2-D convolution, or one of its two derived adjoints, in a contraction node.

conv2d is the indexed contraction ``out[b, i, j, o] = Σ_{k,l,c} x[b, P] · K[k, l, c, o]`` with the
patch read ``P = (s·i + d·k - p, s'·j + d'·l - p', c)``; :func:`graphnn.derive.structural.
contract_adjoint` swaps the output with one operand, so the three accesses (patch of ``x``,
kernel ``K[k, l, c, o]``, cotangent ``g[b, i, j, o]``) appear in every form, in three roles:

- ``forward``: operands x, K; output g-shaped (the convolution),
- ``kernel_grad``: operands x, g; output K-shaped (a correlation of x with g),
- ``input_grad``: operands g, K; output x-shaped, written through the patch (a scatter-add).

A back end may lower each to an im2col gather and one matrix product (the gathered patches are
the rows ``cols[b·i·j, k·l·c]``; ``K`` reshaped is ``(k·l·c, o)``).  Recognition is by the
structure of the accesses, not by index names, so a hand-written :func:`graphnn.contract` of
the same shape is recognised as well; anything else returns None (the loop lowering).

>>> import graphnn as gn
>>> x = gn.input("x", (6, 6, 2)); K = gn.param("K", (3, 3, 2, 4))
>>> nodes = gn.Graph(gn.sum(gn.conv2d(x, K, stride=2, padding=1))).training.nodes
>>> conv = next(n for n in nodes if n.op == "contract")
>>> form = recognise({a: conv.attr(a) for a in ("sizes", "maps", "out")}, conv.inputs)
>>> form.role, form.stride, form.offset, (form.oh, form.ow, form.kh, form.kw, form.c, form.o)
('forward', (2, 2), (-1, -1), (3, 3, 3, 3, 2, 4))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from graphnn.ir.indexed import plain


@dataclass(frozen=True)
class ConvForm:
    """A convolution-shaped contraction: its role, its operands' names by what they are (None
    for the one that is the output), the sizes and the patch's affine coefficients."""

    role: str  # "forward" | "kernel_grad" | "input_grad"
    image: str | None
    kernel: str | None
    grad: str | None
    batch: int | None
    oh: int
    ow: int
    kh: int
    kw: int
    c: int
    o: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    offset: tuple[int, int]  # the patch's constants: minus the padding

    @property
    def patch_size(self) -> int:
        """Columns of the im2col matrix: one per (k, l, c)."""
        return self.kh * self.kw * self.c

    def window(self, axis: int, out_var: str, win_var: str) -> str:
        """The patch's row (axis 0) or column (axis 1) as code: ``2 * _i + _k - 1``."""
        s, d, p = self.stride[axis], self.dilation[axis], self.offset[axis]
        text = f"{s} * {out_var}" if s != 1 else out_var
        text += f" + {d} * {win_var}" if d != 1 else f" + {win_var}"
        return text + (f" + {p}" if p > 0 else f" - {-p}" if p < 0 else "")


def _all_plain(comps) -> list[str] | None:
    names = [plain(a) for a in comps]
    return None if None in names else names


def _split(a, out_idx: str, win_idx: str) -> tuple[int, int, int] | None:
    """(stride, dilation, constant) of ``s·out + d·win + const``; None for another shape."""
    terms, const = a
    coeff = dict(terms)
    if len(terms) != 2 or set(coeff) != {out_idx, win_idx}:
        return None
    if coeff[out_idx] < 1 or coeff[win_idx] < 1:
        return None
    return coeff[out_idx], coeff[win_idx], const


def recognise(attrs: Mapping, names: Sequence[str]) -> ConvForm | None:
    """The :class:`ConvForm` of a contraction (``attrs``: its sizes, maps and out; ``names``:
    its operands), or None when it is not one of the three convolution forms."""
    maps, out = list(attrs["maps"]), attrs["out"]
    sizes = dict(attrs["sizes"])
    if len(maps) != 2 or len(out) != 4 or any(len(m) != 4 for m in maps):
        return None
    accesses = [*maps, out]
    patch_at = [k for k, comps in enumerate(accesses) if _all_plain(comps) is None]
    if len(patch_at) != 1:
        return None
    patch = accesses[patch_at[0]]
    others = [k for k in range(3) if k != patch_at[0]]
    b, c = plain(patch[0]), plain(patch[3])
    if b is None or c is None:
        return None
    plains = {k: _all_plain(accesses[k]) for k in others}
    grad_at = [k for k in others if plains[k][0] == b]
    kernel_at = [k for k in others if plains[k][0] != b]
    if len(grad_at) != 1 or len(kernel_at) != 1:
        return None
    gb, i, j, o = plains[grad_at[0]]
    k, l, kc, ko = plains[kernel_at[0]]  # noqa: E741
    if kc != c or ko != o or len({b, i, j, o, k, l, c}) != 7 or len(sizes) != 7:
        return None
    rows, cols = _split(patch[1], i, k), _split(patch[2], j, l)
    if rows is None or cols is None or None in (sizes[i], sizes[j], sizes[k], sizes[l]):
        return None
    # which access is the output decides the role
    role = {grad_at[0]: "forward", kernel_at[0]: "kernel_grad", patch_at[0]: "input_grad"}[2]
    named = dict(zip(range(3), [*names, None], strict=True))
    return ConvForm(
        role,
        named[patch_at[0]],
        named[kernel_at[0]],
        named[grad_at[0]],
        sizes[b],
        sizes[i],
        sizes[j],
        sizes[k],
        sizes[l],
        sizes[c],
        sizes[o],
        (rows[0], cols[0]),
        (rows[1], cols[1]),
        (rows[2], cols[2]),
    )

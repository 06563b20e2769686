"""The indexed contraction: an einsum whose operands are read at affine functions of the indices.

``out[out(idx)] += prod_m operand_m[map_m(idx)]`` for every point ``idx`` of an iteration space
(named indices with sizes; ``None`` is the batch).  A read outside an operand is zero (padding);
a write outside the output is dropped.  Convolutions, pooling windows and transposed matmuls are
all this one op, and so are their adjoints: the adjoint for operand ``m`` is the same iteration
space with the roles of the output and operand ``m`` swapped (:func:`adjoint`), so no layer has a
derivative rule of its own.

An affine expression is ``(terms, const)`` with ``terms`` a tuple of ``(index, coefficient)``.

>>> import graphnn as gn
>>> x = gn.input("x", (5, 5, 1)); K = gn.param("K", (3, 3, 1, 2))
>>> y = contract([x, K], [(A("b"), A("i", "k"), A("j", "l"), A("c")), tuple(map(A, "klco"))],
...              (A("b"), A("i"), A("j"), A("o")), {"b": None, "i": 3, "j": 3, "k": 3, "l": 3,
...              "c": 1, "o": 2}, (None, 3, 3, 2))
>>> y.shape, show_affine(A("i", "k"))
((None, 3, 3, 2), 'i + k')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from graphnn.errors import GraphError, ShapeError
from graphnn.ir.ops import Tensor, _as_tensor, _label
from graphnn.ir.shapes import Shape, show

Affine = tuple[tuple[tuple[str, int], ...], int]


def A(*terms, const: int = 0) -> Affine:
    """An affine index expression: ``A("i", ("k", 2), const=-1)`` is ``i + 2k - 1``."""
    parts = tuple((t, 1) if isinstance(t, str) else (t[0], int(t[1])) for t in terms)
    return tuple((i, c) for i, c in parts if c != 0), int(const)


def plain(a: Affine) -> str | None:
    """The index of an expression that is just one index (``k``), else None."""
    terms, const = a
    if len(terms) == 1 and terms[0][1] == 1 and const == 0:
        return terms[0][0]
    return None


def show_affine(a: Affine) -> str:
    """``2i + k - 1``: how displays and generated comments write an index expression."""
    terms, const = a
    out = ""
    for idx, c in terms:
        sign = " - " if c < 0 else " + "
        mag = "" if abs(c) == 1 else str(abs(c))
        out += (("-" if c < 0 else "") if not out else sign) + mag + idx
    if const or not out:
        out += str(const) if not out else (" - " if const < 0 else " + ") + str(abs(const))
    return out


def show_access(name: str, comps: Sequence[Affine]) -> str:
    return f"{name}[{', '.join(show_affine(a) for a in comps)}]"


def indices_of(comps: Sequence[Affine]) -> list[str]:
    """The indices an access uses, in order of appearance."""
    return list(dict.fromkeys(i for terms, _ in comps for i, _ in terms))


def _check_access(what: str, comps, dims: Shape, sizes: Mapping[str, int | None]) -> None:
    if len(comps) != len(dims):
        raise ShapeError(f"{what}: {len(comps)} index expressions for shape {show(dims)}")
    seen: set[str] = set()
    for a, d in zip(comps, dims, strict=True):
        for idx, _ in a[0]:
            if idx not in sizes:
                raise GraphError(f"{what}: index '{idx}' has no size")
            if idx in seen:  # each index once per access: the adjoint then inverts the map
                raise GraphError(f"{what}: index '{idx}' appears in two positions")
            seen.add(idx)
            if sizes[idx] is None and plain(a) != idx:
                raise ShapeError(f"{what}: the batch index '{idx}' must stand alone")
        idx = plain(a)
        if idx is not None and sizes[idx] != d:
            raise ShapeError(
                f"{what}: index '{idx}' runs over {show((sizes[idx],))[1:-2]} but indexes a "
                f"dimension of size {show((d,))[1:-2]} in {show(dims)}"
            )


def contract(
    operands: Sequence,
    maps: Sequence[Sequence[Affine]],
    out: Sequence[Affine],
    sizes: Mapping[str, int | None],
    shape: Shape,
    label: str | None = None,
    fn: str = "contract",
) -> Tensor:
    """The indexed contraction (see the module doc); ``sizes`` orders and bounds the indices;
    ``fn`` names it in node names (``conv2d1``)."""
    operands = [_as_tensor(x) for x in operands]
    maps, out = tuple(tuple(m) for m in maps), tuple(out)
    if len(maps) != len(operands) or not operands:
        raise GraphError(f"contract: {len(operands)} operands but {len(maps)} index maps")
    for k, (x, comps) in enumerate(zip(operands, maps, strict=True)):
        if not x.shape:
            raise ShapeError(f"contract operand {k} '{x.label}' must have at least one axis")
        _check_access(f"contract operand {k} '{x.label}'", comps, x.shape, sizes)
    _check_access("contract output", out, tuple(shape), sizes)
    if any(not a[0] for a in out):
        raise GraphError("contract output: every position needs an index")
    used = set(indices_of(out)).union(*(indices_of(m) for m in maps))
    unused = [i for i in sizes if i not in used]
    if unused:
        raise GraphError(f"contract: indices {unused} are not used by any access")
    for idx, d in sizes.items():
        if d is not None and (not isinstance(d, int) or d <= 0):
            raise ShapeError(f"contract: index '{idx}' has size {d!r}; sizes are positive ints")
    attrs = {"sizes": tuple(sizes.items()), "maps": maps, "out": out, "fn": fn}
    text = label or _label("contract(" + ", ".join("{}" for _ in operands) + ")", *operands)
    return Tensor("contract", tuple(operands), tuple(shape), attrs, None, text)

"""The indexed contraction's NumPy rule and display (its adjoint is in ``structural.py``).

NumPy: each operand is gathered at its affine index map over the indices it uses (zero where the
read falls outside it: padding), the gathered arrays are multiplied and summed by ``np.einsum``,
and the result is added into the output at the output map (``np.add.at`` when that map is not a
plain index per axis: the scatter of a convolution's input adjoint).

>>> import numpy as np
>>> from graphnn.ir.indexed import A
>>> attrs = {"sizes": (("i", 3), ("k", 2)), "maps": ((A("i", "k", const=-1),), (A("k"),)),
...          "out": (A("i"),)}
>>> evaluate(attrs, [np.arange(3.0), np.ones(2)], 1, (3,))  # x[i - 1] + x[i]
array([0., 1., 3.])
"""

from __future__ import annotations

import numpy as np

from graphnn.derive.formula import Formula, wrap
from graphnn.ir.indexed import indices_of, plain, show_access


def _grids(used: list[str], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """An arange per index, shaped to broadcast over the axes ``used`` (in that order)."""
    grids = {}
    for axis, idx in enumerate(used):
        shape = [1] * len(used)
        shape[axis] = sizes[idx]
        grids[idx] = np.arange(sizes[idx]).reshape(shape)
    return grids


def _positions(comps, grids, full) -> list[np.ndarray]:
    out = []
    for terms, const in comps:
        pos = np.full(full, const, dtype=np.int64)
        for idx, c in terms:
            pos = pos + c * grids[idx]
        out.append(np.broadcast_to(pos, full))
    return out


def _gather(array: np.ndarray, comps, sizes) -> tuple[np.ndarray, list[str]]:
    """The operand's value at its map over the indices it uses; zero outside the array."""
    used = indices_of(comps)
    grids = _grids(used, sizes)
    full = tuple(sizes[i] for i in used)
    pos = _positions(comps, grids, full)
    valid = np.ones(full, dtype=bool)
    for p, d in zip(pos, array.shape, strict=True):
        valid &= (p >= 0) & (p < d)
    clipped = tuple(np.clip(p, 0, d - 1) for p, d in zip(pos, array.shape, strict=True))
    return np.where(valid, array[clipped] if clipped else array, 0), used


def evaluate(attrs, arrays, n: int, shape) -> np.ndarray:
    """The contraction's value (``attrs`` as the node holds them; ``n`` the batch size)."""
    sizes = {k: n if v is None else v for k, v in attrs["sizes"]}
    letters = {idx: chr(ord("a") + k) for k, idx in enumerate(sizes)}
    parts, subs = [], []
    for array, comps in zip(arrays, attrs["maps"], strict=True):
        values, used = _gather(np.asarray(array), comps, sizes)
        parts.append(values)
        subs.append("".join(letters[i] for i in used))
    out_comps = attrs["out"]
    target = indices_of(out_comps)
    held = [i for i in target if any(letters[i] in s for s in subs)]
    spec = ",".join(subs) + "->" + "".join(letters[i] for i in held)
    product = np.einsum(spec, *parts, optimize=len(parts) > 2)
    # indices only the output uses (an adjoint's window offsets): the product repeats over them
    product = product.reshape([sizes[i] if i in held else 1 for i in target])
    full = tuple(sizes[i] for i in target)
    product = np.broadcast_to(product, full)
    result = np.zeros(shape, dtype=product.dtype)
    if all(plain(a) is not None for a in out_comps):
        return result + product  # the output map is the identity on the kept indices
    pos = _positions(out_comps, _grids(target, sizes), full)
    valid = np.ones(full, dtype=bool)
    for p, d in zip(pos, shape, strict=True):
        valid &= (p >= 0) & (p < d)
    np.add.at(result, tuple(p[valid] for p in pos), product[valid])
    return result


def summed(attrs) -> list[str]:
    """The indices the contraction sums over: every index not plainly an output position."""
    kept = {plain(a) for a in attrs["out"]}
    return [i for i, _ in attrs["sizes"] if i not in kept]


def text(attrs, names: list[str]) -> str:
    """``Σ_{k,l,c} x[b, i + k, j + l, c] · K[k, l, c, o] → [b, i, j, o]``."""
    reads = " · ".join(
        show_access(name, comps) for name, comps in zip(names, attrs["maps"], strict=True)
    )
    over = summed(attrs)
    head = f"Σ_{{{','.join(over)}}} " if over else ""
    return f"{head}{reads} → {show_access('', attrs['out'])}"


def display(node, ins: list[Formula]) -> Formula:
    """The contraction as a formula over its operands' formulas, evaluated by :func:`evaluate`."""
    attrs = {k: node.attr(k) for k in ("sizes", "maps", "out")}
    names = [wrap(f)[0] for f in ins]
    tex_reads = r" \cdot ".join(
        wrap(f)[1] + show_access("", comps) for f, comps in zip(ins, attrs["maps"], strict=True)
    )
    over = ",".join(summed(attrs))
    tex = (rf"\sum_{{{over}}} " if over else "") + tex_reads
    tex += r" \to " + show_access("", attrs["out"])

    def run(v, n):
        shape = tuple(n if d is None else d for d in node.shape)
        return evaluate(attrs, [f.run(v, n) for f in ins], n, shape)

    return Formula("contract", text(attrs, names), tex, tuple(ins), run)

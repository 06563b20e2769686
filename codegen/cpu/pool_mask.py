"""The CPU's argmax mask of a max pool, channels innermost.

The shared form (:func:`codegen.contraction.window_max` then ``window_mask``) scans each window
once per channel and writes the channel's mask entries one by one; it cost image28's step
6.5 ms for a 64x28x28x32 input, 20 times the max pool itself (whose scan the compiler
simplifies, the argmax being unused there).  Here each window is scanned with the channel loop
innermost, so both passes run over contiguous rows: first the maximum of every channel
(``_acc``), then 1 at the first position that holds it.  "First" and NaN are as in the shared
form and np.argmax: ties go to the first position (row-major), a NaN wins over any number,
padding never wins.
"""

from __future__ import annotations

from collections.abc import Callable

from codegen.contraction import spell
from codegen.steps import indent


def _positions(attrs, shape, dim: Callable, body_in: list[str], body_out=None) -> list[str]:
    """Loops over the window at ``_b, _i, _j`` with ``_r, _s`` the input position; ``body_in``
    where it is inside the input, ``body_out`` (if any) in the padding."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["size"], attrs["stride"], attrs["padding"]
    row, col = spell(((("i", sh), ("k", 1)), -ph)), spell(((("j", sw), ("l", 1)), -pw))
    lines = [
        f"for _k in range({kh}):",
        f"    _r = {row}",
        f"    for _l in range({kw}):",
        f"        _s = {col}",
        f"        if 0 <= _r < {dim(shape[1])} and 0 <= _s < {dim(shape[2])}:",
        *indent(body_in, 3),
    ]
    if body_out:
        lines += ["        else:", *indent(body_out, 3)]
    return lines


def mask_lines(attrs, x: str, shape, name: str, out_shape, dim: Callable, literal) -> list[str]:
    """Lines filling ``name`` (of ``out_shape``: b, oh, ow, kh, kw, c) with the argmax mask of
    the windows of ``x`` (of ``shape``)."""
    c, dtype = dim(shape[3]), literal(0).split("(")[0]
    at = f"{x}[_b, _r, _s, _c]"
    scan = [
        "if _first:",
        f"    for _c in range({c}):",
        f"        _acc[_c] = {at}",
        "    _first = False",
        "else:",
        f"    for _c in range({c}):",
        f"        v = {at}",
        "        if v > _acc[_c] or (v != v and _acc[_c] == _acc[_c]):",
        "            _acc[_c] = v",
    ]
    out = f"{name}[_b, _i, _j, _k, _l, _c]"
    mark = [
        f"for _c in range({c}):",
        f"    v = {at}",
        "    hit = not _found[_c] and (v == _acc[_c] or (v != v and _acc[_c] != _acc[_c]))",
        f"    {out} = {literal(1)} if hit else {literal(0)}",
        "    _found[_c] = _found[_c] or hit",
    ]
    pad = [f"for _c in range({c}):", f"    {out} = {literal(0)}"]
    return [
        f"_acc = np.empty(({c},), dtype={dtype})",
        f"_found = np.empty(({c},), dtype=np.bool_)",
        "# per window: the maximum of each channel, then 1 at its first position",
        f"for _b in range({dim(out_shape[0])}):",
        f"    for _i in range({dim(out_shape[1])}):",
        f"        for _j in range({dim(out_shape[2])}):",
        "            _first = True",
        *indent(_positions(attrs, shape, dim, scan), 3),
        f"            for _c in range({c}):",
        "                _found[_c] = False",
        *indent(_positions(attrs, shape, dim, mark, pad), 3),
    ]

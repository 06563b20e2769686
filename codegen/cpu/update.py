"""The optimizer's update as statements: ``apply_update``'s body, and a small model's
written-out update (codegen/cpu/small_step.py) print the same formulas in the same order, so
both compute the same bits.

>>> import graphnn as gn
>>> scalars, body = update_statements(gn.SGD(lr=0.1, momentum=0.9), "float32", "{}_[i]".format)
>>> body[0], body[-1]
('G = G_[i] * gscale', 'P_[i] = P')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from codegen.printer import print_expr


def update_statements(
    optimizer, dtype: str, element: Callable[[str], str], local: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """(the per-step scalars, the statements that update one element).

    ``element(s)`` spells the element of symbol ``s``'s array ("P", "G" or a state buffer);
    ``local`` renames every symbol's variable (see :func:`codegen.names.update_locals`); without
    it the variables are the symbols themselves, as in ``apply_update``.
    """

    def var(symbol) -> str:
        return local[str(symbol)] if local else str(symbol)

    def show(expr) -> str:
        text = print_expr(expr, dtype=dtype)
        return renamed(text, local) if local else text

    scalars = [f"{var(k)} = {show(e)}" for k, e in optimizer.scalars()]
    body = [f"{var('G')} = {element('G')} * gscale"]
    body += [f"{var(s)} = {element(s)}" for s in ["P", *optimizer.state]]
    body += [f"{var(t)} = {show(e)}" for t, e in optimizer.assignments()]
    targets = dict.fromkeys(str(t) for t, _ in optimizer.assignments())
    body += [f"{element(s)} = {var(s)}" for s in targets]
    return scalars, body


def renamed(text: str, names: Mapping[str, str]) -> str:
    """``text`` with every whole word that ``names`` has replaced by its value."""
    pattern = r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b"
    return re.sub(pattern, lambda m: names[m.group(1)], text)

"""Safe evaluation of spec expressions such as ``"relu(x @ W1 + b1)"``.

Spec text is data: it is parsed with ``ast.parse(mode="eval")`` and walked here; it never reaches
``eval``, ``exec``, ``compile`` or ``sympy.sympify``. Phase 1 checks limits and a whitelist
(names, int/float constants, ``+ - * / ** @``, unary ``+ -``, calls of named functions with
numeric keyword constants); phase 2 folds numeric subtrees, guarded to stay finite and within
1e6; only then does phase 3 apply Python operators to the objects in ``names`` and call the
callables in ``functions``: graph tensors and op constructors, or sympy Symbols and functions.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import operator
import re
from collections.abc import Callable, Collection, Mapping

from graphnn.errors import GraphnnError, SpecError

__all__ = ["parse_expression", "check_identifier", "MAX_CONSTANT", "MAX_EXPONENT"]

MAX_CONSTANT = 1e6  # largest magnitude of a literal or folded constant
MAX_EXPONENT = 16  # largest magnitude of a ``**`` exponent
MAX_NODES = 5000
MAX_DEPTH = 100

# fmt: off
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow, ast.MatMult: operator.matmul}
_UNARYOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOLS = {ast.FloorDiv: "//", ast.Mod: "%", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
            ast.BitXor: "^", ast.BitAnd: "&", ast.Invert: "~", ast.Not: "not"}
_CONSTRUCTS = {
    ast.Subscript: "indexing '[...]'", ast.Slice: "slice", ast.Lambda: "lambda",
    ast.IfExp: "conditional expression 'a if b else c'", ast.Compare: "comparison",
    ast.BoolOp: "boolean operator 'and'/'or'", ast.List: "list literal", ast.Tuple: "tuple",
    ast.Set: "set literal", ast.Dict: "dict literal", ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension", ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression", ast.NamedExpr: "assignment expression ':='",
    ast.JoinedStr: "f-string", ast.FormattedValue: "f-string",
    ast.Starred: "argument unpacking '*'", ast.Await: "await", ast.Yield: "yield",
    ast.YieldFrom: "yield from",
}
_LITERAL_KINDS = {str: "string literal", bytes: "bytes literal", bool: "boolean",
                  complex: "complex number", type(None): "None", type(...): "'...'"}
# fmt: on
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _numeric_literal(node: ast.AST) -> int | float | None:
    """The value of ``3``, ``-0.5`` or ``+2``; None for anything else (bools included)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * node.value
    return None


def _suggest(word: str, candidates: Collection[str]) -> str:
    candidates = sorted(c for c in candidates if not c.startswith("_"))
    # "graf" -> "graph" (0.67), "W3" -> "W1" (short names: 0.5); not "metrics" -> "betas" (0.5)
    cutoff = 0.5 if len(word) <= 3 else 0.6
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    if close:
        return f"did you mean {close[0]!r}?"
    more = ", ..." if len(candidates) > 10 else ""
    return f"known: {', '.join(candidates[:10])}{more}" if candidates else "none are defined"


class _Source:
    """The text being parsed, for error messages that name ``where`` and a 1-based column."""

    def __init__(self, text: str, where: str) -> None:
        norm = text.replace("\r\n", "\n").replace("\r", "\n")
        self.body = norm.lstrip()  # a leading indent would be an IndentationError
        prefix = norm[: len(norm) - len(self.body)]
        self.line_shift, self.col_shift = prefix.count("\n"), len(prefix) - prefix.rfind("\n") - 1
        self.lines = self.body.split("\n")
        self.multiline = "\n" in self.body.rstrip()
        self.where = where

    def position(self, lineno: int | None, col: int | None) -> str:
        """``lineno`` is 1-based in the stripped body, ``col`` a 0-based character offset."""
        if lineno is None or col is None:
            return ""
        col += 1 + (self.col_shift if lineno == 1 else 0)
        line = f"line {lineno + self.line_shift}, " if self.multiline else ""
        return f"{line}column {col}"

    def locate(self, node: ast.AST) -> tuple[int, int]:
        """(1-based line, 0-based character column) of ``node``; of the '.' for an attribute."""
        dot = isinstance(node, ast.Attribute)
        at = node.value if dot else node
        lineno, col = (at.end_lineno, at.end_col_offset) if dot else (at.lineno, at.col_offset)
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        col = len(line.encode()[:col].decode("utf-8", "ignore"))  # ast columns are UTF-8 bytes
        return lineno, (line.find(".", col) if dot and "." in line[col:] else col)

    def error(self, message: str, node: ast.AST | None = None, hint: str = "") -> SpecError:
        pos = self.position(*self.locate(node)) if node is not None else ""
        pos, hint = (f" ({pos})" if pos else ""), (f"; {hint}" if hint else "")
        return SpecError(f"{self.where}: {message}{pos}{hint}")

    def segment(self, node: ast.AST) -> str:
        return _short(ast.get_source_segment(self.body, node) or type(node).__name__, 60)


def _problem(node: ast.AST, parent: ast.AST | None, names: Mapping, functions: Mapping):
    """Why ``node`` is not allowed, as (rank, message, hint), or None if it is allowed.

    Rank 0 marks escape attempts (attribute access, '_' names), which are reported first.
    """
    reserved = "is not allowed: names starting with '_' are reserved"
    if isinstance(node, ast.Name):
        ident = node.id
        if ident.startswith("_"):
            return 0, f"name {ident!r} {reserved}", ""
        if isinstance(parent, ast.Call) and parent.func is node:
            if ident in functions:
                return None
            if ident in names:
                return 1, f"{ident!r} is not a function and cannot be called", ""
            return 1, f"unknown function {ident!r}", _suggest(ident, functions)
        if ident in names:
            return None
        if ident in functions:
            return 1, f"{ident!r} is a function; call it as {ident}(...)", ""
        return 1, f"unknown name {ident!r}", _suggest(ident, names)
    if isinstance(node, ast.Constant):
        value, shown = node.value, _short(repr(node.value))
        if type(value) not in (int, float):
            kind = _LITERAL_KINDS.get(type(value), type(value).__name__)
            return 1, f"{kind} {shown} is not allowed", "only int and float constants are"
        # abs() first: math.isfinite(10**500) raises OverflowError (an int has no infinity)
        if abs(value) > MAX_CONSTANT or not math.isfinite(value):
            return 1, f"constant too large: {shown} (limit {MAX_CONSTANT:g})", ""
        return None
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        op = type(node.op)
        if op not in _BINOPS and op not in _UNARYOPS:
            sym = _SYMBOLS.get(op, op.__name__)
            return 1, f"operator {sym!r} is not allowed", "use + - * / ** @"
        exponent = _numeric_literal(node.right) if op is ast.Pow else 0
        if exponent is None:
            return 1, "the exponent of '**' must be a numeric constant", "e.g. x ** 2"
        if abs(exponent) > MAX_EXPONENT:
            return 1, f"exponent {exponent!r} of '**' is too large (limit {MAX_EXPONENT})", ""
        return None
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            return None
        return 1, "calling the result of an expression is not allowed", "call a named function"
    if isinstance(node, ast.keyword):
        if node.arg is None:
            return 1, "argument unpacking '**' is not allowed", ""
        if node.arg.startswith("_"):
            return 0, f"keyword {node.arg!r} {reserved}", ""
        if _numeric_literal(node.value) is None:
            return 1, f"keyword argument {node.arg!r} must be a numeric constant", "e.g. slope=0.2"
        return None
    if isinstance(node, ast.Attribute):
        return 0, f"attribute access '.{node.attr}' is not allowed", ""
    return 1, f"{_CONSTRUCTS.get(type(node), type(node).__name__)} is not allowed", ""


def _check_structure(tree: ast.Expression, src: _Source, names: Mapping, functions: Mapping):
    """Iterative (so no RecursionError) whitelist walk; raises on the most relevant problem."""
    problems, stack, count = [], [(tree.body, 1, None)], 0
    while stack:
        node, depth, parent = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise src.error(f"expression is too large (more than {MAX_NODES} AST nodes)")
        if depth > MAX_DEPTH:
            raise src.error(f"expression is nested more than {MAX_DEPTH} levels deep", node)
        problem = _problem(node, parent, names, functions)
        if problem:
            pow_ = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
            at = node.right if pow_ else node  # a '**' problem is with its exponent
            problems.append((problem[0], src.locate(at), len(problems), at, *problem[1:]))
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr | ast.keyword)]
        stack.extend((child, depth + 1, node) for child in reversed(children))
    if problems:  # escape attempts (attributes, '_' names) first, then in order of appearance
        *_, node, message, hint = min(problems, key=lambda p: p[:3])
        raise src.error(message, node, hint)


def _fold(node: ast.AST, src: _Source, folded: dict) -> int | float | None:
    """Fold purely numeric subtrees into ``folded``; returns the value or None if not constant."""
    if isinstance(node, ast.Constant):
        value = node.value
    elif isinstance(node, ast.UnaryOp):
        operand = _fold(node.operand, src, folded)
        if operand is None:
            return None
        value = _UNARYOPS[type(node.op)](operand)
    elif isinstance(node, ast.BinOp):
        left, right = _fold(node.left, src, folded), _fold(node.right, src, folded)
        if left is None or right is None:
            return None
        try:
            value = _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise src.error(f"cannot compute constant {src.segment(node)!r}: {exc}", node) from None
        if not isinstance(value, int | float):
            raise src.error(f"constant {src.segment(node)!r} is not a real number", node)
        if not math.isfinite(value) or abs(value) > MAX_CONSTANT:
            raise src.error(f"constant too large: {src.segment(node)!r} (limit 1e6)", node)
    else:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr | ast.keyword):
                _fold(child.value if isinstance(child, ast.keyword) else child, src, folded)
        return None
    folded[node] = value
    return value


def _evaluate(node: ast.AST, src: _Source, names: Mapping, functions: Mapping, folded: dict):
    """Phase 3; the tree holds only Name, folded constants, UnaryOp, BinOp and Call by now."""
    if node in folded:
        return folded[node]
    if isinstance(node, ast.Name):
        return names[node.id]
    callee = node.func if isinstance(node, ast.Call) else None
    sub = [_evaluate(c, src, names, functions, folded) for c in ast.iter_child_nodes(node)
           if isinstance(c, ast.expr) and c is not callee]  # fmt: skip
    if isinstance(node, ast.Call):
        fn, kwargs = functions[node.func.id], {kw.arg: folded[kw.value] for kw in node.keywords}
    else:
        fn, kwargs = {**_BINOPS, **_UNARYOPS}[type(node.op)], {}
    try:
        return fn(*sub, **kwargs)
    except GraphnnError as exc:  # keep its type (e.g. ShapeError); say where it happened
        pos = src.position(*src.locate(node))
        exc.add_note(f"while evaluating {src.segment(node)!r} in {src.where} ({pos})")
        raise
    except Exception as exc:
        message = f"evaluating {src.segment(node)!r} failed: {type(exc).__name__}: {exc}"
        raise src.error(message, node) from exc


def parse_expression(text: str, *, names: Mapping[str, object], functions: Mapping[str, Callable],
                     where: str, max_length: int | None = None) -> object:  # fmt: skip
    """Evaluate the spec expression ``text`` over ``names`` and ``functions``, safely.

    ``max_length`` defaults to the budget GRAPHNN_MAX_FORMULA_CHARS (graphnn.budgets).
    Every construct outside the whitelist (see the module docstring) raises :class:`SpecError`
    naming ``where``, the construct and its column, before any object or callable is touched.
    Numeric subexpressions are folded (``2 * 3`` -> 6) with Python semantics (``1/2`` -> 0.5).
    Errors raised by the objects or callables themselves become a SpecError, except graphnn
    errors (e.g. ShapeError), which propagate with a note naming ``where``.

    >>> import sympy
    >>> z = sympy.Symbol("z")
    >>> parse_expression("z / (1 + exp(-z))", names={"z": z}, functions={"exp": sympy.exp},
    ...                  where="ops.toml swish")
    z/(1 + exp(-z))
    >>> parse_expression("x.T", names={"x": z}, functions={}, where="model.toml [graph] h")
    Traceback (most recent call last):
    graphnn.errors.SpecError: model.toml [graph] h: attribute access '.T' is not allowed (column 2)
    """
    if not isinstance(text, str):
        raise SpecError(f"{where}: expected an expression string, got {type(text).__name__}")
    if max_length is None:
        from graphnn.budgets import limit

        max_length = limit("GRAPHNN_MAX_FORMULA_CHARS")
    if len(text) > max_length:
        raise SpecError(
            f"{where}: expression has {len(text)} characters; limit {max_length} "
            "(GRAPHNN_MAX_FORMULA_CHARS)"
        )
    if not text.strip():
        raise SpecError(f"{where}: empty expression")
    src = _Source(text, where)
    try:
        tree = ast.parse(src.body, mode="eval")
    except SyntaxError as exc:
        line = src.lines[exc.lineno - 1] if 0 < (exc.lineno or 0) <= len(src.lines) else ""
        col = exc.offset - 1 if exc.offset else len(line)  # offset 0: at the end of the input
        pos = src.position(exc.lineno, col)
        raise SpecError(f"{where}: syntax error: {exc.msg}" + (pos and f" ({pos})")) from None
    except (RecursionError, MemoryError):
        raise SpecError(f"{where}: expression is nested too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise SpecError(f"{where}: cannot parse expression: {exc}") from None
    _check_structure(tree, src, names, functions)
    folded: dict = {}
    _fold(tree.body, src, folded)
    return _evaluate(tree.body, src, names, functions, folded)


def check_identifier(name: str, *, where: str, reserved: Collection[str]) -> None:
    """Raise SpecError unless ``name`` is fit to name a user's node or function.

    It must be an ASCII identifier of at most 100 characters, not start with ``_``, not be a
    Python keyword, and not shadow a reserved name such as a built-in op.

    >>> check_identifier("hidden1", where="model.toml [graph]", reserved={"relu"})
    >>> check_identifier("relu", where="g", reserved={"relu"})
    Traceback (most recent call last):
    graphnn.errors.SpecError: g: name 'relu' shadows the built-in op 'relu'; choose another name
    """
    if not isinstance(name, str):
        raise SpecError(f"{where}: a name must be a string, got {type(name).__name__}")
    shown = _short(repr(name))
    if len(name) > 100:
        raise SpecError(f"{where}: name {shown} is longer than 100 characters")
    if name.startswith("_"):
        raise SpecError(f"{where}: name {shown} starts with '_'; such names are reserved")
    if not _IDENTIFIER.fullmatch(name):
        raise SpecError(f"{where}: name {shown} is not a plain identifier (ASCII letters, "
                        "digits and '_', not starting with a digit)")  # fmt: skip
    if keyword.iskeyword(name):
        raise SpecError(f"{where}: name {shown} is a Python keyword; choose another name")
    if name in reserved:
        raise SpecError(
            f"{where}: name {shown} shadows the built-in op {shown}; choose another name"
        )

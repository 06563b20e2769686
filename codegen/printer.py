"""Print scalar SymPy expressions as float32-exact Python source for Numba kernels.

The stock SymPy printers upcast float32 to float64 (a bare ``0.5`` is float64 in Numba) and emit
calls njit cannot compile (``amax``, ``select``). Here constants are typed (``np.float32(0.5)``),
integer powers become products, Piecewise/Heaviside/Max/Min become ternaries, and a SymPy class
without a rule raises ``UnsupportedExpression`` rather than printing something wrong.

>>> import sympy
>>> z = sympy.Symbol("z")
>>> print(print_expr(1 / (1 + sympy.exp(-z))))
np.float32(1.0)/(np.float32(1.0) + np.exp(-z))
"""

from __future__ import annotations

import functools
import math
from functools import partialmethod

import numpy as np
import sympy
from sympy.codegen.cfunctions import expm1, log1p
from sympy.core.function import Function
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.pycode import PythonCodePrinter

from graphnn.errors import CodegenError
from graphnn.ir.elementwise import nan_guarded

__all__ = ["KernelPrinter", "UnsupportedExpression", "print_expr"]

_ATOM = PRECEDENCE["Atom"]
_MAX_EXPANDED_POWER = 8  # beyond this a pow call is cheaper than the product chain

# One-to-one calls. numpy has no erf; Numba's math.erf keeps float32.
_FUNCTIONS = {f: f.__name__ for f in (sympy.exp, expm1, sympy.log, log1p, sympy.erf, sympy.erfc)}
_FUNCTIONS |= {f: f.__name__ for f in (sympy.tanh, sympy.sinh, sympy.cosh, sympy.atan)}
_FUNCTIONS |= {f: f.__name__ for f in (sympy.sin, sympy.cos, sympy.tan)}
_FUNCTIONS[sympy.Abs] = "abs"
_NP_NAMES = {"atan": "np.arctan", "erf": "math.erf", "erfc": "math.erfc", "abs": "abs"}


class UnsupportedExpression(CodegenError):
    """A back end has no printing rule for a SymPy class; the message names both."""


class KernelPrinter(PythonCodePrinter):
    """SymPy printer whose output compiles under ``numba.njit`` / ``numba.cuda.jit`` in ``dtype``.

    >>> import sympy
    >>> y = sympy.Symbol("y")
    >>> KernelPrinter("float64", "math", "cuda").doprint(y * (1 - y))
    'y*(np.float64(1.0) - y)'
    """

    def __init__(
        self,
        dtype: str = "float32",
        fn_module: str = "np",
        backend: str = "cpu",
        fast_tanh: bool = False,
    ):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
        if fn_module not in ("np", "math"):
            raise ValueError(f"fn_module must be 'np' or 'math', not {fn_module!r}")
        super().__init__({"strict": True})
        self.dtype, self.fn_module, self.backend = dtype, fn_module, backend
        self.fast_tanh = fast_tanh  # tanh as codegen.cpu.approx.tanh_r (vectorizes; 3.3e-7 rel)
        # Only rules written in KernelPrinter (or a subclass) count: the inherited SymPy rules
        # print things like Sum or gamma in forms Numba cannot compile or that lose float32.
        own = type(self).__mro__[: type(self).__mro__.index(KernelPrinter) + 1]
        self._rules = {n for c in own for n in vars(c) if n.startswith("_print_")}

    def doprint(self, expr, assign_to=None) -> str:
        code = self._print(expr)
        return code if assign_to is None else f"{assign_to} = {code}"

    def _print(self, expr, **kwargs) -> str:
        expr = sympy.sympify(expr, strict=True)
        if isinstance(expr, sympy.Expr) and expr.is_number:
            return self._constant(expr)
        rule = self._rule(expr)
        if rule is None:
            raise self._unsupported(expr)
        return rule(expr)

    def _rule(self, expr):
        classes = type(expr).__mro__
        if issubclass(type(expr), Function):
            # A subclass of exp (or an undefined Function named 'exp') is not exp.
            classes = classes[:1]
        for cls in classes:
            if f"_print_{cls.__name__}" in self._rules:
                return getattr(self, f"_print_{cls.__name__}")
            if cls in _FUNCTIONS:
                return self._call
        return None

    def _unsupported(self, expr) -> UnsupportedExpression:
        cls = type(expr).__name__
        msg = f"the {self.backend} back end cannot print SymPy class '{cls}' (in {expr})"
        return UnsupportedExpression(msg)

    def _constant(self, expr) -> str:
        # Fold numeric subtrees (sqrt(2)/2, pi, ...) into one typed literal, but only if every
        # node could be printed: besselj(0, 1) must still raise.
        for node in sympy.preorder_traversal(expr):
            if not isinstance(node, (sympy.Number, sympy.NumberSymbol)) and not self._rule(node):
                raise self._unsupported(node)
        try:
            value = float(expr)
        except TypeError:  # complex or zoo
            raise self._unsupported(expr) from None
        if math.isnan(value) or math.isinf(value):
            m = self.fn_module  # math.nan in CUDA kernels, which call math.* only
            text = {"nan": f"{m}.nan", "inf": f"{m}.inf", "-inf": f"-{m}.inf"}[str(value)]
        elif self.dtype == "float32":
            text = str(np.float32(value))  # shortest literal that round-trips in float32
        else:
            text = repr(value)
        return f"np.{self.dtype}({text})"

    def _fn(self, name: str) -> str:
        if name == "tanh" and self.fast_tanh:
            return "tanh_r"
        if self.fn_module == "np":
            return _NP_NAMES.get(name, f"np.{name}")
        return "abs" if name == "abs" else f"math.{name}"  # abs: a builtin in cuda.jit too

    def _prec(self, expr) -> int:
        """Precedence of the text *this* printer emits (x**2 prints as a product, etc.)."""
        if isinstance(expr, sympy.Expr) and expr.is_number:
            return _ATOM
        if isinstance(expr, sympy.Pow):
            if self._int_exponent(expr.exp) == 1:
                return self._prec(expr.base)
            if self._is_half(expr.exp):
                return _ATOM
            if self._int_exponent(expr.exp) is not None or expr.exp.is_extended_negative:
                return PRECEDENCE["Mul"]
        if isinstance(expr, sympy.Mul | sympy.Add | sympy.Pow):
            return precedence(expr)
        return _ATOM  # calls, and ternaries/relationals, which are always parenthesized

    def _paren(self, expr, level: int, strict: bool = False) -> str:
        text = self._print(expr)
        p = self._prec(expr)
        return f"({text})" if p < level or (strict and p <= level) else text

    @staticmethod
    def _int_exponent(e):
        if e.is_number and e.is_real and float(e).is_integer() and 0 < e <= _MAX_EXPANDED_POWER:
            return int(e)
        return None

    @staticmethod
    def _is_half(e) -> bool:
        return bool(e.is_number and e.is_real and float(e) == 0.5)  # Rational or Float 0.5

    def _divide(self, num: str, dens) -> str:
        if len(dens) == 1:
            return f"{num}/{self._paren(dens[0], PRECEDENCE['Pow'])}"
        return f"{num}/(" + "*".join(self._paren(d, PRECEDENCE["Mul"]) for d in dens) + ")"

    def _print_Symbol(self, expr) -> str:
        return super()._print_Symbol(expr)

    def _print_Add(self, expr) -> str:
        # Positive terms first, so 1 - y reads as written rather than SymPy's -y + 1.
        terms = sorted(expr.as_ordered_terms(), key=lambda t: t.could_extract_minus_sign())
        out = self._print(terms[0])
        for term in terms[1:]:
            if term.could_extract_minus_sign():
                out += " - " + self._paren(-term, PRECEDENCE["Add"], strict=True)
            else:
                out += " + " + self._print(term)
        return out

    def _print_Mul(self, expr) -> str:
        if expr.could_extract_minus_sign():
            return "-" + self._paren(-expr, PRECEDENCE["Mul"])
        const = sympy.Mul(*[a for a in expr.args if a.is_number])
        nums, dens = [], []
        for a in expr.args:
            if a.is_number:
                continue
            if isinstance(a, sympy.Pow) and a.exp.is_number and a.exp.is_extended_negative:
                dens.append(sympy.Pow(a.base, -a.exp, evaluate=False))
            else:
                nums.append(a)
        parts = [self._print(const)] if const != 1 or not nums else []
        num = "*".join(parts + [self._paren(a, PRECEDENCE["Mul"]) for a in nums])
        return self._divide(num, dens) if dens else num

    def _print_Pow(self, expr) -> str:
        base, e = expr.base, expr.exp
        if e.is_number and e.is_extended_negative:
            return self._divide(self._print(sympy.S.One), [sympy.Pow(base, -e, evaluate=False)])
        n = self._int_exponent(e)
        if n == 1:  # only from the evaluate=False powers built for denominators
            return self._print(base)
        if n is not None:
            return "*".join([self._paren(base, PRECEDENCE["Mul"], strict=True)] * n)
        if self._is_half(e):
            return f"{self._fn('sqrt')}({self._print(base)})"
        pow_ = PRECEDENCE["Pow"]
        return f"{self._paren(base, pow_, strict=True)}**{self._paren(e, pow_, strict=True)}"

    def _call(self, expr) -> str:
        args = ", ".join(self._print(a) for a in expr.args)
        return f"{self._fn(_FUNCTIONS[type(expr)])}({args})"

    def _print_log(self, expr) -> str:
        rest = expr.args[0] - 1
        if isinstance(expr.args[0], sympy.Add) and sympy.S.One in expr.args[0].args:
            return f"{self._fn('log1p')}({self._print(rest)})"  # exact for small x
        return self._call(expr)

    def _print_Phi(self, expr) -> str:
        # the normal CDF as erfc(-z/sqrt 2)/2: exact in both tails (1 + erf cancels below -27)
        (z,) = expr.args
        return self._print(sympy.erfc(-z / sympy.sqrt(2), evaluate=False) / 2)

    def _print_sign(self, expr) -> str:
        x = self._print(expr.args[0])
        if self.fn_module == "np":
            return f"np.sign({x})"
        one, minus = self._print(sympy.S.One), self._print(sympy.S.NegativeOne)
        return f"({one} if {x} > 0 else ({minus} if {x} < 0 else {x}))"  # else: 0 or nan

    def _print_Piecewise(self, expr) -> str:
        # A Piecewise without a True branch is undefined elsewhere: NaN says so loudly.  The
        # default branch is guarded, so a NaN input, failing every comparison, gives NaN too.
        out = self._print(sympy.S.NaN)
        for value, cond in reversed(nan_guarded(expr.args)):
            if cond == sympy.true:
                out = self._print(value)
            else:
                out = f"({self._print(value)} if {self._print(cond)} else {out})"
        return out

    def _print_Heaviside(self, expr) -> str:
        x = self._print(expr.args[0])
        h0 = expr.args[1] if len(expr.args) > 1 else sympy.S.Half
        one, zero = self._print(sympy.S.One), self._print(sympy.S.Zero)
        nan = self._print(sympy.S.NaN)  # H(NaN) is NaN: the last test fails for NaN only
        if h0 == 0:
            return f"({one} if {x} > 0 else ({zero} if {x} <= 0 else {nan}))"
        if h0 == 1:
            return f"({one} if {x} >= 0 else ({zero} if {x} < 0 else {nan}))"
        inner = f"({self._print(h0)} if {x} == 0 else ({zero} if {x} < 0 else {nan}))"
        return f"({one} if {x} > 0 else {inner})"

    def _minmax(self, expr, op: str) -> str:
        # Constants go in the tested branch so a NaN operand falls through to the else branch
        # and propagates, as np.maximum does.
        args = sorted(expr.args, key=lambda a: not a.is_number)
        out = self._print(args[-1])
        for a in reversed(args[:-1]):
            head = self._print(a)
            out = f"({head} if {out} {op} {head} else {out})"
        return out

    _print_Max = partialmethod(_minmax, op="<")
    _print_Min = partialmethod(_minmax, op=">")

    def _print_Relational(self, expr) -> str:
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_BooleanAtom(self, expr) -> str:
        return str(bool(expr))

    def _join(self, expr, sep: str) -> str:
        return "(" + sep.join(self._print(a) for a in expr.args) + ")"

    _print_And = partialmethod(_join, sep=" and ")
    _print_Or = partialmethod(_join, sep=" or ")

    def _print_Not(self, expr) -> str:
        return f"(not {self._print(expr.args[0])})"


def print_expr(
    expr: sympy.Expr,
    dtype: str = "float32",
    fn_module: str = "np",
    backend: str = "cpu",
    fast_tanh: bool = False,
) -> str:
    """Print ``expr`` as a Python expression for a Numba kernel computing in ``dtype``.

    >>> import sympy
    >>> z = sympy.Symbol("z")
    >>> relu = print_expr(sympy.Piecewise((z, z > 0), (0, True)))
    >>> print(relu.replace("np.float32", "f32"))  # NaN fails both tests: relu(NaN) is NaN
    (z if (z > f32(0.0)) else (f32(0.0) if (z <= f32(0.0)) else f32(np.nan)))
    >>> print_expr(sympy.tanh(z) ** 2, fn_module="math", backend="cuda")
    'math.tanh(z)*math.tanh(z)'
    """
    return KernelPrinter(dtype, fn_module, backend, fast_tanh).doprint(expr)


@functools.cache
def kernel_float32(expr: sympy.Expr, args: tuple[sympy.Symbol, ...]):
    """``expr`` as the float32 CPU kernels compute it: this printer's text (``log1p``, typed
    constants, ternaries, the rational ``tanh_r``), run on NumPy float32 scalars.

    The stability screen probes this rather than ``sympy.lambdify``, whose NumPy code differs
    from what runs (``log(1 + x)`` without log1p, libm's tanh).  The kernels compile without
    fast-math flags (codegen.emit.JIT), so per-operation float32 arithmetic is what they do.
    """
    text = print_expr(expr, dtype="float32", fast_tanh=True)
    namespace = {"np": np, "math": math, "tanh_r": _python_tanh_r()}
    body = eval(f"lambda {', '.join(map(str, args))}: {text}", namespace)  # noqa: S307 - our printer's text

    def run(*values):
        with np.errstate(all="ignore"):
            return np.float32(body(*(np.float32(v) for v in values)))

    return run


@functools.cache
def _python_tanh_r():
    """codegen.cpu.approx's tanh_r as plain Python on float32 scalars (njit is only a decorator)."""
    from codegen.cpu.approx import tanh_source

    namespace = {"np": np, "njit": lambda *a, **k: lambda f: f}
    exec(tanh_source("float32"), namespace)  # noqa: S102 - source generated by codegen.cpu.approx
    return namespace["tanh_r"]

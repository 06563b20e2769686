"""KernelPrinter: each row compiles under numba.njit, stays float32 and matches SymPy in float64."""

import math
import re

import numba
import numpy as np
import pytest
import sympy as sp

from codegen.printer import KernelPrinter, UnsupportedExpression, print_expr
from graphnn.errors import CodegenError

z, t = sp.symbols("z t")
T_VALUES = (0.0, 0.3, 1.0)

sigmoid = 1 / (1 + sp.exp(-z))
relu = sp.Piecewise((z, z > 0), (0, True))
leaky = sp.Piecewise((z, z > 0), (sp.Float(0.01) * z, True))
elu = sp.Piecewise((z, z > 0), (sp.exp(z) - 1, True))
softplus = sp.log(1 + sp.exp(z))
gelu = z * (1 + sp.erf(z / sp.sqrt(2))) / 2
silu = z / (1 + sp.exp(-z))


def row(name, expr, lo, hi, ts=T_VALUES):
    return pytest.param(expr, (lo, hi), ts, id=name)


# One row per expression with the z domain it is checked on; t takes each of ts.
ROWS = [
    row("sigmoid", sigmoid, -12, 12),
    row("sigmoid'(z)", sp.diff(sigmoid, z), -12, 12),
    row("sigmoid'(y)", z * (1 - z), 0, 1),
    row("tanh", sp.tanh(z), -6, 6),
    row("tanh'(z)", sp.diff(sp.tanh(z), z), -6, 6),
    row("tanh'(y)", 1 - z**2, -1, 1),
    row("relu", relu, -3, 3),
    row("relu'", sp.diff(relu, z), -3, 3),
    row("leaky_relu", leaky, -3, 3),
    row("leaky_relu'", sp.diff(leaky, z), -3, 3),
    row("elu", elu, -4, 4),
    row("elu'", sp.diff(elu, z), -4, 4),
    row("softplus", softplus, -12, 12),
    row("softplus'", sp.diff(softplus, z), -12, 12),
    row("gelu", gelu, -5, 5),
    row("gelu'", sp.diff(gelu, z), -5, 5),
    row("silu", silu, -8, 8),
    row("silu'", sp.diff(silu, z), -8, 8),
    row("heaviside0", sp.Heaviside(z, 0), -2, 2),
    row("heaviside_half", sp.Heaviside(z), -2, 2),
    row("max", sp.Max(z, t), -2, 2),
    row("max0", sp.Max(0, z), -2, 2),
    row("min3", sp.Min(z, t, sp.Rational(1, 2)), -2, 2),
    row("square", z**2, -3, 3),
    row("inv_square", z**-2, 0.5, 4),
    row("sqrt", z**0.5, 0.1, 9),
    row("rsqrt", 1 / sp.sqrt(z), 0.1, 9),
    row("cube", z**3, -3, 3),
    row("cbrt", z ** sp.Rational(1, 3), 0.1, 8),
    row("pow9", z**9, -2, 2),
    row("div", (z - 1) / (t + 2), -3, 3),
    row("neg_coeff_div", -2 * z / (t + 1) ** 2, -3, 3),
    row("log1p", sp.log(1 + z), -0.5, 3),
    row("abs_sign", sp.Abs(z) * sp.sign(z - 1), -3, 3),
    row("pi_e", sp.pi * z + sp.E, -1, 1),
    row(
        "and_or_not",
        sp.Piecewise((z, (z > 0) & ((t > 0.5) | sp.Not(sp.And(z < 1, t < 0.2)))), (0, True)),
        -2,
        2,
    ),
    row("bce_logits", relu - z * t + sp.log(1 + sp.exp(-sp.Abs(z))), -20, 20),
]


def compile_src(src):
    return numba.njit(eval("lambda z, t: " + src, {"np": np, "math": math}))


def run(expr, domain, ts, dtype="float32", fn_module="np"):
    """Compile the printed expr, check its return type, and compare with SymPy in float64."""
    ftype = np.dtype(dtype).type
    kernel = compile_src(print_expr(expr, dtype=dtype, fn_module=fn_module))
    reference = sp.lambdify((z, t), expr, modules="mpmath")
    got, want = [], []
    for zv in np.linspace(*domain, 7):
        for tv in ts:
            zi, ti = ftype(zv), ftype(tv)
            got.append(kernel(zi, ti))
            want.append(float(reference(float(zi), float(ti))))
    # Numba boxes every float scalar as a Python float, so the dtype is read off the signature.
    (sig,) = kernel.nopython_signatures
    assert sig.return_type == numba.from_dtype(np.dtype(dtype)), sig
    got = np.array(got)
    assert np.array_equal(got.astype(ftype).astype(float), got)  # values are dtype-rounded
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("expr, domain, ts", ROWS)
def test_cpu_float32(expr, domain, ts):
    run(expr, domain, ts)


@pytest.mark.parametrize("expr, domain, ts", ROWS)
def test_cuda_style_float32(expr, domain, ts):
    # The math.* spelling is what cuda.jit gets; njit compiles it too, with the same typing.
    assert "np." not in print_expr(expr, fn_module="math").replace("np.float32(", "")
    run(expr, domain, ts, fn_module="math")


@pytest.mark.parametrize("expr, domain, ts", [ROWS[1], ROWS[15], ROWS[-1]])
def test_float64(expr, domain, ts):
    assert "float32" not in print_expr(expr, dtype="float64")
    run(expr, domain, ts, dtype="float64")


@pytest.mark.parametrize(
    "expr, expected",
    [
        (z**2, "z*z"),
        (z**3, "z*z*z"),
        (z**-2, "np.float32(1.0)/(z*z)"),
        (z ** sp.Rational(1, 2), "np.sqrt(z)"),
        (z**0.5, "np.sqrt(z)"),
        (z**0.3, "z**np.float32(0.3)"),
        (sp.Rational(1, 2) * z, "np.float32(0.5)*z"),
        (1 - t, "np.float32(1.0) - t"),
        (z / t, "z/t"),
        (sigmoid, "np.float32(1.0)/(np.float32(1.0) + np.exp(-z))"),
        (softplus, "np.log1p(np.exp(z))"),
        (
            relu,  # NaN fails both comparisons: relu(NaN) is NaN
            "(z if (z > np.float32(0.0)) else "
            "(np.float32(0.0) if (z <= np.float32(0.0)) else np.float32(np.nan)))",
        ),
        (
            sp.Heaviside(z, 0),
            "(np.float32(1.0) if z > 0 else (np.float32(0.0) if z <= 0 else np.float32(np.nan)))",
        ),
        (sp.erf(z), "math.erf(z)"),
        (sp.Abs(z), "abs(z)"),
        (
            sp.And(z > 0, sp.Not(t > 0, evaluate=False)),
            "((z > np.float32(0.0)) and (not (t > np.float32(0.0))))",
        ),
    ],
)
def test_readable_output(expr, expected):
    assert print_expr(expr) == expected


def test_math_module_spelling():
    src = print_expr(sp.exp(z) + sp.log(z) + sp.tanh(z) + sp.sqrt(z) + sp.sign(z), fn_module="math")
    for name in ("math.exp(z)", "math.log(z)", "math.tanh(z)", "math.sqrt(z)"):
        assert name in src
    assert "sign" not in src  # sign is a ternary: cuda.jit has no np.sign
    assert print_expr(sp.log(1 + z), fn_module="math") == "math.log1p(z)"


def test_relu_derivative_at_zero_is_zero():
    kernel = compile_src(print_expr(sp.Heaviside(z, 0)))
    assert kernel(np.float32(0.0), np.float32(0.0)) == 0.0
    assert compile_src(print_expr(sp.Heaviside(z)))(np.float32(0.0), np.float32(0.0)) == 0.5
    assert sp.diff(sp.Max(0, z), z) == sp.Heaviside(z)  # why the convention must be explicit


@pytest.mark.parametrize(
    "expr, cls",
    [
        (sp.Function("foo")(z), "foo"),
        (sp.Function("exp")(z), "exp"),  # an undefined function named like a known one
        (sp.besselj(0, z), "besselj"),
        (sp.zeta(z), "zeta"),
        (z * sp.besselj(0, 1), "besselj"),  # constant folding must not hide it
        (sp.gamma(z) + 1, "gamma"),  # stock PythonCodePrinter prints math.gamma
        (sp.DiracDelta(z), "DiracDelta"),
        (sp.I * z, "ImaginaryUnit"),
        (sp.Sum(z, (t, 0, 3)), "Sum"),
    ],
)
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_strict_unknown_class(expr, cls, backend):
    with pytest.raises(UnsupportedExpression) as info:
        print_expr(expr, backend=backend)
    assert f"'{cls}'" in str(info.value) and f"the {backend} back end" in str(info.value)
    assert isinstance(info.value, CodegenError)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        KernelPrinter(dtype="float16")
    with pytest.raises(ValueError, match="fn_module"):
        KernelPrinter(fn_module="cupy")


def kernel_ir(src):
    """LLVM IR of the compiled kernel body, without the CPython wrapper (which boxes via double)."""
    kernel = compile_src(src)
    kernel(np.float32(0.5), np.float32(0.5))
    ir = kernel.inspect_llvm(kernel.signatures[0])
    blocks = re.split(r"^(?=define |declare )", ir, flags=re.M)
    bodies = [b for b in blocks if b.startswith("define") and "cpython" not in b.splitlines()[0]]
    assert bodies
    return "\n".join(bodies)


DOUBLE_OPS = ("fadd double", "fmul double", "fdiv double", "fsub double", "fpext")


def test_sigmoid_derivative_ir_has_no_double():
    body = kernel_ir(print_expr(sp.diff(sigmoid, z)))
    assert "fdiv float" in body  # the body really is in the text inspected
    assert not [op for op in DOUBLE_OPS if op in body], body


def test_ir_check_catches_a_bare_literal():
    # The same kernel with one untyped 1.0 (what the stock printers emit) promotes to double.
    body = kernel_ir("np.exp(-z)/((1.0 + np.exp(-z))*(1.0 + np.exp(-z)))")
    assert any(op in body for op in DOUBLE_OPS)

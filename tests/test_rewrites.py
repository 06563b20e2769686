"""User formulas: unstable patterns are rewritten, and what no rewrite fixes warns with a hint."""

import math
import textwrap
import warnings

import mpmath
import numpy as np
import pytest
import sympy

import graphnn as gn
from codegen.printer import kernel_float32
from graphnn.errors import StabilityWarning
from graphnn.inspect.audit import check_function
from graphnn.ir.elementwise import ARGS, ELEMENTWISE
from graphnn.ir.rewrites import rewrite
from graphnn.spec.build import load_spec

z = sympy.Symbol("z", real=True)
a = ARGS[0]


def _exact(expr, x: float) -> float:
    with mpmath.workdps(50):
        return float(sympy.lambdify(z, expr, "mpmath")(mpmath.mpf(x)))


PATTERNS = {
    "softplus": sympy.log(1 + sympy.exp(z)),
    "softplus_of_2z": sympy.log(1 + sympy.exp(-2 * z)),
    "log_sigmoid": sympy.log(1 / (1 + sympy.exp(-z))),
    "sigmoid_ratio": 3 * sympy.exp(z) / (1 + sympy.exp(z)),
    "mish": z * sympy.tanh(sympy.log(1 + sympy.exp(z))),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_a_known_pattern_is_rewritten_to_a_form_finite_in_float32(name):
    f = PATTERNS[name]
    g = rewrite(f)
    assert g != f
    run = kernel_float32(g, (z,))
    for x in (-1e4, -89.0, -20.0, -0.5, 0.0, 0.7, 20.0, 89.0, 1e4):
        want = _exact(f, x)
        got = float(run(x))
        assert math.isfinite(got), (x, got)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-30), x


def test_no_rewrite_for_stable_formulas():
    for f in (1 / (1 + sympy.exp(-z)), sympy.log(2 + z**2), z * sympy.exp(-(z**2))):
        assert rewrite(f) == f


def test_a_user_mish_is_rewritten_and_trains_finite_past_z_89():
    """z*tanh(log(1 + exp(z))) was Inf/NaN in float32 for z >= 89 in every derived form."""
    mish = gn.elementwise("mish", PATTERNS["mish"], [z])
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        g = gn.Graph(gn.sum(mish(gn.param("p", (6,)))))
    points = np.array([-30.0, 0.5, 87.0, 88.0, 89.0, 100.0])
    sp = np.logaddexp(0.0, points)  # softplus in float64, independently of graphnn
    value = points * np.tanh(sp)
    slope = np.tanh(sp) + points * (1 - np.tanh(sp) ** 2) / (1 + np.exp(-points))
    for backend in ("numpy", "cpu"):
        loss, grads = g.value_and_grad({"p": points.astype(np.float32)}, {}, backend=backend)
        assert loss == pytest.approx(value.sum(), rel=1e-6)
        np.testing.assert_allclose(grads["p"], slope, rtol=1e-5, atol=1e-12, err_msg=backend)


def test_what_no_rewrite_fixes_warns_with_the_overflowing_exp_and_the_rewrite():
    lse2 = gn.elementwise("lse2", sympy.log(2 + sympy.exp(z)), [z])
    with pytest.warns(StabilityWarning) as record:
        gn.Graph(gn.sum(lse2(gn.param("p", (3,)))))
    (message,) = [str(w.message) for w in record]
    assert message.startswith("function 'lse2': in float32 its value is NaN or Inf at z = ")
    assert "exp overflows float32 there: exp(z)" in message
    assert "softplus(u) = u + log(1 + exp(-u))" in message


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_every_builtin_op_passes_the_float32_screen(op):
    """Its value and the chosen form of each derivative, as the kernels print them."""
    row = ELEMENTWISE[op]
    f = row.formula(**{k: sympy.Float(v) for k, v in row.params.items()})
    assert check_function(op, f, tuple(map(str, ARGS[: row.arity]))) == []


def test_a_spec_function_is_rewritten_and_can_name_softplus(tmp_path):
    text = textwrap.dedent(
        """
        [inputs]
        x = [2]
        y = [1]
        [params]
        W = [2, 1]
        [functions]
        mish = "z*tanh(log(1 + exp(z)))"
        mish2 = "z*tanh(softplus(z))"
        [graph]
        h = "mish(x @ W) + mish2(x @ W)"
        loss = "mse(h, y)"
        """
    )
    path = tmp_path / "mish.toml"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        spec = load_spec(path)
    big = {"W": np.full((2, 1), 50.0, np.float32)}
    data = {"x": np.ones((3, 2), np.float32), "y": np.zeros((3, 1), np.float32)}
    loss, grads = spec.graph.value_and_grad(big, data, backend="cpu")  # x @ W = 100
    assert loss == pytest.approx(200.0**2, rel=1e-6)
    assert np.all(np.isfinite(grads["W"]))

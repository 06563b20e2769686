"""The stability screen: each derivative is chosen among equivalent forms by its float32 results.

A derivative that is right on paper can be NaN in float32 (``exp(-z)/(1 + exp(-z))**2`` at
z = -1e4 is inf/inf).  These tests pin down which form the screen picks and that the chosen form
is finite and accurate at the extremes, both as an expression and through a whole graph.
"""

import numpy as np
import pytest
import scipy.special
import sympy

import graphnn as gn
from codegen.printer import kernel_float32
from graphnn.derive.screen import SCREEN_POINTS, probe
from graphnn.derive.store import derivative
from graphnn.ir.elementwise import ARGS, ELEMENTWISE, Y

z, t = ARGS[0], ARGS[1]


def chosen(op):
    return derivative(ELEMENTWISE[op].formula(), 0, 1)


def candidate(d, form):
    return next(c for c in d.candidates if c.form == form)


def at_float32(f, d, points, *others):
    """The chosen derivative d of f evaluated in float32 at points (other arguments fixed)."""
    nargs = 1 + len(others)
    args = [np.asarray(points, np.float32)] + [np.full(len(points), o, np.float32) for o in others]
    with np.errstate(all="ignore"):
        y = sympy.lambdify(ARGS[:nargs], f, "numpy")(*args)
        y = np.asarray(np.broadcast_to(y, args[0].shape), np.float32)
        out = sympy.lambdify((*ARGS[:nargs], Y), d.expr, "numpy")(*args, y)
    return np.broadcast_to(np.asarray(out), args[0].shape)


def param_grad32(build, points):
    """d sum(build(p)) / dp on the float32 reference back end at p = points."""
    p = gn.param("p", (len(points),))
    g = gn.Graph(gn.sum(build(p)))
    _, grads = g.value_and_grad({"p": np.asarray(points, np.float32)}, {})
    assert grads["p"].dtype == np.float32
    return grads["p"]


# --- sigmoid and tanh: the output form ------------------------------------------------------


def test_sigmoid_derivative_is_output_form():
    d = chosen("sigmoid")
    assert d.form == "output"
    assert d.uses_output
    assert sympy.simplify(d.expr - Y * (1 - Y)) == 0
    assert z not in d.expr.free_symbols


def test_sigmoid_input_form_is_recorded_as_nonfinite_at_minus_1e4():
    d = chosen("sigmoid")
    raw = candidate(d, "input")
    assert sympy.simplify(raw.expr - sympy.exp(-z) / (1 + sympy.exp(-z)) ** 2) == 0
    assert -1e4 in raw.nonfinite
    assert d.form != "input"
    assert not candidate(d, "output").nonfinite


def test_tanh_derivative_is_output_form():
    d = chosen("tanh")
    assert d.form == "output"
    assert sympy.expand(d.expr - (1 - Y**2)) == 0


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_output_forms_are_finite_at_extremes(op):
    points = [-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]
    grad = param_grad32(getattr(gn, op), points)
    assert np.all(np.isfinite(grad)), grad
    x = np.array(points)
    exact = {"sigmoid": scipy.special.expit(x) * (1 - scipy.special.expit(x))}
    exact["tanh"] = 1 - np.tanh(x) ** 2
    np.testing.assert_allclose(grad, exact[op], rtol=1e-3, atol=1e-7)


# --- relu at the kink -------------------------------------------------------------------------


def test_relu_derivative_at_zero_is_zero():
    grad = param_grad32(gn.relu, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])
    grad = param_grad32(gn.relu, [-1.0, 0.0, 2.0, 1e-30])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, 1.0])


# --- softplus -----------------------------------------------------------------------------------

SOFTPLUS_POINTS = [88.0, -88.0, 1e4, -1e4, -20.0, 20.0, 0.0]


def test_softplus_derivative_is_finite_and_accurate_in_float32():
    f = ELEMENTWISE["softplus"].formula()
    d = chosen("softplus")
    exact = scipy.special.expit(np.array(SOFTPLUS_POINTS, np.float64))
    for got in (at_float32(f, d, SOFTPLUS_POINTS), param_grad32(gn.softplus, SOFTPLUS_POINTS)):
        assert np.all(np.isfinite(got)), got
        # sigmoid(-88) = 6e-39 is subnormal in float32; sigmoid(-20) = 2e-9 must not round to 0.
        np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-37)
    assert not candidate(d, d.form).nonfinite
    assert not candidate(d, d.form).inaccurate


# --- naive sigmoid + binary cross-entropy ---------------------------------------------------


def naive_bce():
    s = 1 / (1 + sympy.exp(-z))
    return -t * sympy.log(s) - (1 - t) * sympy.log(1 - s)


def test_naive_bce_derivative_is_sigmoid_minus_target():
    f = naive_bce()
    d = derivative(f, 0, 2)
    assert sympy.simplify(d.expr - (1 / (1 + sympy.exp(-z)) - t)) == 0
    raw = candidate(d, "input")
    assert raw.nonfinite  # the form sympy.diff gives is NaN/inf somewhere in float32
    points = [-100.0, 100.0, -1e4, 1e4, -20.0, 0.0, 3.0]
    for target in (0.0, 0.3, 1.0):
        got = at_float32(f, d, points, target)
        assert np.all(np.isfinite(got)), got
        np.testing.assert_allclose(
            got, scipy.special.expit(np.array(points)) - target, rtol=1e-5, atol=1e-6
        )


def test_naive_bce_through_a_user_defined_function():
    zs, ts = sympy.symbols("z t")
    s = 1 / (1 + sympy.exp(-zs))
    bce = gn.elementwise("naive_bce", -ts * sympy.log(s) - (1 - ts) * sympy.log(1 - s), [zs, ts])
    q = gn.param("q", (4,))
    target = gn.input("target", (4,))
    g = gn.Graph(gn.sum(bce(q, target)))
    points = np.array([-100.0, 100.0, 0.0, 3.0], np.float32)
    _, grads = g.value_and_grad({"q": points}, {"target": np.full((1, 4), 0.3, np.float32)})
    assert np.all(np.isfinite(grads["q"])), grads["q"]
    np.testing.assert_allclose(
        grads["q"], scipy.special.expit(points.astype(np.float64)) - 0.3, rtol=1e-5, atol=1e-6
    )


# --- silu -------------------------------------------------------------------------------------


def test_silu_derivative_is_finite_at_minus_100():
    f = ELEMENTWISE["silu"].formula()
    d = chosen("silu")
    points = [-1e4, -100.0, -88.0, -20.0, 0.0, 1.0, 100.0, 1e4]
    x = np.array(points)
    s = scipy.special.expit(x)
    exact = s + x * s * (1 - s)
    for got in (at_float32(f, d, points), param_grad32(gn.silu, points)):
        assert np.all(np.isfinite(got)), got
        np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-30)
    raw = candidate(d, "input")
    assert -1e4 in raw.nonfinite or -88.0 in raw.nonfinite  # why the raw form lost


# --- what the screen evaluates: the kernels' printed float32 code -------------------------------


def test_the_audit_evaluates_the_kernels_own_tanh():
    """The audit (and the check of user functions) probes the printed float32 code as the CPU
    kernels run it, their rational tanh included: 1 - tanh(9.5)^2 is 0 there, as with libm's
    tanhf; it used to print np.tanh, which NumPy saturates only from 10 on."""
    assert kernel_float32(1 - sympy.tanh(z) ** 2, (z,))(9.5) == 0.0
    f = sympy.log(1 + sympy.exp(-z))  # and log1p: 2.06e-9 at z = 20, not 0
    (at20,) = [p for p in probe(f, (f,), f, 0, 1, kernel_float32) if p.point == 20.0]
    assert at20.status == "ok" and at20.got == pytest.approx(2.0611537e-9, rel=1e-6)


def test_the_screen_probes_just_past_float32_exp_overflow():
    """exp overflows float32 at 88.72: a form that is inf/inf from there on is caught at 89,
    not only at 1e4 (mish's derivative was NaN in the kernels from z = 89)."""
    assert {-89.0, 89.0} <= set(SCREEN_POINTS)
    d = derivative(z * sympy.tanh(sympy.log(1 + sympy.exp(z))), 0, 1)
    assert all(89.0 in c.nonfinite for c in d.candidates)

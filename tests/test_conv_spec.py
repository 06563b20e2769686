"""Image layers in specs: conv2d/max_pool2d/flatten in [graph] formulas, the [[layers]] kinds,
the conv kernel's displayed gradient evaluated against the kernels, and the errors."""

import pathlib

import numpy as np
import pytest

from graphnn.cli import main
from graphnn.errors import SpecError
from graphnn.ir.init import init_array
from graphnn.spec.build import load_spec, loads_spec

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

LAYERS = """
[inputs]
x = [8, 7, 2]
y = [3]
[model]
input = "x"
target = "y"
loss = "softmax_cross_entropy"
{layers}
[[layers]]
units = 3
"""

CONV_POOL_FLATTEN = """
[[layers]]
conv2d = { filters = 4, kernel = [3, 2], stride = 2, padding = 1 }
activation = "tanh"
[[layers]]
max_pool = { size = 2, stride = 1 }
[[layers]]
avg_pool = 2
[[layers]]
flatten = true
"""


def test_conv_kernel_gradient_is_shown_and_the_formula_is_what_runs(capsys):
    """`graphnn grad` shows dloss/dK1 as an indexed sum; the displayed formula, evaluated with
    NumPy on the forward values, equals the CPU kernel's gradient."""
    path = EXAMPLES / "digits_cnn.toml"
    assert main(["grad", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("dloss/dK1 ="))
    assert "Σ_{b,i,j} x[b, i + k - 1, j + l - 1, c]" in line and "→ [k, l, c, o]" in line
    spec = load_spec(path)
    g = spec.graph
    rng = np.random.default_rng(0)
    data = {"x": rng.random((6, 8, 8, 1)), "y": np.eye(10)[rng.integers(0, 10, 6)]}
    params = g.init_params(0)
    values = g.evaluate_nodes(params, data, dtype=np.float64)
    shown = g.gradient("K1").evaluate(values)
    _, grads = g.value_and_grad(params, data, backend="cpu")
    np.testing.assert_allclose(grads["K1"], shown, rtol=2e-4, atol=1e-6)
    assert np.abs(shown).max() > 1e-3


def test_layers_expand_to_conv_pool_flatten_dense():
    spec = loads_spec(LAYERS.format(layers=CONV_POOL_FLATTEN), "m.toml")
    g = spec.graph
    # conv: (8 + 2 - 3)//2 + 1 = 4, (7 + 2 - 2)//2 + 1 = 4; max pool 2/1: 3x3; avg pool 2: 1x1
    assert g.shapes == {"K1": (3, 2, 2, 4), "b1": (4,), "W5": (4, 3), "b5": (3,)}
    ops = [n.attr("fn", n.op) for n in g.forward]
    assert ops.count("conv2d") == 1 and "max_pool" in ops and ops.count("window_sum") == 1
    assert g.forward.node("h1").attr("fn") == "tanh"
    assert g.forward.node("h4").op == "reshape" and g.forward.node("h4").shape == (None, 4)


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            "[[layers]]\nconv2d = { filters = 2, kernel = 3 }\n[[layers]]\nunits = 5",
            "#2: a dense layer needs 1-D input, got \\[6, 5, 2\\].*flatten = true",
        ),
        ("[[layers]]\nunits = 5", "input 'x' must have a 1-D shape"),
        ("[[layers]]\nconv2d = { filters = 4 }", "conv2d: missing 'kernel'"),
        ("[[layers]]\nconv2d = { filters = 4, kernel = 3, strides = 2 }", "unknown key 'strides'"),
        ("[[layers]]\nconv2d = { filters = 4, kernel = 9 }", "#1: conv2d: a window"),
        ("[[layers]]\nmax_pool = 2\nactivation = 'relu'", "not a setting of a max_pool"),
        ("[[layers]]\nmax_pool = { size = 0 }", "max_pool size: must be an int >= 1"),
        ("[[layers]]\nflatten = 1", "write flatten = true"),
    ],
)
def test_bad_image_layers_are_named(layers, message):
    with pytest.raises(SpecError, match=message):
        loads_spec(LAYERS.format(layers=layers), "m.toml")


def test_last_layer_must_be_dense():
    text = LAYERS.replace("[[layers]]\nunits = 3\n", "[[layers]]\nflatten = true\n")
    with pytest.raises(SpecError, match="last layer gives the outputs"):
        loads_spec(text.format(layers=""), "m.toml")


def test_conv_kernel_init_uses_the_window_fan_in():
    """he_normal of a (kh, kw, in, out) kernel: std sqrt(2 / (kh kw in)), as Keras."""
    k = init_array("K", (3, 3, 8, 64), "he_normal", 0, np.float64)
    assert k.std() == pytest.approx(np.sqrt(2 / 72), rel=0.03)


def test_concat_in_a_spec_formula_and_its_errors():
    import graphnn as gn
    from graphnn.errors import ShapeError

    spec = loads_spec(
        """
[inputs]
x = [4]
y = [2]
[params]
W = [4, 3]
V = [4, 2]
U = [5, 2]
[graph]
h = "concat(tanh(x @ W), relu(x @ V))"
loss = "mse(h @ U, y)"
"""
    )
    assert spec.nodes["h"].shape == (None, 5)
    x, W = gn.input("x", (4,)), gn.param("W", (4, 3))
    with pytest.raises(ShapeError, match=r"concat: .* does not match .* outside axis -1"):
        gn.concat([x @ W, gn.input("u", (2, 2))])
    with pytest.raises(ShapeError, match="is not a feature axis"):
        gn.concat([x @ W, x @ W], axis=0)

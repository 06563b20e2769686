"""The graphs every back end is tested on: one table, read by the gradient, CPU and CUDA tests.

``STRUCTURAL`` holds one row per structural pattern (contractions, reductions over any axes,
broadcasting, reshape, softmax, fan-out, shared parameters). A row builds its loss from the leaves
below; :func:`build` returns the graph and random data for the inputs it reads. Shapes are tiny,
so the CUDA simulator runs every row. ``LOSSES`` holds the loss functions, applied to logits.

>>> g, data = build("sum_all")
>>> sorted(data), g.param_names
(['x'], ['W'])
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import graphnn as gn
from graphnn.ir import ops

BATCH = 5


def leaves() -> SimpleNamespace:
    """Inputs x (4,), x3 (4, 3), u (2, 2); parameters W (4, 4), V (4, 2), Vt (3, 4), c (4, 1),
    s (1,), and the others below."""
    return SimpleNamespace(
        x=gn.input("x", (4,)),
        x3=gn.input("x3", (4, 3)),
        u=gn.input("u", (2, 2)),
        W=gn.param("W", (4, 4)),
        V=gn.param("V", (4, 2)),
        Vt=gn.param("Vt", (3, 4)),
        c=gn.param("c", (4, 1), init="normal"),
        s=gn.param("s", (1,), init="normal"),
        img=gn.input("img", (5, 6, 2)),
        K=gn.param("K", (3, 3, 2, 3), init="normal"),
        Kd=gn.param("Kd", (2, 2, 3, 2), init="normal"),
        F=gn.param("F", (12, 2)),
        ids=gn.input("ids", (3,)),  # integer ids in [0, 6): see build()
        E=gn.param("E", (6, 4), init="normal"),
        gam=gn.param("gam", (4,), init="ones"),
        bet=gn.param("bet", (4,), init="zeros"),
        gam3=gn.param("gam3", (3,), init="normal"),
    )


def _bias_col(L):
    # c (4, 1) broadcasts against (n, 4, 3): its gradient sums axis 0 and the size-1 axis 2, with
    # keepdims, then reshapes.
    return gn.sum(gn.tanh(L.x3 + L.c) * L.x3)


STRUCTURAL = {
    # concat: one contraction per part, its adjoint the derived slice (graphnn.ir.conv.concat)
    "concat": lambda L: gn.sum(gn.tanh(gn.concat([L.x @ L.W, gn.sigmoid(L.x @ L.V)])) ** 2),
    "concat_middle_axis": lambda L: gn.sum(gn.tanh(gn.concat([L.x3 * L.c, L.x3], axis=1)) ** 2),
    "matmul_chain": lambda L: gn.sum(L.x @ L.W @ L.V),
    "matmul_transposed": lambda L: gn.sum(gn.tanh(L.x @ gn.matmul(L.W, L.Vt, ta=True, tb=True))),
    "matmul_fan_out": lambda L: (
        gn.sum(gn.tanh(L.x @ L.W) * (L.x @ L.W)) + gn.sum((L.x @ L.W) @ L.V)
    ),
    "shared_param": lambda L: gn.sum((L.x @ L.W) @ L.V + gn.sigmoid(L.x @ L.W) @ L.V * 2.0),
    "fan_out": lambda L: gn.sum(gn.tanh(L.x @ L.W) * gn.sigmoid(L.x @ L.W) + (L.x @ L.W)),
    "neg_sub": lambda L: gn.sum(-(L.x @ L.W) - 1.0) + gn.sum(2.0 * ((L.x @ L.W) @ L.V)),
    "sum_all": lambda L: gn.sum(gn.exp(L.x @ L.W * 0.3)),
    "sum_rows": lambda L: gn.sum(gn.sum(gn.tanh(L.x @ L.W), axis=1) ** 2),
    "mean_rows": lambda L: gn.sum(gn.mean(gn.tanh(L.x @ L.W), axis=1) * 3.0),
    "mean_batch_keepdims": lambda L: gn.sum(
        gn.mean(gn.tanh(L.x @ L.W), axis=0, keepdims=True) @ L.V
    ),
    "sum_keepdims": lambda L: gn.sum(gn.sum(L.x @ L.W, axis=1, keepdims=True) * gn.tanh(L.x @ L.W)),
    "sum_middle_axis": lambda L: gn.sum(gn.sum(gn.tanh(L.x3 * L.c), axis=1) ** 2),
    "mean_last_axis_3d": lambda L: gn.sum(gn.mean(gn.sigmoid(L.x3 * L.c), axis=2) ** 2),
    "sum_axes_keepdims_3d": lambda L: gn.sum(
        gn.sum(gn.tanh(L.x3 * L.c), axis=(0, 2), keepdims=True) * L.x3
    ),
    "bias_broadcast": lambda L: gn.sum(gn.exp(L.x @ L.W * 0.1 + gn.sum(L.V, axis=1))),
    "bias_col": _bias_col,
    "reshape_3d": lambda L: gn.sum(gn.tanh(ops.reshape(L.x @ L.W, (None, 2, 2))) * L.u),
    "softmax": lambda L: gn.sum(gn.softmax(L.x @ L.W) * (L.x @ L.W)),
    "power_div": lambda L: gn.mean((L.x @ L.W) ** 2 / (1.5 + gn.sigmoid(L.x @ L.W))),
    "one_element_param": lambda L: gn.sum(gn.tanh(L.x @ L.W) * L.s) + gn.sum(L.W) * 0.5,
    # (batch,) * (4, 1) is (4, batch): the batch axis need not lead (found by tests/test_fuzz.py)
    "batch_not_leading": lambda L: gn.sum(gn.tanh(gn.sum(L.x @ L.W, axis=1) * L.c)),
    # (4, batch): a softmax whose classes are the batch axis (found by tests/test_fuzz.py)
    "softmax_over_batch": lambda L: gn.sum(
        gn.softmax(gn.matmul(L.W, L.x, tb=True))
        * gn.matmul(L.c, gn.sum(L.x, axis=1, keepdims=True), tb=True)
    ),
    # (batch, batch) scores x W x^T: n * n elements, not n
    "batch_by_batch": lambda L: gn.sum(
        gn.tanh(gn.matmul(L.x @ L.W, L.x, tb=True)) * gn.matmul(L.x, L.x, tb=True)
    ),
}

# Image layers (NHWC): indexed contractions, their derived adjoints, max pooling's argmax mask.
STRUCTURAL |= {
    "conv2d_same": lambda L: gn.sum(gn.tanh(gn.conv2d(L.img, L.K, padding="same")) ** 2),
    "conv2d_stride_dilation": lambda L: gn.sum(
        gn.sigmoid(gn.conv2d(L.img, L.K, stride=2, padding=1, dilation=(1, 2)))
    ),
    # conv -> conv: the second kernel's input adjoint (a strided scatter, inverted) reaches K
    "conv2d_stacked": lambda L: gn.sum(
        gn.tanh(gn.conv2d(gn.tanh(gn.conv2d(L.img, L.K)), L.Kd, stride=(2, 1), padding=1))
    ),
    "max_pool": lambda L: gn.sum(
        gn.max_pool2d(gn.conv2d(L.img, L.K, padding=1), 2, stride=(2, 1), padding=1) ** 2
    ),
    "avg_pool_flatten": lambda L: gn.sum(
        gn.tanh(gn.flatten(gn.avg_pool2d(gn.conv2d(L.img, L.K), (2, 3), padding=1)) @ L.F)
    ),
}

# Dropout: its masks at step 0 (value_and_grad's step), the same on every back end.
STRUCTURAL |= {
    "dropout": lambda L: gn.sum(
        gn.tanh(gn.dropout(gn.tanh(L.x @ L.W), 0.4, seed=2) @ L.V) * gn.dropout(L.x @ L.V, 0.5)
    ),
}

# Embedding lookup (a one-hot contraction) and layer norm (a composition of elementwise ops).
STRUCTURAL |= {
    "embedding": lambda L: gn.sum(gn.tanh(gn.flatten(gn.embedding(L.ids, L.E)) @ L.F)),
    "layer_norm": lambda L: gn.sum(
        gn.sigmoid(gn.layer_norm(L.x @ L.W, L.gam, L.bet)) * (L.x @ L.W)
    ),
}

# Batch norm (graphnn.ir.batch_norm): its training form, over the batch (2-D) and over batch,
# height and width per channel (NHWC); the running statistics are state, not differentiated.
STRUCTURAL |= {
    "batch_norm": lambda L: gn.sum(
        gn.sigmoid(gn.batch_norm(L.x @ L.W, L.gam, L.bet, name="bn")) * (L.x @ L.W)
    ),
    "batch_norm_nhwc": lambda L: gn.sum(
        gn.tanh(gn.batch_norm(gn.conv2d(L.img, L.K), 1.0 + L.gam3, L.gam3, name="bn"))
        * gn.conv2d(L.img, L.K)
    ),
}

LOSSES = {
    "mse": gn.mse,
    "softmax_ce": gn.softmax_cross_entropy,
    "bce_with_logits": gn.binary_cross_entropy_with_logits,
}


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def build(name: str, rows: int = BATCH):
    """The graph of row ``name`` of STRUCTURAL and float64 data of ``rows`` rows for its inputs."""
    g = gn.Graph(STRUCTURAL[name](leaves()))
    rng = rng_for(name)
    data = {n.name: rng.normal(size=(rows, *n.shape[1:])) for n in g.forward.inputs}
    if "ids" in data:  # the embedding's integer ids, including the table's first and last row
        data["ids"] = rng.integers(0, 6, size=(rows, 3)).astype(float)
        data["ids"][0, :2] = [0, 5]
    return g, data


def loss_case(name: str, rows: int = 7):
    """LOSSES[name] of affine logits x @ W + b over 3 classes, with one-hot targets."""
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W, b = gn.param("W", (4, 3)), gn.param("b", (3,), init="normal")
    g = gn.Graph(LOSSES[name](x @ W + b, t))
    rng = np.random.default_rng(4)
    data = {"x": rng.normal(size=(rows, 4)) * 2, "t": np.eye(3)[rng.integers(0, 3, rows)]}
    return g, data

"""The CPU export: graphnn's own CPU kernels plus a small API, as one standalone module.

The file holds the kernel module graphnn compiles for ``gn.compile(graph, optimizer)`` (the same
text, from :func:`codegen.cpu.module.module_source`), a forward kernel for the prediction node, and
plain-Python wrappers: ``init_params(seed)`` (the arrays of ``graph.init_params(seed)``),
``init_state``, ``loss``, ``grads``, ``step``, ``fit_epoch``, ``predict`` and a ``__main__`` that
trains on an ``.npz`` file.  It imports only numpy, numba and the standard library, so it runs
where graphnn, SymPy and networkx are not installed, and Numba's ``cache=True`` works on it.
"""

from __future__ import annotations

from codegen.cpu import matmul
from codegen.cpu.module import forward_kernel, module_source
from codegen.export.common import (
    MAIN,
    adapt_grads,
    add_imports,
    constants,
    init_functions,
    retitle,
    wrapped,
    wrapper_fill,
)
from codegen.signature import signature
from graphnn.ir.prediction import prediction_node


def standalone_source(
    graph, optimizer, dtype="float32", title="model", epochs=10, batch_size=32, blas=True
) -> str:
    """The exported module's text: kernels, the prediction kernel, constants, wrappers, main.

    ``blas=False``: every matrix product as generated loops, so the module needs no SciPy.
    """
    sig = signature(graph, optimizer)
    prediction = prediction_node(graph.forward, graph.loss_name)[0]
    with matmul.only_loops(not blas):
        # The outputs gn.compile's Model uses, so the kernels are the text graphnn itself runs.
        text = module_source(graph, optimizer, dtype, (graph.loss_name, prediction))
        kernel = forward_kernel(graph, [prediction], sig, dtype)
    text = retitle(text, title, graph.loss_name, dtype, CPU_API)
    text = add_imports(text, scipy="np.dot(" in text or any("np.dot(" in k for k in kernel))
    kernel = [ln.replace("def forward(", "def forward_prediction(", 1) for ln in kernel]
    head = [f"# {prediction}: the prediction, for predict()"]
    parts = [text.rstrip("\n"), "", "", *head, *kernel, "", ""]
    parts += constants(graph, optimizer, dtype, prediction, epochs, batch_size)
    parts += init_functions(graph)
    parts += _wrappers(graph, sig, prediction)
    parts += MAIN.splitlines()
    return "\n".join(parts) + "\n"


CPU_API = [
    "API: init_params(seed), init_state(params), loss, grads, step, fit_epoch, predict;",
    "raw kernels: workspace, loss_and_grads, forward, forward_prediction, train_step,",
    "train_epoch.",
]


def _wrappers(graph, sig, prediction) -> list[str]:
    fill, xs, kw = wrapper_fill(graph, sig, prediction)
    hyper = list(sig.hyper)
    epoch = ["*arrays", "perm", "batch_size", "*_arrays(params, PARAMS)", "*_arrays(state, STATE)"]
    epoch += ["lrs" if h == "lr" else f"DTYPE({h})" for h in hyper] + [
        "t0",
        "workspace(batch_size, *arrays, *_arrays(params, PARAMS))",
    ]
    fill |= {
        "hyper": ", ".join([*hyper, "t"]),
        "def_loss": "def loss(" + ", ".join([*xs, "params"]) + "):",
        "def_step": "\n".join(wrapped("def step", [*xs, "params", "state", "t=1", *kw], ":")),
        "call_epoch": "\n".join(wrapped("total, done, status = train_epoch", epoch, "", "    ")),
    }
    text = WRAPPERS.format(**fill)
    return adapt_grads(text, graph, sig, (GRADS, GRADS_TRAINABLE), (GRADS_CALL, GRADS_CALL_DRAW))


GRADS_CALL = (
    "    out = loss_and_grads(*arrays, *_arrays(params, PARAMS), _workspace(arrays, params))"
)
GRADS_CALL_DRAW = """\
    draw = (0, np.arange(arrays[0].shape[0]))  # dropout: epoch key 0, the rows as samples
    out = loss_and_grads(*arrays, *_arrays(params, PARAMS), *draw, _workspace(arrays, params))"""
GRADS = "    return dict(zip(PARAMS, out[1:], strict=True))"
GRADS_TRAINABLE = """\
    names = [p for p in PARAMS if p not in RUNNING]
    return dict(zip(names, out[1 : 1 + len(names)], strict=True))"""


WRAPPERS = '''\
{helpers}


def _data(*arrays):
    return tuple(np.ascontiguousarray(a, dtype=DTYPE) for a in arrays)


def _workspace(arrays, params):
    """Buffers for one step on this batch (the kernels allocate nothing themselves)."""
    return workspace(arrays[0].shape[0] if arrays else 1, *arrays, *_arrays(params, PARAMS))


{def_loss}
    """The loss on one batch."""
    return float(forward(*_data(*_batch(INPUTS, {xs})), *_arrays(params, PARAMS))[0])


{def_grads}
    """The backward pass: the loss's gradient for every parameter on one batch, by name."""
    arrays = _data(*_batch(INPUTS, {xs}))
    out = loss_and_grads(*arrays, *_arrays(params, PARAMS), _workspace(arrays, params))
    return dict(zip(PARAMS, out[1:], strict=True))


{def_step}
    """One optimizer step (step number t, from 1) on one batch, in place; returns the loss."""
    arrays = _data(*_batch(INPUTS, {xs}))
    hyper = [DTYPE(h) for h in ({hyper})]
    ws = _workspace(arrays, params)
    value, status = train_step(
        *arrays, *_arrays(params, PARAMS), *_arrays(state, STATE), *hyper, ws
    )
    _check(status, t)
    return float(value)


{def_fit}
    """Mini-batch steps over ``data`` (arrays by input name) in the order of ``perm`` (default:
    data order), in place.  ``lr``: one value or one per step; ``t0``: steps done before.
    Returns (mean loss, t0 + steps done)."""
    arrays = _data(*_batch(INPUTS, *_arrays(data, INPUTS)))
{epoch_order}
{call_epoch}
    _check(status, t0 + done + 1)
    return total / perm.shape[0], t0 + done


{def_predict}
    """The prediction node {pred} for a batch."""
    return forward_prediction(*_data(*_batch({pnames}, {px})), *_arrays(params, PARAMS))


'''

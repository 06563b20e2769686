"""The CUDA export: graphnn's CUDA kernel module plus the host API of the CPU export.

The file holds the text :func:`codegen.cuda.backend.source` generates (``@cuda.jit`` kernels, the
``Workspace`` of device buffers and the host functions ``loss_and_grads``, ``forward`` and
``train_epoch``), its ``forward`` computing the prediction node, and plain-Python wrappers with
the CPU export's names: ``init_params``, ``init_state``, ``grads``, ``fit_epoch``, ``predict``
and a ``__main__`` that trains on an ``.npz`` file.  Host arrays go in and come out; each call
copies them to the device and back.  It imports only numpy, numba (with numba-cuda) and the
standard library.

The launch sizes (threads per block, tile edge) are those of the machine that exported the file:
a GPU's, or small ones under the simulator.
"""

from __future__ import annotations

import importlib

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
from codegen.names import EXPORT_CUDA
from graphnn.errors import CodegenError
from graphnn.ir.prediction import prediction_node

# Globals of the CUDA kernel module (codegen/cuda/module.py) and names the wrappers define or use
# locally: an input named like one of them gets a trailing "_".
TAKEN = EXPORT_CUDA
TITLE_API = [
    "API: init_params(seed), init_state(params), grads, fit_epoch, predict (host arrays in and",
    "out; each call copies to the GPU and back); raw host functions: Workspace, loss_and_grads,",
    "forward (the prediction), train_epoch.",
]


def cuda_standalone_source(
    graph, optimizer, dtype="float32", title="model", epochs=10, batch_size=32
) -> str:
    """The exported CUDA module's text: kernels, constants, host wrappers, main."""
    try:
        cuda = importlib.import_module("codegen.cuda.backend")
    except ImportError as e:
        raise CodegenError(f"the CUDA exporter needs numba-cuda ({e})") from None
    prediction = prediction_node(graph.forward, graph.loss_name)[0]
    sig = cuda.cuda_signature(graph, optimizer)
    text = cuda.source(graph, optimizer, dtype, (prediction,))
    text = add_imports(retitle(text, title, graph.loss_name, dtype, TITLE_API))
    parts = [text.rstrip("\n"), "", ""]
    parts += constants(graph, optimizer, dtype, prediction, epochs, batch_size, TAKEN)
    parts += init_functions(graph)
    parts += _wrappers(graph, sig, prediction)
    parts += MAIN.splitlines()
    return "\n".join(parts) + "\n"


def _wrappers(graph, sig, prediction) -> list[str]:
    fill, _, _ = wrapper_fill(graph, sig, prediction, TAKEN)
    hyper = list(sig.hyper)
    epoch = ["Workspace(DTYPE)", "*arrays", "_device(perm, dtype=np.int64)[0]", "batch_size"]
    epoch += ["*weights"]
    epoch += ["*buffers"] + ["lrs" if h == "lr" else f"DTYPE({h})" for h in hyper]
    epoch += ["t0", "losses", "status", "gscale"]
    fill["call_epoch"] = "\n".join(wrapped("launched = train_epoch", epoch, "", "    "))
    text = WRAPPERS.format(**fill)
    return adapt_grads(text, graph, sig, (GRADS, GRADS_TRAINABLE), (GRADS_CALL, GRADS_CALL_DRAW))


GRADS_CALL = (
    "    out = loss_and_grads(Workspace(DTYPE), *arrays, *_device(*_arrays(params, PARAMS)))"
)
GRADS_CALL_DRAW = """\
    draw = (0, cuda.to_device(np.arange(arrays[0].shape[0])))  # dropout: key 0, rows 0..n-1
    weights = _device(*_arrays(params, PARAMS))
    out = loss_and_grads(Workspace(DTYPE), *arrays, *weights, *draw)"""


GRADS = "    pairs = zip(PARAMS, out[1:], strict=True)"
GRADS_TRAINABLE = """\
    names = [p for p in PARAMS if p not in RUNNING]
    pairs = zip(names, out[1 : 1 + len(names)], strict=True)"""


WRAPPERS = '''\
{helpers}


def _device(*arrays, dtype=DTYPE):
    """Contiguous ``dtype`` device copies; a 0-d array goes up as shape (1,), as the kernels
    take it."""
    if not cuda.is_available():
        raise RuntimeError(
            "no CUDA GPU is available (numba.cuda.is_available() is False); to run this module "
            "on Numba's simulator instead (slow: tiny shapes only), set NUMBA_ENABLE_CUDASIM=1 "
            "before Python starts"
        )
    out = []
    for a in arrays:
        host = np.ascontiguousarray(a, dtype=dtype)
        out.append(cuda.to_device(host.reshape(host.shape or (1,))))
    return tuple(out)


{def_grads}
    """The backward pass: the loss's gradient for every parameter on one batch, by name,
    computed on the GPU."""
    arrays = _device(*_batch(INPUTS, {xs}))
    out = loss_and_grads(Workspace(DTYPE), *arrays, *_device(*_arrays(params, PARAMS)))
    pairs = zip(PARAMS, out[1:], strict=True)
    return {{k: g.copy_to_host().reshape(np.shape(params[k])) for k, g in pairs}}


{def_fit}
    """Mini-batch steps over ``data`` (arrays by input name) in the order of ``perm`` (default:
    data order) on the GPU; ``params`` and ``state`` are updated in place.  ``lr``: one value or
    one per step; ``t0``: steps done before.  Returns (mean loss, t0 + steps done)."""
    arrays = _device(*_batch(INPUTS, *_arrays(data, INPUTS)))
{epoch_order}
    weights, buffers = _device(*_arrays(params, PARAMS)), _device(*_arrays(state, STATE))
    losses = cuda.device_array(max(steps, 1), dtype=DTYPE)
    status = cuda.to_device(np.zeros(2, np.int64))
    gscale = cuda.to_device(np.ones(1, DTYPE))
{call_epoch}
    code, bad_step = (int(v) for v in status.copy_to_host())
    done = launched if code == 0 else bad_step  # a bad step left every parameter as it was
    for names, values, device in ((PARAMS, params, weights), (STATE, state, buffers)):
        for k, d in zip(names, device, strict=True):
            values[k][...] = d.copy_to_host().reshape(values[k].shape)
    _check(code, t0 + done + 1)
    rows = np.minimum(batch_size, perm.shape[0] - batch_size * np.arange(done))
    total = losses.copy_to_host()[:done].astype(np.float64) @ rows
    return float(total) / perm.shape[0], t0 + done


{def_predict}
    """The prediction node {pred} for a batch, computed on the GPU."""
    arrays = _device(*_batch({pnames}, {px}))
    (out,) = forward(Workspace(DTYPE), *arrays, *_device(*_arrays(params, PARAMS)))
    return out.copy_to_host()


'''

"""What every exported module holds whatever its back end: the header, constants, initializers,
the wrappers' shared helpers and the ``__main__`` that trains on an ``.npz`` file.

Each piece is source text or a function returning lines; :mod:`codegen.export.cpu` and
:mod:`codegen.export.cuda` put them around their back end's kernels.
"""

from __future__ import annotations

from codegen.names import EXPORT_API, EXPORT_LOCALS
from codegen.signature import forward_inputs
from graphnn.errors import CodegenError
from graphnn.ir.init import fans
from graphnn.optim.optimizers import state_key

# The project's ruff rules pass, except line length: generated kernel lines are not wrapped.
NOQA = "# ruff: noqa: E501  # generated kernel lines are not wrapped\n\n"

# graphnn/ir/init.py's draws; fan_in (fi) and fan_out (fo) are printed as integer literals, which
# keeps every float operation, and so every bit, of the original.
DRAWS = {
    "zeros": "np.zeros({s})",
    "ones": "np.ones({s})",
    "normal": "{rng}.normal(0.0, 0.01, {s})",
    "uniform": "{rng}.uniform(-0.05, 0.05, {s})",
    "he_normal": "{rng}.normal(0.0, np.sqrt(2.0 / {fi}), {s})",
    "he_uniform": "{rng}.uniform(-1, 1, {s}) * np.sqrt(6.0 / {fi})",
    "glorot_normal": "{rng}.normal(0.0, np.sqrt(2.0 / ({fi} + {fo})), {s})",
    "glorot_uniform": "{rng}.uniform(-1, 1, {s}) * np.sqrt(6.0 / ({fi} + {fo}))",
}

# Names the wrappers define or use; an input named like one of them gets a trailing "_".
API, LOCALS = EXPORT_API, EXPORT_LOCALS


SCIPY_CHECK = """
try:  # Numba computes np.dot with SciPy's BLAS: say so here, not in a long typing error later
    import scipy.linalg.cython_blas  # noqa: F401
except ImportError:
    raise ImportError("this module needs SciPy (pip install scipy): Numba computes its np.dot calls with SciPy's BLAS; graphnn export --no-blas writes one that does not") from None
"""  # noqa: E501 - the exported module's lines are not wrapped


def add_imports(text: str, scipy: bool = False) -> str:
    """zlib (init_params' stream seeds) next to math, if there, else before numpy; with
    ``scipy``, a check after the imports that SciPy is there."""
    first = "import math\n" if "\nimport math\n" in text else "import numpy as np\n"
    if f"\n{first}" not in text:
        raise CodegenError(f"export expects the kernel module to have the line {first!r}")
    imports = "import math\nimport zlib\n" if "math" in first else "import zlib\n\n" + first
    text = text.replace(f"\n{first}", f"\n{NOQA}{imports}", 1)
    if scipy:
        last = "from numba import njit\n"
        if last not in text:
            raise CodegenError(f"export expects the kernel module to have the line {last!r}")
        text = text.replace(last, last + SCIPY_CHECK, 1)
    return text


def retitle(text: str, title: str, loss: str, dtype: str, api: list[str]) -> str:
    """Replace module_source's one-line title with one naming the model and its API."""
    lines = [
        f'"""{title}: a standalone training module exported by graphnn (loss {loss!r}, {dtype}).',
        "",
        f"Train: python {title}.py data.npz (the .npz keys are the input names; --help).",
        *api,
        "",
    ]
    if text.startswith('"""'):
        return "\n".join(lines) + text[text.index("\n") + 1 :]
    return "\n".join(lines) + '"""\n\n' + text


def constants(
    graph, optimizer, dtype, prediction, epochs, batch_size, taken=frozenset()
) -> list[str]:
    """Module constants; ``taken``: more names a hyper-parameter must not have."""
    hyper = _hyper_values(optimizer)
    bad = {h for h in hyper if h in LOCALS | API | taken or h.upper() in API | taken}
    if bad or not all(h.isidentifier() for h in hyper):
        raise CodegenError(f"cannot export hyper-parameter names {sorted(bad or hyper)}")
    shapes = ", ".join(f"{_q(n.name)}: {n.shape[1:]!r}" for n in graph.forward.inputs)
    lines = ["# --- standalone API: numpy arrays in; parameters and optimizer state as dicts ---"]
    lines += ["", f"DTYPE = np.{dtype}", f"INPUTS = {{{shapes}}}  # per-sample shapes; batch first"]
    lines.append("PARAMS = {  # name: (shape, initializer)")
    params = [graph.forward.node(p) for p in graph.kernel_params]  # the kernels' order
    lines += [f"    {_q(n.name)}: ({n.shape!r}, {_q(n.attr('init'))})," for n in params]
    lines.append("}")
    if graph.state_names:
        lines.append("# batch norm's running statistics: each step assigns them, no optimizer")
        lines.append(f"RUNNING = {tuple(graph.state_names)!r}")
    lines.append(f"# {optimizer.name} buffers, zero at the start: state name -> its parameter")
    pairs = [(state_key(b, p), p) for p in graph.param_names for b in optimizer.state]
    lines.append("STATE = {" + ", ".join(f"{_q(k)}: {_q(p)}" for k, p in pairs) + "}")
    lines.append(f"PREDICTION = {_q(prediction)}  # the graph node predict() returns")
    if optimizer.schedule is not None:
        lines.append(f"# Not exported: schedule {optimizer.schedule!r}; pass lr=<one per step>.")
    lines += [f"{h.upper()} = {v!r}" for h, v in hyper.items()]
    lines.append(f"EPOCHS = {epochs!r}  # main()'s defaults")
    lines.append(f"BATCH_SIZE = {batch_size!r}  # None: the whole data set per step")
    return lines + ["", ""]


def _hyper_values(optimizer) -> dict[str, float]:
    hyper = dict(optimizer.hyper)
    if optimizer.clip_norm is not None:
        hyper["clip_norm"] = optimizer.clip_norm
    return hyper


def init_functions(graph) -> list[str]:
    draws = []
    for node in graph.forward.params:
        init = node.attr("init")
        if init not in DRAWS:
            raise CodegenError(f"parameter '{node.name}': cannot export initializer {init!r}")
        fan_in, fan_out = fans(node.shape)
        rng = f"rng({_q(node.name)})"
        draw = DRAWS[init].format(s=repr(node.shape), rng=rng, fi=fan_in, fo=fan_out)
        draws.append(f"        {_q(node.name)}: {draw},  # {init}")
    return [
        "def init_params(seed=0):",
        '    """Fresh parameters: the same arrays as graphnn\'s Graph.init_params(seed)."""',
        "",
        "    def rng(name):  # every parameter draws from its own stream, seeded by (seed, name)",
        "        return np.random.default_rng([seed, zlib.crc32(name.encode())])",
        "",
        "    draws = {",
        *draws,
        "    }",
        "    return {k: np.ascontiguousarray(v, dtype=DTYPE) for k, v in draws.items()}",
        "",
        "",
        "def init_state(params):",
        '    """Zeroed optimizer buffers for ``params``."""',
        "    return {k: np.zeros_like(params[p]) for k, p in STATE.items()}",
        "",
        "",
    ]


def _arg(ident: str, taken: set[str]) -> str:
    while ident in taken:
        ident += "_"
    return ident


def _q(name: str) -> str:
    return f'"{name}"'  # graph names are identifiers: nothing to escape


def wrapped(head: str, args: list[str], tail: str, indent: str = "") -> list[str]:
    """``head(args)tail`` on one line if it fits in 100 columns, else args packed in a block."""
    line = f"{indent}{head}({', '.join(args)}){tail}"
    if len(line) <= 100:
        return [line]
    lines, inner = [], indent + "    "
    for arg in args:
        if lines and len(lines[-1]) + len(arg) + 2 <= 100:
            lines[-1] += f" {arg},"
        else:
            lines.append(f"{inner}{arg},")
    return [f"{indent}{head}(", *lines, f"{indent}){tail}"]


def wrapper_fill(graph, sig, prediction, taken=frozenset()) -> tuple[dict, list, list]:
    """What the CPU and the CUDA wrapper templates both fill in, with the input arguments and
    the hyper-parameter keywords; ``taken``: more names an input argument must not have."""
    hyper = list(sig.hyper)
    taken = API | LOCALS | set(taken) | set(hyper) | {h.upper() for h in hyper}
    xs = [_arg(i, taken) for i in sig.inputs]
    px = [_arg(sig.ident[i], taken) for i in forward_inputs(graph, [prediction])]
    kw = [f"{h}={h.upper()}" for h in hyper]
    fill = {
        "xs": ", ".join(xs),
        "px": ", ".join(px),
        "pnames": "(" + "".join(f"{_q(n)}, " for n in forward_inputs(graph, [prediction])) + ")",
        "pred": _q(prediction),
        "def_grads": "def grads(" + ", ".join([*xs, "params"]) + "):",
        "def_predict": "def predict(" + ", ".join([*px, "params"]) + "):",
        "def_fit": def_fit_epoch(kw),
        "epoch_order": EPOCH_ORDER,
        "helpers": HELPERS if not graph.state_names else HELPERS.replace(_WHAT, _WHAT_RUNNING),
    }
    return fill, xs, kw


# fit_epoch's batches, in the CPU and the CUDA export alike (``arrays`` holds the inputs).
EPOCH_ORDER = """\
    n = arrays[0].shape[0]
    perm = np.arange(n, dtype=np.int64) if perm is None else np.asarray(perm, dtype=np.int64)
    batch_size = min(int(batch_size or n), n)
    steps = -(-perm.shape[0] // batch_size)
    lrs = np.ascontiguousarray(np.broadcast_to(np.asarray(lr, dtype=DTYPE), (steps,)))"""


def adapt_grads(text: str, graph, sig, returned, call) -> list[str]:
    """The wrappers' lines with ``grads()`` fitted to the graph, each a (line as written, line
    instead) pair of the back end's template: ``returned``, when loss_and_grads returns batch
    norm's new running statistics after the gradients; ``call``, when it takes dropout's draw
    (value_and_grad's: epoch key 0, the rows as samples 0..n-1)."""
    for needed, (written, instead) in ((graph.state_names, returned), (sig.draws, call)):
        if needed:
            assert written in text, f"the grads wrapper no longer has {written.strip()!r}"
            text = text.replace(written, instead)
    return text.splitlines()


def def_fit_epoch(kw: list[str]) -> str:
    """``def fit_epoch(...):`` with the optimizer's hyper-parameters as keyword defaults."""
    args = ["data", "params", "state", "batch_size=BATCH_SIZE", "perm=None", "t0=0", *kw]
    return "\n".join(wrapped("def fit_epoch", args, ":"))


# Helpers of the wrappers in the CPU and the CUDA export alike (inserted by format: single braces).
HELPERS = """\
def _arrays(values, names):
    return tuple(values[k] for k in names)


def _batch(names, *arrays):
    # the inputs ``names`` in order, checked against INPUTS: per-sample shapes, one batch size
    first = None
    for name, a in zip(names, arrays, strict=True):
        shape = np.shape(a)
        if len(shape) != len(INPUTS[name]) + 1 or tuple(shape[1:]) != INPUTS[name]:
            want = ", ".join(["batch", *map(str, INPUTS[name])])
            raise ValueError(f"input {name!r} has shape {shape}; expected ({want})")
        if first is not None and shape[0] != first[1]:
            raise ValueError(f"input {name!r} has {shape[0]} rows; {first[0]!r} has {first[1]}")
        first = first or (name, shape[0])
    if first is not None and first[1] == 0:
        raise ValueError("the inputs hold no samples (batch of size 0)")
    return arrays


def _check(status, t):
    if status != 0:
        what = "the loss" if status < 0 else f"the gradient of {list(PARAMS)[status - 1]}"
        raise FloatingPointError(f"step {t}: {what} is not finite (NaN or Inf)")"""

_WHAT = 'f"the gradient of {list(PARAMS)[status - 1]}"'
# the statuses after the trainable parameters' gradients: the running statistics' new values
_WHAT_RUNNING = 'f"the gradient or new value of {list(PARAMS)[status - 1]}"'

MAIN = '''\
def main(argv=None):
    """Train on an .npz file whose keys are the input names; print the loss of every epoch."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help=".npz file with the arrays " + ", ".join(INPUTS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="0: all the data")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--seed", type=int, default=0, help="initialization and shuffling")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the data order")
    parser.add_argument("--save", help="write the trained parameters to this .npz file")
    args = parser.parse_args(argv)
    try:
        npz = np.load(args.data)
    except OSError as e:
        parser.error(f"cannot read {args.data}: {e}")
    with npz:
        missing = sorted(set(INPUTS) - set(npz.files))
        if missing:
            parser.error(f"{args.data} has no arrays named {', '.join(missing)}")
        data = {k: npz[k] for k in INPUTS}
    try:
        _batch(INPUTS, *_arrays(data, INPUTS))
    except ValueError as e:
        parser.error(f"{args.data}: {e}")
    params = init_params(args.seed)
    state = init_state(params)
    rng = np.random.default_rng(args.seed)  # the same shuffles as graphnn's fit(seed=...)
    n, t = len(data[next(iter(INPUTS))]), 0
    for epoch in range(1, args.epochs + 1):
        perm = None if args.no_shuffle else rng.permutation(n)
        try:
            value, t = fit_epoch(data, params, state, args.batch_size, perm, t, lr=args.lr)
        except (FloatingPointError, RuntimeError) as e:  # NaN/Inf, or no GPU for a CUDA module
            parser.exit(1, f"epoch {epoch}: {e}\\n")
        print(f"epoch {epoch}: loss {value:.6f}", flush=True)
    if args.save:
        np.savez(args.save, **params)


if __name__ == "__main__":
    main()'''

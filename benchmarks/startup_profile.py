"""Where a graphnn start goes: imports, graph, compile, and Numba per compiled function and phase.

    python benchmarks/startup_profile.py digits            # cold: fresh empty cache dirs
    python benchmarks/startup_profile.py mlp --layers 30 --width 64
    python benchmarks/startup_profile.py digits --cache DIR  # reuse DIR (warm when filled)

Runs one start in this process (start it fresh) and prints, for the first ``fit`` step, the wall
time of each Numba compile split into phases: ``typing`` (Numba's type inference pass),
``lowering`` (Numba IR to LLVM IR), ``llvm_opt`` (LLVM's function and module passes),
``codegen`` (machine code), ``cache`` (Numba's on-disk cache: load and save) and ``other``
(Numba's remaining front-end passes).  Times are exclusive: a callee compiled while its caller is
being typed is charged to the callee.  On a shared machine ``--cpu`` (process CPU time instead of
wall time) makes two runs comparable.  With ``--json`` the same figures are printed as JSON.
"""

from __future__ import annotations

import time

T0, C0 = time.perf_counter(), time.process_time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [BENCH_DIR, os.path.dirname(BENCH_DIR)]

PHASES = ("typing", "other", "lowering", "llvm_opt", "codegen", "cache")


class Spans:
    """A stack of (function, phase) spans; each moment of wall time goes to the innermost one."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.stack: list[list] = []  # [function, phase, start of the current exclusive slice]
        self.times: dict = defaultdict(float)
        self.compiles: dict = defaultdict(int)

    def push(self, function: str | None, phase: str) -> None:
        now = self.clock()
        if self.stack:
            top = self.stack[-1]
            self.times[(top[0], top[1])] += now - top[2]
        function = function or (self.stack[-1][0] if self.stack else "?")
        self.stack.append([function, phase, now])

    def pop(self) -> None:
        now = self.clock()
        function, phase, start = self.stack.pop()
        self.times[(function, phase)] += now - start
        if self.stack:
            self.stack[-1][2] = now

    @contextlib.contextmanager
    def span(self, function, phase):
        self.push(function, phase)
        try:
            yield
        finally:
            self.pop()


def _label(func) -> str:
    """A generated kernel by its name; a Numba-internal function by module and name."""
    module = func.__module__ or "?"
    if module.startswith("graphnn_"):
        return func.__name__
    return f"{module.replace('numba.', '')}.{func.__qualname__}"


def install(spans: Spans) -> None:
    """Hook Numba: compile and pass events, LLVM optimization and code generation, the cache."""
    from numba.core import codegen, dispatcher, event, typed_passes

    class Compile(event.Listener):
        def on_start(self, ev):
            name = _label(ev.data["dispatcher"].py_func)
            spans.compiles[name] += 1
            spans.push(name, "other")

        def on_end(self, ev):
            spans.pop()

    class Pass(event.Listener):
        def on_start(self, ev):
            name = ev.data["name"].split(" [")[0]
            phase = {"nopython_type_inference": "typing"}.get(name, "other")
            if name in ("native_lowering", "native_parfor_lowering"):
                phase = "lowering"
            spans.push(None, phase)

        def on_end(self, ev):
            spans.pop()

    event.register("numba:compile", Compile())
    event.register("numba:run_pass", Pass())
    del typed_passes

    def wrap(cls, method, phase):
        original = getattr(cls, method)

        def wrapper(*args, **kwargs):
            with spans.span(None, phase):
                return original(*args, **kwargs)

        setattr(cls, method, wrapper)

    wrap(codegen.CPUCodeLibrary, "_optimize_functions", "llvm_opt")
    wrap(codegen.CPUCodeLibrary, "_optimize_final_module", "llvm_opt")
    wrap(codegen.JITCodeLibrary, "_finalize_specific", "codegen")
    wrap(codegen.JITCodeLibrary, "get_pointer_to_function", "codegen")

    # Cache loads happen outside a compile event: charge them to the dispatcher.
    original_load = dispatcher.Dispatcher._compile_for_args

    def compile_for_args(self, *args, **kwargs):
        with spans.span(_label(self.py_func), "other"):
            return original_load(self, *args, **kwargs)

    dispatcher.Dispatcher._compile_for_args = compile_for_args
    from numba.core import caching

    for cls, method in [(caching.Cache, "load_overload"), (caching.Cache, "save_overload")]:
        wrap(cls, method, "cache")


def build(gn, args):
    """The graph and optimizer of the model named on the command line, and one batch of data."""
    import numpy as np

    if args.model == "digits":
        sizes, act, opt = (64, 128, 10), gn.relu, gn.SGD(lr=0.1, momentum=0.9)
    else:
        sizes = (args.width,) * (args.layers + 1) + (10,)
        act, opt = gn.relu, gn.SGD(lr=0.01, momentum=0.9)
    x, y = gn.input("x", (sizes[0],)), gn.input("y", (sizes[-1],))
    h = x
    for i in range(len(sizes) - 1):
        W = gn.param(f"W{i + 1}", (sizes[i], sizes[i + 1]), init="he_normal")
        b = gn.param(f"b{i + 1}", (sizes[i + 1],), init="zeros")
        h = h @ W + b
        if i < len(sizes) - 2:
            h = act(h)
    rng = np.random.default_rng(0)
    X = rng.random((args.batch, sizes[0]), dtype=np.float32)
    Y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], args.batch)]
    return gn.softmax_cross_entropy(h, y), opt, {"x": X, "y": Y}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", choices=["digits", "mlp"])
    p.add_argument("--layers", type=int, default=30, help="mlp: hidden layers")
    p.add_argument("--width", type=int, default=64, help="mlp: width of every hidden layer")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cache", help="cache directory to use (default: a fresh empty one)")
    p.add_argument("--predict", action="store_true", help="also time one predict call")
    p.add_argument("--cpu", action="store_true", help="Numba table in process CPU time, not wall")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="graphnn-profile-")
    os.environ["GRAPHNN_CACHE_DIR"] = cache
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")

    spans = Spans(time.process_time if args.cpu else time.perf_counter)
    stages = {}
    clock = [time.perf_counter(), time.process_time()]

    def stage(name):
        now = [time.perf_counter(), time.process_time()]
        stages[name] = (now[0] - clock[0], now[1] - clock[1])
        clock[:] = now

    import graphnn as gn

    stage("import graphnn")
    import numba  # noqa: F401  (graphnn may import it lazily: its import is a stage of its own)

    stage("import numba")
    install(spans)
    loss, opt, data = build(gn, args)
    stage("build tensors")
    graph = gn.Graph(loss)
    stage("derive (gn.Graph)")
    model = gn.compile(graph, optimizer=opt, backend="cpu")
    stage("gn.compile")
    model.fit(data, epochs=1, batch_size=args.batch, shuffle=True, seed=0)
    stage("first fit step")
    if args.predict:
        model.predict({"x": data["x"]})
        stage("first predict")
    stages["total (script start to here)"] = (time.perf_counter() - T0, time.process_time() - C0)

    functions = sorted(
        {f for f, _ in spans.times},
        key=lambda f: -sum(spans.times.get((f, ph), 0.0) for ph in PHASES),
    )
    table = {f: {ph: round(spans.times.get((f, ph), 0.0), 4) for ph in PHASES} for f in functions}
    if args.json:
        print(
            json.dumps(
                {
                    "stages": stages,
                    "numba": table,
                    "compiles": dict(spans.compiles),
                    "modules": sorted(sys.modules),
                }
            )
        )
        return
    print(f"{'stage':32s} {'wall s':>8s} {'cpu s':>8s}")
    for name, (wall, cpu) in stages.items():
        print(f"{name:32s} {wall:8.3f} {cpu:8.3f}")
    print()
    print(
        f"{'function (compiles)':60s}" + "".join(f"{ph:>10s}" for ph in PHASES) + f"{'total':>10s}"
    )
    sums = defaultdict(float)
    for f in functions:
        row = table[f]
        for ph in PHASES:
            sums[ph] += row[ph]
        label = f"{f} ({spans.compiles.get(f, 0)})"
        print(
            f"{label:60s}"
            + "".join(f"{row[ph]:10.3f}" for ph in PHASES)
            + f"{sum(row.values()):10.3f}"
        )
    print(
        f"{'all':60s}"
        + "".join(f"{sums[ph]:10.3f}" for ph in PHASES)
        + f"{sum(sums.values()):10.3f}"
    )
    heavy = [
        m
        for m in ("sympy", "networkx", "scipy", "matplotlib", "numba", "sklearn")
        if m in sys.modules
    ]
    print("\nimported:", ", ".join(heavy))


if __name__ == "__main__":
    main()

"""The ``graphnn`` command: train, inspect, check and export networks declared in spec files.

Exit codes: 0 success; 2 a usage or spec error; 1 a failure while running (training stopped on
NaN/Inf, a spec's ``[expect]`` was not met, a gradient check failed, a back end or an inspection
feature is not available).  Errors print one ``graphnn: error: ...`` line to stderr, never a
traceback (set ``GRAPHNN_DEBUG=1`` to see one).

>>> main(["graph", "--help"])  # doctest: +ELLIPSIS
usage: graphnn graph ...
0
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import warnings
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

from graphnn.errors import GraphnnError, NonFiniteError, RunExistsError, SpecError, one_line

USAGE, FAILURE = 2, 1
EXAMPLES = """examples:
  graphnn demo                              train the bundled digits MLP
  graphnn train examples/iris.toml          train a spec; writes runs/iris/
  graphnn grad examples/digits.toml --format latex
  graphnn check examples/xor.toml           finite-difference check of the gradients
  graphnn export examples/digits.toml -o digits_step.py
  graphnn predict runs/iris/model.npz rows.csv -o predictions.csv
  graphnn evaluate runs/iris/model.npz rows.csv
  graphnn cache --older-than 30             remove compiled kernels unused for 30 days
"""


OUTSIDE = "let [data] read a file outside the spec's folder"


class _UsageError(Exception):
    pass


class _Unavailable(Exception):
    """A feature another part of graphnn provides is missing from this installation."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        raise _UsageError(message)


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graphnn",
        description="Declare a network in a TOML spec; graphnn derives its gradients with SymPy "
        "and trains it with generated Numba kernels.",
        epilog=EXAMPLES + "\nexit codes: 0 ok, 2 usage or spec error, 1 failure while running",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    backends = ("numpy", "cpu", "cuda")

    p = sub.add_parser("train", help="train the model of a spec file")
    p.add_argument("spec", metavar="SPEC", help="the .toml spec file")
    p.add_argument("--allow-outside-data", action="store_true", help=OUTSIDE)
    p.add_argument("--epochs", type=_positive, help="override [train] epochs")
    p.add_argument("--backend", choices=backends, help="override [train] backend")
    p.add_argument("--out", type=Path, help="output directory (default runs/<spec name>)")
    _run_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("grad", help="print each parameter's gradient as a formula")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--allow-outside-data", action="store_true", help=OUTSIDE)
    p.add_argument("--param", metavar="P", help="only this parameter")
    p.add_argument("--format", choices=("text", "latex", "markdown", "html"), default="text")

    p = sub.add_parser("graph", help="print the graph's nodes with their ops and shapes")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--allow-outside-data", action="store_true", help=OUTSIDE)
    p.add_argument("--dot", type=Path, metavar="FILE", help="also write Graphviz DOT to FILE")
    p.add_argument("--png", type=Path, metavar="FILE", help="also render a PNG to FILE")
    p.add_argument(
        "--forward-only", action="store_true", help="--dot/--png without the gradient nodes"
    )

    p = sub.add_parser("check", help="check the compiled gradients by finite differences")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--allow-outside-data", action="store_true", help=OUTSIDE)
    p.add_argument("--backend", choices=backends, help="override [train] backend")
    p.add_argument("--rows", type=_positive, default=16, help="batch size (default 16)")
    p.add_argument("--tol", type=float, help="largest error allowed (default by dtype)")
    p.add_argument("--stability", action="store_true", help="also print a stability audit")

    p = sub.add_parser("export", help="write a standalone training module")
    p.add_argument(
        "spec",
        metavar="SPEC",
        help="a .toml spec, or a trained model.npz (its predict then takes raw rows)",
    )
    p.add_argument("--allow-outside-data", action="store_true", help=OUTSIDE)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    p.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--no-blas",
        dest="blas",
        action="store_false",
        help="matrix products as generated loops: the module then needs no SciPy",
    )

    p = sub.add_parser("predict", help="a saved model's predictions for the rows of a file")
    p.add_argument("model", metavar="MODEL", help="a model file (model.npz, a checkpoint)")
    p.add_argument("data", metavar="DATA", help="a .csv (header row) or .npz file of raw rows")
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write CSV here (default stdout)"
    )
    p.add_argument("--backend", choices=backends, help="default: the model's own")

    p = sub.add_parser("evaluate", help="a saved model's loss and metrics on the rows of a file")
    p.add_argument("model", metavar="MODEL", help="a model file (model.npz, a checkpoint)")
    p.add_argument("data", metavar="DATA", help="a .csv (header row) or .npz file, targets too")
    p.add_argument("--backend", choices=backends, help="default: the model's own")

    p = sub.add_parser("demo", help="train the bundled digits example (about 98%% accuracy)")
    p.add_argument("--out", type=Path, default=Path("runs/digits"), help="default runs/digits")
    p.add_argument("--epochs", type=_positive, help="override the spec's 20 epochs")
    p.add_argument("--backend", choices=backends, help="default cpu")
    _run_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("cache", help="show the kernel cache's size; --clear or prune it")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--clear", action="store_true", help="remove everything graphnn cached")
    what.add_argument(
        "--older-than", type=_days, metavar="DAYS", help="remove entries unused for DAYS days"
    )
    return parser


def _run_flags(parser) -> None:
    """An --out that holds a run is continued or replaced only when asked: never by default."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    what.add_argument(
        "--overwrite", action="store_true", help="delete the run in --out and start a new one"
    )


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc), USAGE)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except (SpecError, RunExistsError) as exc:
        return _fail(str(exc), USAGE)
    except _Unavailable as exc:
        return _fail(str(exc), FAILURE)
    except NonFiniteError as exc:
        return _fail(f"training failed: {exc}", FAILURE)
    except BrokenPipeError:  # e.g. `graphnn grad ... | head`: stop quietly
        _silence_stdout()
        return FAILURE
    except (GraphnnError, OSError) as exc:
        return _fail(str(exc), FAILURE)
    except ImportError as exc:  # e.g. a back end whose module or driver is missing
        return _fail(f"not available here: {exc}", FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # not anticipated: say what it was, without a traceback
        hint = " (GRAPHNN_DEBUG=1 shows a traceback)"
        return _fail(f"{type(exc).__name__}: {exc}{hint}", FAILURE)


def _fail(message: str, code: int) -> int:
    if _reported_by_rank_0(sys.exc_info()[1]):
        return code
    if os.environ.get("GRAPHNN_DEBUG", "0") not in ("", "0") and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    print(f"graphnn: error: {one_line(message)}", file=sys.stderr)
    return code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning is one line, as an error is; where in graphnn it was raised is no use here."""
    print(f"graphnn: warning: {one_line(str(message))}", file=sys.stderr)


def _reported_by_rank_0(exc) -> bool:
    """True on the other ranks of an MPI job for an error that every rank raised alike."""
    if not getattr(exc, "graphnn_every_rank", False):
        return False
    from graphnn.train.distributed import is_main

    return not is_main()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _load(path, args=None):
    """The built spec; any graphnn error while building it is a spec error (exit code 2)."""
    from graphnn.spec.build import load_spec

    try:
        return load_spec(path, getattr(args, "allow_outside_data", False))
    except SpecError:
        raise
    except GraphnnError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _inspect(function: str, what: str):
    """``graphnn.inspect.<function>``, or _Unavailable naming what needed it."""
    try:
        module = importlib.import_module("graphnn.inspect")
    except ModuleNotFoundError as exc:
        if exc.name != "graphnn.inspect":
            raise
        module = None
    fn = getattr(module, function, None)
    if fn is None:
        raise _Unavailable(
            f"{what} needs graphnn.inspect.{function}, which this version of graphnn "
            "does not have yet"
        )
    return fn


# --- commands ------------------------------------------------------------------------------


def cmd_train(args) -> int:
    spec = _load(args.spec, args)
    out = args.out or Path("runs") / spec.path.stem
    return _train(spec, out, args)


def cmd_demo(args) -> int:
    with ExitStack() as stack:
        ref = resources.files("graphnn.spec") / "bundled" / "digits.toml"
        spec = _load(stack.enter_context(resources.as_file(ref)))
        return _train(spec, args.out, args)


def _train(spec, out: Path, args) -> int:
    from graphnn.spec.runner import run_spec
    from graphnn.train.distributed import is_main

    progress = not args.quiet and sys.stderr.isatty()  # a bar in a log file is noise
    try:
        result = run_spec(
            spec,
            out,
            epochs=args.epochs,
            backend=args.backend,
            progress=progress,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        if not (out / "model.npz").is_file():
            raise  # interrupted before training began: nothing to resume
        again = "graphnn demo" if args.command == "demo" else f"graphnn train {args.spec}"
        again += f" --out {out}" if args.command == "train" and args.out else ""
        again += f" --out {out}" if args.command == "demo" and out != Path("runs/digits") else ""
        again += f" --epochs {args.epochs}" if args.epochs else ""
        again += f" --backend {args.backend}" if args.backend else ""
        return _fail(
            f"interrupted; the run so far is saved in {out} (model.npz, checkpoints/, "
            f"history.json); continue it with: {again} --resume",
            130,
        )
    unmet = [(key, bound) for key, bound, _, met in result.expectations() if not met]
    if not is_main():  # under mpiexec, rank 0 speaks for the job
        return FAILURE if unmet else 0
    for line in result.report():
        print(line)
    if unmet:  # [expect] is the spec's own test: a script or CI job sees it fail
        shown = ", ".join(f"{k} {'>=' if k == 'accuracy' else '<='} {b:g}" for k, b in unmet)
        return _fail(f"[expect] not met: {shown} (the model is saved all the same)", FAILURE)
    return 0


def cmd_grad(args) -> int:
    spec = _load(args.spec, args)
    graph = spec.graph
    if args.param is not None and args.param not in graph.param_names:
        from graphnn.exprparse import _suggest

        raise SpecError(
            f"--param: no parameter named {args.param!r} in {spec.path}; "
            + _suggest(args.param, graph.param_names)
        )
    if args.format in ("markdown", "html"):
        report = _inspect("report", f"grad --format {args.format}")
        print(report(graph, args.format, None if args.param is None else [args.param]))
        return 0
    # shared chain parts (a layer's δ) defined once, textbook style, and read by each gradient
    backprop = graph.backprop(None if args.param is None else [args.param])
    if args.format == "latex":
        print("\n".join(backprop.latex(graph.loss_name)))
    else:
        print(backprop.text(graph.loss_name))
    return 0


def cmd_graph(args) -> int:
    from graphnn.ir.shapes import show

    spec = _load(args.spec, args)
    graph = spec.graph
    rows = [("node", "op", "shape", "inputs")]
    for node in graph.forward.nodes:
        op = node.attr("fn", node.op)
        if node.op == "param":
            op = f"param ({node.attr('init')})"
        rows.append((node.name, str(op), show(node.shape), ", ".join(node.inputs)))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3])
    sizes = sum(math.prod(s) for s in graph.shapes.values())
    print(f"loss: {graph.loss_name}; {len(graph.param_names)} parameters, {sizes:,} values")
    if args.dot:
        text = _inspect("to_dot", "graph --dot")(graph, args.forward_only)
        args.dot.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"wrote {args.dot}")
    if args.png:
        _inspect("render_png", "graph --png")(graph, args.png, args.forward_only)
        print(f"wrote {args.png}")
    return 0


def cmd_check(args) -> int:
    from graphnn.inspect.gradcheck import TOLERANCE, check_gradients, random_data
    from graphnn.train.preprocess import Preprocessing

    spec = _load(args.spec, args)
    backend, dtype = args.backend or spec.train.backend, spec.train.dtype
    if spec.data is not None:
        data = {k: v[: args.rows] for k, v in spec.data.load_all().items()}
        shapes = {n.name: n.shape[1:] for n in spec.graph.forward.inputs}
        data = Preprocessing({}).encode(data, shapes, fit=True)  # labels as one-hot rows
    else:
        data = random_data(spec.graph, args.rows, spec.train.seed)
    rows = len(next(iter(data.values())))
    result = check_gradients(spec.graph, data, backend=backend, dtype=dtype, seed=spec.train.seed)
    tol = TOLERANCE[dtype] if args.tol is None else args.tol
    print(
        f"gradient check of {spec.path}: {backend} back end ({dtype}) against central "
        f"differences of the float64 numpy reference, {rows} rows"
    )
    width = max(len(n) for n in ["loss", *result.params])
    print(f"  {'loss'.ljust(width)}  rel. difference {result.loss_error:.2e}")
    for name, r in result.params.items():
        print(
            f"  {name.ljust(width)}  max rel error   {r.error:.2e}  "
            f"({r.checked} of {r.size} entries)"
        )
    failed = result.worst > tol
    if failed:
        print(f"FAILED: largest error {result.worst:.2e} > tolerance {tol:.0e}")
    else:
        print(f"ok: every error <= {tol:.0e}")
    if args.stability:
        audit = _inspect("stability_audit", "check --stability")
        print(audit(spec.graph))
    return FAILURE if failed else 0


def cmd_export(args) -> int:
    if args.spec.endswith(".npz"):  # a trained model: its preprocessing goes into the module
        from graphnn.model_file import load_model

        path = load_model(args.spec, backend="numpy").export(
            args.output, backend=args.backend, blas=args.blas
        )
        print(f"wrote {path}")
        return 0
    spec = _load(args.spec, args)
    try:
        from codegen.export.write import export_module  # noqa: F401 - only to see whether it exists
    except ImportError as exc:
        raise _Unavailable(f"export needs codegen.export.write ({exc})") from None
    train = spec.train
    path = spec.graph.export(
        args.output,
        train.optimizer,
        args.backend,
        train.dtype,
        train.epochs,
        train.batch_size,
        blas=args.blas,
    )
    print(f"wrote {path or args.output}")
    return 0


def _saved_model(args):
    from graphnn.model_file import load_model

    return load_model(args.model, backend=args.backend)


def cmd_predict(args) -> int:
    import csv

    import numpy as np

    from graphnn.spec.model_data import read_rows

    model = _saved_model(args)
    data = read_rows(model, args.data, "graphnn predict", with_target=False)
    pred = model.predict(data)
    flat = np.asarray(pred).reshape(len(pred), -1)
    header = [f"{model.prediction}_{k}" for k in range(flat.shape[1])]
    columns = [flat[:, k] for k in range(flat.shape[1])]
    if model.accuracy_kind and model.target:  # a classifier: its class first, in the user's labels
        header.insert(0, "label")
        columns.insert(0, model.preprocessing.labels(model.target, pred, model.accuracy_kind))
    out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in zip(*columns, strict=True):
            writer.writerow([v if isinstance(v, str) else repr(v.item()) for v in row])
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {args.output}: {len(flat)} rows", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from graphnn.spec.model_data import read_rows

    model = _saved_model(args)
    data = read_rows(model, args.data, "graphnn evaluate", with_target=True)
    metrics = model.evaluate(data)
    rows = len(next(iter(data.values())))
    print(f"{args.model} on {args.data} ({rows} rows)")
    for key, value in metrics.items():
        print(f"  {key:<10} {value:.6g}")
    return 0


def cmd_cache(args) -> int:
    from codegen import cache_files

    found = cache_files.entries()
    print(f"cache directory: {cache_files.cache_dir()}")
    labels = {"module": "kernel modules", "derivative": "derivative forms", "temp": "temp files"}
    for kind, (count, size) in cache_files.summary(found).items():
        print(f"  {labels[kind]:<17}{count:>6}  {_size(size)}")
    if not args.clear and args.older_than is None:
        return 0
    done = cache_files.remove(cache_files.stale(found, args.older_than))
    when = "" if args.clear else f", unused for {args.older_than:g} days"
    noun = "entry" if done.entries == 1 else "entries"
    print(f"removed {done.entries} {noun} ({_size(done.size)}{when})")
    if done.failed:
        more = f" and {len(done.failed) - 1} more" if len(done.failed) > 1 else ""
        return _fail(f"could not remove {done.failed[0]}{more}", FAILURE)
    return 0


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


COMMANDS = {
    "train": cmd_train,
    "grad": cmd_grad,
    "graph": cmd_graph,
    "check": cmd_check,
    "export": cmd_export,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "cache": cmd_cache,
}


if __name__ == "__main__":
    sys.exit(main())

"""A corpus of hostile and malformed specs, each run through ``graphnn train`` in a subprocess.

Every case must end with exit code 2 and one ``graphnn: error:`` line (no traceback; a
``graphnn: warning:`` line only where WARN expects one), within a wall-clock limit and an
address-space limit, and without creating the canary file that the code-execution payloads try
to create.  A case is (category, id, spec text, extra files): the
files are made in the spec's folder by a small function, so data-source cases can hold symlinks,
folders, forged ``.npy`` headers and pickles.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CANARY = "CANARY"
WALL_S = 60.0  # seconds per case (a cold interpreter, SymPy and the spec's own work)
MEMORY = 1 << 30  # bytes of address space per case (a failing run needs about 0.6 GB)
TOUCH = f"__import__('os').system('touch {CANARY}')"

HEAD = """
[inputs]
x = [2]
y = [1]
[params]
w = [2, 1]
"""
TAIL = """
[train]
epochs = 1
backend = "numpy"
"""
GOOD_GRAPH = '[graph]\npred = "sigmoid(x @ w)"\nloss = "mse(pred, y)"\n'
MISSING_DATA = '[data]\nsource = "missing.csv"\nx = ["a", "b"]\ny = ["c"]\n'


def spec(graph=GOOD_GRAPH, head=HEAD, tail=TAIL, data=MISSING_DATA, functions=""):
    """A spec of the usual small model with one part replaced."""
    return (functions + head + graph + tail + data).lstrip()


def with_function(formula: str, use="f(x @ w)") -> str:
    """A spec whose [functions] f is ``formula``; ends on its missing data file (exit 2) if the
    formula is accepted, so an accepted formula must still be derived quickly."""
    graph = f'[graph]\npred = "{use}"\nloss = "mse(pred, y)"\n'
    return spec(graph, functions=f'[functions]\nf = "{formula}"\n')


def chain(n: int) -> str:
    lines = ['h0 = "tanh(x @ w)"'] + [f'h{k} = "tanh(h{k - 1})"' for k in range(1, n)]
    return csv_spec(graph="[graph]\n" + "\n".join(lines) + f'\nloss = "mse(h{n - 1}, y)"\n')


def nested(depth: int, fn="tanh") -> str:
    return "z" if depth == 0 else f"{fn}({nested(depth - 1, fn)})"


def csv_spec(source="d.csv", columns='x = ["a", "b"]\ny = ["c"]', **parts) -> str:
    return spec(data=f'[data]\nsource = "{source}"\n{columns}\nvalidation_split = 0\n', **parts)


def npz_spec(source="d.npz") -> str:
    return spec(data=f'[data]\nsource = "{source}"\n')


# --- file makers (each gets the spec's folder) ---------------------------------------------------


def write_csv(text: str, name="d.csv"):
    return lambda d: (d / name).write_text(text, encoding="utf-8")


GOOD_ROWS = "a,b,c\n" + "1,2,0\n3,4,1\n" * 4


def good_csv(d: Path):
    (d / "d.csv").write_text(GOOD_ROWS)


def outside_csv(d: Path):
    (d.parent / "outside.csv").write_text(GOOD_ROWS)


def symlink_out(d: Path):
    (d.parent / "secret.txt").write_text("root:x:0:0:secret line\nsecond secret line\n")
    (d / "d.csv").symlink_to(d.parent / "secret.txt")


def folder(d: Path):
    (d / "d.csv").mkdir()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {CANARY}",))


def pickle_npz(d: Path):
    np.savez(d / "d.npz", x=np.array([_Payload()], dtype=object), y=np.zeros((1, 1)))


def pickle_plain(d: Path):
    (d / "d.npz").write_bytes(pickle.dumps(_Payload()))


def forged_header(d: Path):
    """x's .npy header claims (1e12, 2) float64 (16 TB); its data is 16 bytes."""
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 2), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(16)
    with zipfile.ZipFile(d / "d.npz", "w") as z:
        z.writestr("x.npy", npy)
        buf = io.BytesIO()
        np.save(buf, np.zeros((1, 1)))
        z.writestr("y.npy", buf.getvalue())


def zip_bomb(d: Path):
    """A 1 GB member the spec does not use, beside a used one of the wrong shape."""
    with zipfile.ZipFile(d / "d.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("unused.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (1 << 27,)}
            )
            block = bytes(1 << 20)
            for _ in range(1 << 10):
                f.write(block)
        for name, arr in {"x": np.zeros((4, 3)), "y": np.zeros((4, 1))}.items():
            buf = io.BytesIO()
            np.save(buf, arr)
            z.writestr(f"{name}.npy", buf.getvalue())


# --- the corpus ---------------------------------------------------------------------------------

CASES = [
    # code execution: the payload would create the canary
    ("code", "import-system", spec(f'[graph]\npred = "{TOUCH}"\nloss = "mse(pred, y)"\n'), None),
    ("code", "dunder-escape", spec('[graph]\npred = "().__class__.__bases__"\n'), None),
    ("code", "lambda", spec('[graph]\npred = "(lambda: 1)()"\nloss = "mse(pred, y)"\n'), None),
    ("code", "f-string", spec('[graph]\npred = "f\'{x}\'"\nloss = "mse(pred, y)"\n'), None),
    ("code", "function-payload", with_function(TOUCH), None),
    ("code", "sympify-bait", with_function("z.__class__"), None),
    ("code", "builtins-name", spec(GOOD_GRAPH + '__builtins__ = "x"\n'), None),
    ("code", "pickle-in-npz", npz_spec(), pickle_npz),
    ("code", "pickle-as-npz", npz_spec(), pickle_plain),
    # hostile formulas in [functions]
    ("formula", "exp-exp-exp", with_function("exp(exp(exp(z)))"), None),
    ("formula", "tanh-nested-5", with_function(nested(5)), None),
    ("formula", "divide-by-zero", with_function("z / 0"), None),
    ("formula", "zero-over-zero", with_function("(z - z) / (z - z)"), None),
    ("formula", "log-of-zero", with_function("log(z - z) + z"), None),
    ("formula", "extra-argument", with_function("sqrt(z, 3)"), None),
    ("formula", "missing-argument", with_function("exp()"), None),
    ("formula", "keyword-argument", with_function("exp(z, evaluate=0)"), None),
    ("formula", "huge-literal", with_function("z + " + "9" * 500), None),
    ("formula", "power-tower", with_function("z ** 16 ** 16"), None),
    ("formula", "long-formula", with_function("+".join(["z"] * 1500)), None),
    ("formula", "control-characters", with_function("z\\u202e + \\u0007q"), None),
    # TOML tricks
    ("toml", "nested-arrays", "x = " + "[" * 700 + "]" * 700 + "\n", None),
    ("toml", "nested-tables", "x = " + "{a = " * 700 + "1" + "}" * 700 + "\n", None),
    ("toml", "duplicate-key", HEAD + "x = [3]\n" + GOOD_GRAPH, None),
    ("toml", "not-utf8", "[inputs]\nx = [2]\n# \udcff\n", None),
    ("toml", "nul-in-string", spec('[graph]\npred = "x\\u0000"\nloss = "mse(pred, y)"\n'), None),
    ("toml", "long-value", spec('[graph]\npred = "' + "q" * 900_000 + '"\n'), None),
    ("toml", "long-key", spec(tail=TAIL + "q" * 900_000 + " = 1\n"), None),
    ("toml", "long-shape", spec(head=HEAD.replace("x = [2]", f"x = [{'0, ' * 300_000}0]")), None),
    ("toml", "control-key", spec(tail=TAIL + '"\\u202e\\u0007" = 1\n'), None),
    ("toml", "control-table", spec() + '["\\u001b[31m"]\nx = 1\n', None),
    ("toml", "bom-and-error", "\ufeff" + spec().replace("epochs = 1", "epochs = 0"), None),
    (
        "toml",
        "right-to-left",
        spec('[graph]\npred = "\\u202ex @ w"\nloss = "mse(pred, y)"\n'),
        None,
    ),
    ("toml", "array-of-inputs", "[[inputs]]\nx = [2]\n" + GOOD_GRAPH, None),
    ("toml", "inputs-not-table", "inputs = 5\n" + GOOD_GRAPH, None),
    ("toml", "float-shape", spec(head=HEAD.replace("x = [2]", "x = [2.5]")), None),
    ("toml", "bool-shape", spec(head=HEAD.replace("x = [2]", "x = [true]")), None),
    ("toml", "seed-negative", spec(tail=TAIL + "seed = -1\n"), None),
    ("toml", "seed-string", spec(tail=TAIL + 'seed = "abc"\n'), None),
    ("toml", "epochs-huge", spec(tail=TAIL.replace("epochs = 1", "epochs = 10000000000")), None),
    ("toml", "unknown-table", spec() + "[evil]\nx = 1\n", None),
    # resource bombs
    (
        "resource",
        "param-bytes",
        csv_spec(
            head=HEAD + "".join(f"p{k} = [10000, 10000]\n" for k in range(20)),
            graph='[graph]\npred = "sigmoid(x @ w)"\n'
            + "".join(f'q{k} = "sum(p{k})"\n' for k in range(20))
            + 'loss = "mse(pred, y)"\n',
        ),
        good_csv,
    ),
    (
        "resource",
        "input-elements",
        spec(head=HEAD.replace("x = [2]", "x = [100000, 100000]")),
        None,
    ),
    ("resource", "chain-1000", chain(1000), good_csv),
    ("resource", "forged-npy-header", npz_spec(), forged_header),
    ("resource", "npz-zip-bomb", npz_spec(), zip_bomb),
    ("resource", "csv-over-budget", csv_spec(), good_csv),
    # graph structure
    ("graph", "self-use", spec('[graph]\npred = "pred @ w"\nloss = "mse(pred, y)"\n'), None),
    (
        "graph",
        "later-node",
        spec('[graph]\npred = "sigmoid(h)"\nh = "x @ w"\nloss = "mse(pred, y)"\n'),
        None,
    ),
    ("graph", "shape-mismatch", spec('[graph]\npred = "w @ x"\nloss = "mse(pred, y)"\n'), None),
    ("graph", "loss-not-scalar", spec('[graph]\nloss = "x @ w"\n'), None),
    ("graph", "constant-node", spec('[graph]\npred = "1 + 2"\nloss = "mse(pred, y)"\n'), None),
    (
        "graph",
        "wrong-arity",
        spec('[graph]\npred = "relu(x @ w, y)"\nloss = "mse(pred, y)"\n'),
        None,
    ),
    ("graph", "shadow-op", spec('[graph]\nrelu = "x @ w"\nloss = "mse(relu, y)"\n'), None),
    ("graph", "unicode-name", spec('[graph]\n"ｘ" = "x @ w"\nloss = "mse(ｘ, y)"\n'), None),
    (
        "graph",
        "ligature-name",
        spec('[graph]\n"ﬁ" = "x @ w"\nfi = "ﬁ"\nloss = "mse(fi, y)"\n'),
        None,
    ),
    ("graph", "no-loss", spec('[graph]\npred = "x @ w"\n'), None),
    ("graph", "zero-dim", spec(head=HEAD.replace("x = [2]", "x = [0]")), None),
    # data sources
    ("data", "absolute-path", csv_spec("{DIR}/outside.csv"), outside_csv),
    ("data", "dot-dot", csv_spec("../outside.csv"), outside_csv),
    ("data", "symlink-out", csv_spec(), symlink_out),
    ("data", "folder", csv_spec(), folder),
    ("data", "duplicate-columns", csv_spec(), write_csv("a,b,a,c\n1,2,3,4\n5,6,7,8\n")),
    ("data", "not-a-number", csv_spec(), write_csv("a,b,c\n1,secret-cell,3\n")),
    ("data", "ragged-row", csv_spec(), write_csv("a,b,c\n1,2\n")),
    ("data", "missing-column", csv_spec(), write_csv("q,r,s\n1,2,3\n")),
    ("data", "not-csv", csv_spec(), lambda d: (d / "d.csv").write_bytes(b"\xff\xfe\x00garbage")),
    ("data", "empty-csv", csv_spec(), write_csv("")),
    ("data", "unknown-sklearn", spec(data='[data]\nsource = "sklearn:evil"\n'), None),
    ("data", "source-not-string", spec(data="[data]\nsource = 5\n"), None),
    ("data", "not-a-zip", npz_spec(), lambda d: (d / "d.npz").write_bytes(b"PK\x03\x04garbage")),
    ("data", "csv-nan", csv_spec(), write_csv("a,b,c\n1,nan,3\n")),
]
IDS = [f"{category}/{name}" for category, name, _, _ in CASES]
# Budgets lowered for a case, so that a small file shows the check (the defaults are tested too).
ENV = {"resource/csv-over-budget": {"GRAPHNN_MAX_DATA_BYTES": "64"}}
# Warnings a case must give besides its error (a formula past the derivation budget builds,
# with its derivative unsimplified, and says so).
WARN = {
    "formula/exp-exp-exp": "GRAPHNN_DERIVE_SECONDS",
    "formula/tanh-nested-5": "GRAPHNN_DERIVE_SECONDS",
}
# What the error must say, where exit 2 alone would not show that the right check caught it.
EXPECT = {
    "formula/exp-exp-exp": "missing.csv",  # derived within the budget, then the missing file
    "formula/tanh-nested-5": "missing.csv",
    "formula/extra-argument": "sqrt takes 1 argument",
    "formula/keyword-argument": "keyword",
    "resource/param-bytes": "GRAPHNN_MAX_PARAM_BYTES",
    "resource/chain-1000": "GRAPHNN_MAX_NODES",
    "resource/forged-npy-header": "x.npy's header says shape (1000000000000, 2)",
    "resource/csv-over-budget": "GRAPHNN_MAX_DATA_BYTES",
    "toml/nested-arrays": "nested",
    "toml/nested-tables": "nested",
    "toml/bom-and-error": "[train] epochs",
    "data/absolute-path": "--allow-outside-data",
    "data/dot-dot": "--allow-outside-data",
    "data/symlink-out": "--allow-outside-data",
    "data/folder": "is a folder",
    "data/duplicate-columns": "column 'a' twice",
}


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_case(tmp_path: Path, text: str, files, env=None, timeout: float = WALL_S):
    """(exit code or None on timeout, stderr, seconds, canary created) of one case."""
    where = tmp_path / "specs"
    where.mkdir()
    text = text.replace("{DIR}", str(tmp_path))
    (where / "spec.toml").write_text(text, encoding="utf-8", errors="surrogateescape")
    if files is not None:
        files(where)
    env = {**os.environ, "GRAPHNN_DEBUG": "0", "PYTHONPATH": str(ROOT), **(env or {})}
    argv = [sys.executable, "-m", "graphnn.cli", "train", "spec.toml", "--out", "run"]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            preexec_fn=limit_memory,
        )
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, err = None, ""
    seconds = time.monotonic() - started
    canary = any(p.name == CANARY for p in tmp_path.rglob("*")) or Path(CANARY).exists()
    return code, err, seconds, canary


@pytest.mark.parametrize(("category", "name", "text", "files"), CASES, ids=IDS)
def test_hostile_spec_is_one_clean_error(tmp_path, category, name, text, files):
    case = f"{category}/{name}"
    code, err, seconds, canary = run_case(tmp_path, text, files, ENV.get(case))
    assert not canary, "the payload ran"
    assert code is not None, f"no answer within {WALL_S:g} s"
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("graphnn: error: ")]
    warnings = [line for line in lines if line.startswith("graphnn: warning: ")]
    assert code == 2 and len(errors) == 1, err[-2000:]
    assert len(warnings) == len(lines) - 1 and len(warnings) == (case in WARN), err[-2000:]
    assert "Traceback" not in err
    for line in lines:
        assert len(line) < 1000, "an unbounded message"
        assert line.isprintable(), "control characters printed raw"
        assert "secret" not in line, "an error echoed the data file"
    assert EXPECT.get(case, "") in errors[0]
    assert WARN.get(case, "") in "".join(warnings)

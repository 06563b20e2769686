"""Tests for the ``graphnn`` command line: in-process through main() and as the console script."""

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from graphnn.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPT = pathlib.Path(sys.executable).with_name("graphnn")
COMMANDS = ["train", "grad", "graph", "check", "export", "demo", "cache"]

BAD_SPEC = """
[inputs]
x = [2]
y = [1]
[params]
w = [2, 1]
[graph]
pred = "sigmoid(x @ ww)"
loss = "mse(pred, y)"
"""

DIVERGING = """
[inputs]
x = [2]
y = [1]
[params]
w = { shape = [2, 1], init = "ones" }
[graph]
pred = "exp(x @ w)"
loss = "mse(pred, y)"
[train]
optimizer = "sgd"
lr = 1e6
batch_size = "full"
epochs = 5
backend = "numpy"
[data]
source = "data/and.csv"
x = ["x1", "x2"]
y = ["label"]
validation_split = 0
"""


def run(*args, cwd=None):
    """The console script in a subprocess; (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "GRAPHNN_DEBUG": "0"},
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- help and usage ---------------------------------------------------------------------------


def test_console_script_is_installed_and_helps():
    assert SCRIPT.exists(), "pip install -e . should create the graphnn console script"
    code, out, err = run("--help")
    assert code == 0 and err == ""
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: graphnn {command}")


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "usage: graphnn"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train"], "the following arguments are required: SPEC"),
        (["train", "x.toml", "--epochs", "0"], "expected a positive integer, got '0'"),
        (["train", "x.toml", "--backend", "gpu"], "invalid choice: 'gpu'"),
        (["export", "x.toml"], "the following arguments are required: -o/--output"),
        (["grad", "x.toml", "--format", "pdf"], "invalid choice: 'pdf'"),
        (["cache", "--older-than", "-1"], "expected a number of days >= 0, got '-1'"),
        (["cache", "--older-than", "nan"], "expected a number of days >= 0, got 'nan'"),
        (["cache", "--clear", "--older-than", "1"], "not allowed with argument --clear"),
    ],
)
def test_usage_errors_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    if argv:
        assert "graphnn: error: " in err


# --- spec errors: exit code 2, one message line, no traceback --------------------------------


BAD_SPEC_ERROR = (
    "graphnn: error: bad.toml [graph] pred: unknown name 'ww' (column 13); did you mean 'w'?"
)


def test_spec_error_in_a_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "bad.toml").write_text(BAD_SPEC)
    code, out, err = run("train", "bad.toml", cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [BAD_SPEC_ERROR]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


@pytest.mark.parametrize("command", ["grad", "graph", "check", "export"])
def test_every_command_reports_spec_errors_the_same_way(command, in_tmp, capsys):
    (in_tmp / "bad.toml").write_text(BAD_SPEC)
    argv = [command, "bad.toml"] + (["-o", "m.py"] if command == "export" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [BAD_SPEC_ERROR] and captured.out == ""


def test_hostile_spec_through_the_cli(tmp_path):
    text = BAD_SPEC.replace('"sigmoid(x @ ww)"', "\"__import__('os').system('touch PWNED')\"")
    (tmp_path / "evil.toml").write_text(text)
    code, out, err = run("train", "evil.toml", cwd=tmp_path)
    assert code == 2 and "'__import__' is not allowed" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.toml"]


def test_missing_spec_file(in_tmp, capsys):
    assert main(["grad", "nope.toml"]) == 2
    assert "graphnn: error: nope.toml: no such spec file" in capsys.readouterr().err


# --- train ------------------------------------------------------------------------------------


def test_train_in_a_subprocess_writes_the_run(tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run("train", EXAMPLES / "neuron.toml", "--epochs", "40", "--out", out)
    assert code == 0, err
    assert "accuracy 1.0000" in stdout and "40 epochs on cpu" in stdout
    assert "Traceback" not in err
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 40 and history["stopped"] == "epochs"
    assert history["loss"][-1] < history["loss"][0]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.npz").exists()
    assert (out / "checkpoints" / "ckpt-000000040.npz").exists()


def test_train_in_process_reports_held_out_accuracy(in_tmp, capsys):
    code = main(["train", str(EXAMPLES / "iris.toml"), "--backend", "numpy", "--epochs", "3"])
    out, err = capsys.readouterr()
    # 3 of the spec's 60 epochs (seeded): 80% held out, short of its [expect]
    assert "expect     accuracy >= 0.9: NOT met (held-out 0.8000)" in out
    assert code == 1 and err.strip().endswith(
        "[expect] not met: accuracy >= 0.9 (the model is saved all the same)"
    )
    assert "3 epochs on numpy" in out
    assert "held-out   loss" in out and "(30 samples)" in out and "accuracy" in out
    assert "expect     accuracy >= 0.9" in out
    run_dir = in_tmp / "runs" / "iris"  # the default: runs/<spec stem>
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["val_accuracy"]) == 3 and len(history["accuracy"]) == 3
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "ckpt-000000024.npz" in checkpoints  # 3 epochs of 8 steps (120 rows, batch 16)


def test_training_failure_exits_1(in_tmp, capsys):
    (in_tmp / "data").mkdir()
    (in_tmp / "data" / "and.csv").write_text((EXAMPLES / "data" / "and.csv").read_text())
    (in_tmp / "boom.toml").write_text(DIVERGING)
    assert main(["train", "boom.toml", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphnn: error: training failed: ") and "NaN or Inf" in err


def test_unmet_expectation_exits_1_and_keeps_the_model(in_tmp, capsys):
    (in_tmp / "data").mkdir()
    (in_tmp / "data" / "and.csv").write_text((EXAMPLES / "data" / "and.csv").read_text())
    spec = (EXAMPLES / "neuron.toml").read_text().replace("accuracy = 1.0", "loss = 0.0")
    (in_tmp / "strict.toml").write_text(spec)
    assert main(["train", "strict.toml", "--epochs", "5", "--quiet", "--out", "run"]) == 1
    out, err = capsys.readouterr()
    assert "expect     loss <= 0: NOT met" in out
    assert (
        err.strip()
        == "graphnn: error: [expect] not met: loss <= 0 (the model is saved all the same)"
    )
    assert (in_tmp / "run" / "model.npz").exists()


def test_demo_trains_the_bundled_spec(in_tmp, capsys):
    code = main(["demo", "--out", "demo", "--epochs", "2", "--backend", "numpy", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1 and "accuracy >= 0.95: NOT met" in out  # 2 of its 20 epochs
    assert "graphnn/spec/bundled/digits.toml" in out.replace(os.sep, "/")
    for name in ("history.json", "curves.png", "model.npz"):
        assert (in_tmp / "demo" / name).exists()


def test_demo_spec_ships_in_the_package_and_matches_the_example():
    packaged = ROOT / "graphnn" / "spec" / "bundled" / "digits.toml"
    assert packaged.read_bytes() == (EXAMPLES / "digits.toml").read_bytes()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\n"graphnn.spec" = ["bundled/*.toml"]' in pyproject


# --- grad, graph, check, export ----------------------------------------------------------------


def test_grad_text_and_latex(capsys):
    assert main(["grad", str(EXAMPLES / "digits.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines] == [
        "δ2",
        "δ1",
        "dloss/dW1",
        "dloss/db1",
        "dloss/dW2",
        "dloss/db2",
    ]
    assert lines[0] == "δ2 = dloss/d(logits) = (softmax(logits) ∘ rowsum(y) - y)/n"
    assert lines[1] == "δ1 = dloss/d(add1) = (δ2 W2^T) ∘ relu'(add1)"
    assert lines[4] == "dloss/dW2 = h1^T δ2"
    assert main(["grad", str(EXAMPLES / "digits.toml"), "--format", "latex", "--param", "W2"]) == 0
    latex = capsys.readouterr().out.strip().splitlines()
    assert latex[0].startswith(
        r"\delta_{2} = \frac{\partial \mathrm{loss}}{\partial \mathrm{logits}}"
    )
    assert latex[1] == r"\frac{\partial \mathrm{loss}}{\partial \mathrm{W2}} = h_{1}^{T} \delta_{2}"
    assert len(latex) == 2


def test_grad_unknown_param_suggests(capsys):
    assert main(["grad", str(EXAMPLES / "digits.toml"), "--param", "W3"]) == 2
    assert "no parameter named 'W3'" in capsys.readouterr().err


@pytest.fixture
def fake_inspect(monkeypatch):
    """A stand-in graphnn.inspect that records what the CLI passes to it."""
    calls = []
    module = types.ModuleType("graphnn.inspect")
    module.report = lambda graph, fmt, params: calls.append(("report", fmt, params)) or "REPORT"
    module.to_dot = lambda graph, fwd=False: calls.append(("to_dot", fwd)) or "digraph g {}"
    module.render_png = lambda graph, path, fwd=False: calls.append(("render_png", str(path), fwd))
    module.stability_audit = lambda graph: calls.append(("audit",)) or "AUDIT OK"
    monkeypatch.setitem(sys.modules, "graphnn.inspect", module)
    return calls


def test_grad_markdown_and_html_call_the_inspect_report(fake_inspect, capsys):
    for fmt in ("markdown", "html"):
        assert main(["grad", str(EXAMPLES / "xor.toml"), "--format", fmt]) == 0
        assert capsys.readouterr().out.strip() == "REPORT"
    assert main(["grad", str(EXAMPLES / "xor.toml"), "--format", "html", "--param", "W2"]) == 0
    assert fake_inspect == [
        ("report", "markdown", None),
        ("report", "html", None),
        ("report", "html", ["W2"]),
    ]


def test_missing_inspect_feature_is_reported_cleanly(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "graphnn.inspect", None)
    assert main(["grad", str(EXAMPLES / "xor.toml"), "--format", "html"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "graphnn: error: grad --format html needs graphnn.inspect.report, which this "
        "version of graphnn does not have yet"
    )


def test_graph_prints_nodes_and_writes_dot_and_png(fake_inspect, in_tmp, capsys):
    argv = ["graph", str(EXAMPLES / "swish.toml"), "--dot", "g.dot", "--png", "g.png"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["h"][1:4] == ["swish", "(batch,", "32)"]
    assert rows["W1"][1:3] == ["param", "(he_normal)"]
    assert rows["probs"][1] == "softmax"
    assert "4 parameters, 547 values" in out
    assert (in_tmp / "g.dot").read_text() == "digraph g {}\n"
    assert fake_inspect == [("to_dot", False), ("render_png", "g.png", False)]


def test_graph_forward_only_asks_for_the_forward_graph(fake_inspect, in_tmp):
    argv = ["graph", str(EXAMPLES / "swish.toml"), "--dot", "g.dot", "--png", "g.png"]
    assert main([*argv, "--forward-only"]) == 0
    assert fake_inspect == [("to_dot", True), ("render_png", "g.png", True)]


def test_check_passes_and_prints_each_param(fake_inspect, capsys):
    assert main(["check", str(EXAMPLES / "xor.toml"), "--backend", "numpy", "--stability"]) == 0
    out = capsys.readouterr().out
    for name in ("W1", "b1", "W2", "b2"):
        assert any(line.split()[:2] == [name, "max"] for line in out.splitlines())
    lines = out.rstrip().splitlines()
    assert lines[-2:] == ["ok: every error <= 1e-04", "AUDIT OK"]  # the verdict, then the audit


def test_check_fails_with_exit_1_above_the_tolerance(capsys):
    assert main(["check", str(EXAMPLES / "xor.toml"), "--backend", "numpy", "--tol", "1e-30"]) == 1
    assert "FAILED: largest error" in capsys.readouterr().out


def test_check_compiled_cpu_gradients(capsys):
    assert main(["check", str(EXAMPLES / "neuron.toml")]) == 0
    out = capsys.readouterr().out
    assert "cpu back end (float32)" in out and "ok: every error <= 1e-04" in out


def test_export_writes_a_standalone_module(in_tmp, capsys):
    assert main(["export", str(EXAMPLES / "xor.toml"), "-o", "xor_step.py"]) == 0
    assert capsys.readouterr().out.strip() == "wrote xor_step.py"
    text = (in_tmp / "xor_step.py").read_text()
    assert "def init_params(" in text and "import graphnn" not in text
    # its command line trains as the spec says: full batches, 300 epochs, the spec's lr
    lines = text.splitlines()
    assert "EPOCHS = 300  # main()'s defaults" in lines
    assert "BATCH_SIZE = None  # None: the whole data set per step" in lines
    assert "LR = 0.05" in lines
    from graphnn.spec.build import load_spec

    train, _ = load_spec(EXAMPLES / "xor.toml").load_data()
    np.savez(in_tmp / "xor.npz", **train)
    proc = subprocess.run(
        [sys.executable, "xor_step.py", "xor.npz"],
        cwd=in_tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    epochs = re.findall(r"^epoch (\d+): loss", proc.stdout, re.M)
    assert len(epochs) == 300 and epochs[-1] == "300"


def test_export_to_a_missing_directory_fails_cleanly(in_tmp, capsys):
    assert main(["export", str(EXAMPLES / "xor.toml"), "-o", "no/such/dir/m.py"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphnn: error: ") and "does not exist" in err


def test_check_without_data_uses_random_inputs(in_tmp, capsys):
    (in_tmp / "nodata.toml").write_text(BAD_SPEC.replace("ww", "w"))
    assert main(["check", "nodata.toml", "--backend", "numpy", "--rows", "5"]) == 0
    assert "numpy reference, 5 rows" in capsys.readouterr().out
    assert main(["train", "nodata.toml"]) == 2
    assert "graphnn: error: nodata.toml: has no [data] table" in capsys.readouterr().err

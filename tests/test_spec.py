"""Tests for spec files: parsing, [[layers]] expansion, data sources, errors, hostile input."""

import ast
import pathlib

import numpy as np
import pytest

import graphnn as gn
from graphnn.errors import SpecError
from graphnn.spec import build as spec_module
from graphnn.spec.build import load_spec, loads_spec
from graphnn.spec.data_table import load_sklearn, split
from tests.finite_diff import numeric_gradients, relative_error

ROOT = pathlib.Path(__file__).resolve().parents[1]

MLP = """
[inputs]
x = [4]
y = [3]

[params]
W1 = { shape = [4, 8], init = "he_normal" }
b1 = { shape = [8], init = "zeros" }
W2 = { shape = [8, 3] }
b2 = [3]

[graph]
h = "relu(x @ W1 + b1)"
logits = "h @ W2 + b2"
loss = "softmax_cross_entropy(logits, y)"
"""


def write(tmp_path, text, name="model.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spec_error(text, path="model.toml") -> str:
    with pytest.raises(SpecError) as info:
        loads_spec(text, path)
    return str(info.value)


# --- parsing ---------------------------------------------------------------------------------


def test_explicit_spec_builds_the_graph_with_spec_names():
    spec = loads_spec(MLP, "mlp.toml")
    g = spec.graph
    assert g.param_names == ["W1", "b1", "W2", "b2"]
    assert g.shapes == {"W1": (4, 8), "b1": (8,), "W2": (8, 3), "b2": (3,)}
    assert g.inputs == {"x": (None, 4), "y": (None, 3)}
    assert g.loss_name == "loss"
    names = {n.name for n in g.forward.nodes}
    assert {"h", "logits", "loss"} <= names
    inits = {n.name: n.attr("init") for n in g.forward.params}
    assert inits == {
        "W1": "he_normal",
        "b1": "zeros",
        "W2": "glorot_uniform",
        "b2": "glorot_uniform",
    }
    assert str(g.gradient("W2")) == "h^T ((softmax(logits) ∘ rowsum(y) - y)/n)"


def test_train_defaults():
    t = loads_spec(MLP).train
    assert (t.loss, t.batch_size, t.epochs, t.backend, t.seed, t.dtype) == (
        "loss",
        32,
        20,
        "cpu",
        0,
        "float32",
    )
    assert t.optimizer.name == "sgd" and t.optimizer.hyper["lr"] == 0.01
    assert (t.tol, t.patience, t.early_stopping) == (None, 5, False)


@pytest.mark.parametrize(
    "settings, name, hyper",
    [
        ('optimizer = "sgd"\nlr = 0.5', "sgd", {"lr": 0.5}),
        ('optimizer = "momentum"\nlr = 0.1', "sgd_momentum", {"momentum": 0.9}),
        ('optimizer = "sgd"\nmomentum = 0.8\nnesterov = true', "sgd_nesterov", {"momentum": 0.8}),
        ('optimizer = "adam"\nbetas = [0.8, 0.99]', "adam", {"beta1": 0.8, "beta2": 0.99}),
        ('optimizer = "adamw"\nweight_decay = 0.1', "adamw", {"weight_decay": 0.1}),
        ('optimizer = "rmsprop"\nalpha = 0.9\neps = 1e-6', "rmsprop", {"alpha": 0.9}),
        ('optimizer = "adagrad"\nlr = 0.2', "adagrad", {"lr": 0.2}),
    ],
)
def test_optimizers(settings, name, hyper):
    opt = loads_spec(MLP + "[train]\n" + settings + "\n").train.optimizer
    assert opt.name == name
    assert {k: opt.hyper[k] for k in hyper} == hyper


def test_train_settings():
    text = (
        MLP
        + """
[train]
optimizer = "adam"
lr = 0.003
clip_norm = 1.5
batch_size = "full"
epochs = 7
backend = "numpy"
seed = 3
dtype = "float64"
predict = "logits"

[train.convergence]
tol = 1e-5
patience = 2
early_stopping = true
"""
    )
    spec = loads_spec(text)
    t = spec.train
    assert t.optimizer.clip_norm == 1.5 and t.optimizer.hyper["lr"] == 0.003
    assert (t.batch_size, t.epochs, t.backend, t.seed, t.dtype) == (None, 7, "numpy", 3, "float64")
    assert (t.tol, t.patience, t.early_stopping, t.predict) == (1e-5, 2, True, "logits")
    fit = spec.fit_options()
    assert fit["batch_size"] is None and fit["early_stopping"] and fit["tol"] == 1e-5
    assert spec.compile_options()["dtype"] == "float64"


def test_unused_nodes_stay_in_the_forward_graph():
    spec = loads_spec(MLP + 'probs = "softmax(logits)"\n[train]\npredict = "probs"\n')
    assert "probs" in spec.graph.forward.by_name
    assert spec.graph.forward.node("probs").op == "softmax"


def test_expression_features():
    text = MLP.replace('"relu(x @ W1 + b1)"', '"leaky_relu(x @ W1 + b1, slope=0.2) * 2 - 1"')
    text += 'extra = "mean(sum(h ** 2, axis=1)) / 2"\n'
    spec = loads_spec(text)
    assert spec.graph.forward.node("extra").shape == ()


# --- [[layers]] shorthand --------------------------------------------------------------------

LAYERS = """
[inputs]
x = [4]
y = [3]

[model]
input = "x"
target = "y"
loss = "softmax_cross_entropy"

[[layers]]
units = 8
activation = "relu"

[[layers]]
units = 3
"""

EXPLICIT = """
[inputs]
x = [4]
y = [3]

[params]
W1 = { shape = [4, 8], init = "he_normal" }
b1 = { shape = [8], init = "zeros" }
W2 = { shape = [8, 3], init = "glorot_uniform" }
b2 = { shape = [3], init = "zeros" }

[graph]
h1 = "relu(x @ W1 + b1)"
logits = "h1 @ W2 + b2"
loss = "softmax_cross_entropy(logits, y)"
"""


def _structure(graph):
    return [(n.name, n.op, n.shape, n.inputs, n.attr("fn"), n.attr("init")) for n in graph.forward]


def test_layers_expand_to_the_explicit_form():
    short, explicit = loads_spec(LAYERS).graph, loads_spec(EXPLICIT).graph
    assert short.param_names == explicit.param_names
    assert short.shapes == explicit.shapes
    assert _structure(short) == _structure(explicit)
    for p in explicit.param_names:
        assert str(short.gradient(p)) == str(explicit.gradient(p))
        assert short.gradient(p).latex() == explicit.gradient(p).latex()
    params = explicit.init_params(seed=1)
    for a, b in zip(short.init_params(seed=1).values(), params.values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_layers_mse_names_and_custom_activation():
    text = LAYERS.replace("softmax_cross_entropy", "mse").replace(
        "units = 3\n", 'units = 3\nactivation = "sigmoid"\n'
    )
    text = '[functions]\nswish = "z * tanh(z)"\n' + text.replace('"relu"', '"swish"')
    graph = loads_spec(text).graph
    assert graph.forward.node("h1").attr("fn") == "swish"
    assert graph.forward.node("output").attr("fn") == "sigmoid"
    assert graph.forward.node("W1").attr("init") == "glorot_uniform"


@pytest.mark.parametrize(
    "change, expected",
    [
        (("units = 3\n", 'units = 3\nactivation = "relu"\n'), "[[layers]] #2 activation"),
        (("units = 3\n", "units = 5\n"), "[[layers]] #2 units: the last layer has 5"),
        (('activation = "relu"', 'activation = "rleu"'), "did you mean 'relu'?"),
        (('target = "y"', 'target = "t"'), "[model] target: no input named 't'"),
        (("units = 8", "units = 0"), "[[layers]] #1 units"),
        (("units = 8", "unit = 8"), "[[layers]] #1: unknown key 'unit'"),
        (('loss = "softmax_cross_entropy"', 'loss = "ce"'), "[model] loss: unknown loss 'ce'"),
    ],
)
def test_layers_errors(change, expected):
    assert expected in spec_error(LAYERS.replace(*change), "l.toml")


def test_layers_cannot_mix_with_graph():
    assert "[graph]: cannot be combined with [[layers]]" in spec_error(
        LAYERS + '[graph]\nq = "x"\n'
    )


# --- [functions] ------------------------------------------------------------------------------


def test_user_function_is_differentiated_like_a_builtin():
    text = '[functions]\nswish = "z / (1 + exp(-z))"\n' + MLP.replace("relu(", "swish(")
    graph = loads_spec(text).graph
    assert graph.forward.node("h").attr("fn") == "swish"
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=v).astype(np.float64) for k, v in graph.shapes.items()}
    data = {"x": rng.normal(size=(5, 4)), "y": np.eye(3)[rng.integers(0, 3, 5)]}
    _, grads = graph.value_and_grad(params, data, dtype=np.float64)
    numeric = numeric_gradients(graph, params, data)
    for name in graph.param_names:
        assert relative_error(grads[name], numeric[name]) < 1e-6, name


@pytest.mark.parametrize("formula", ["sqrt(z * z + 1)", "erf(z) + abs(z)", "log(1 + exp(z))"])
def test_function_formulas_use_the_allowed_sympy_functions(formula):
    graph = loads_spec(f'[functions]\nf = "{formula}"\n' + MLP.replace("relu(", "f(")).graph
    assert graph.forward.node("h").attr("fn") == "f"


# --- data -------------------------------------------------------------------------------------


def data_spec(tmp_path, data_table, inputs="x = [4]\ny = [3]", mlp=MLP):
    text = mlp.replace("x = [4]\ny = [3]", inputs) + "\n[data]\n" + data_table
    return load_spec(write(tmp_path, text))


@pytest.mark.parametrize(
    "name, features, classes, rows",
    [
        ("digits", 64, 10, 1797),
        ("iris", 4, 3, 150),
        ("wine", 13, 3, 178),
        ("breast_cancer", 30, 1, 569),
    ],
)
def test_sklearn_sources(tmp_path, name, features, classes, rows):
    spec = data_spec(
        tmp_path,
        f'source = "sklearn:{name}"\nfeatures = "x"\ntargets = "y"\n',
        f"x = [{features}]\ny = [{classes}]",
        MLP.replace("[4, 8]", f"[{features}, 8]")
        .replace("[8, 3]", f"[8, {classes}]")
        .replace("b2 = [3]", f"b2 = [{classes}]")
        .replace(
            "softmax_cross_entropy",
            "binary_cross_entropy_with_logits" if classes == 1 else "softmax_cross_entropy",
        ),
    )
    train, val = spec.load_data()
    assert len(train["x"]) + len(val["x"]) == rows
    assert len(val["x"]) == round(rows * 0.2)
    assert train["x"].dtype == np.float32 and train["y"].shape[1:] == (classes,)
    x = np.concatenate([train["x"], val["x"]])
    y = np.concatenate([train["y"], val["y"]])
    if name == "digits":
        assert x.min() == 0 and x.max() == 1
        assert spec.compile_options()["scale"] is None
    else:  # raw here: the model standardizes them with the training rows' statistics only
        from sklearn import datasets

        raw = getattr(datasets, f"load_{name}")().data.astype(np.float32)
        np.testing.assert_array_equal(np.sort(x, axis=0), np.sort(raw, axis=0))
        assert spec.compile_options()["scale"] == {"x": "standard"}
    if classes > 1:
        np.testing.assert_array_equal(y.sum(axis=1), 1)
    assert set(np.unique(y)) == {0.0, 1.0}


def test_split_is_seeded_and_disjoint():
    arrays = {"x": np.arange(50, dtype=np.float32)[:, None]}
    a_train, a_val = split(arrays, 0.2, seed=1)
    b_train, b_val = split(arrays, 0.2, seed=1)
    np.testing.assert_array_equal(a_val["x"], b_val["x"])
    assert len(a_val["x"]) == 10 and len(a_train["x"]) == 40
    assert not set(a_val["x"][:, 0]) & set(a_train["x"][:, 0])
    assert not np.array_equal(split(arrays, 0.2, seed=2)[1]["x"], a_val["x"])


def test_npz_by_input_names(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(10, 4)), np.eye(3)[np.arange(10) % 3]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = data_spec(tmp_path, 'source = "d.npz"\nvalidation_split = 0\n')
    train, val = spec.load_data()
    assert val is None
    np.testing.assert_allclose(train["x"], x.astype(np.float32))


def test_npz_mapping_and_one_hot_labels(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((6, 4)), labels=np.array([0, 1, 2, 2, 1, 0]))
    spec = data_spec(
        tmp_path, 'source = "d.npz"\nx = "X"\ny = "labels"\none_hot = "y"\nvalidation_split = 0\n'
    )
    train, _ = spec.load_data()
    # labels, one per row: the model encodes them (one-hot) and keeps the classes
    np.testing.assert_array_equal(train["y"], [0, 1, 2, 2, 1, 0])
    assert train["y"].dtype == np.int64


def test_npz_refuses_pickles(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}] * 3, dtype=object), y=np.ones((3, 3)))
    spec = data_spec(tmp_path, 'source = "d.npz"\n')
    with pytest.raises(SpecError, match=r"\[data\] source: cannot read"):
        spec.load_data()


CSV = "c0,c1,c2,c3,label\n" + "".join(f"{k},{k + 1},{-k},0.5,{k % 3}\n" for k in range(10))


@pytest.mark.parametrize("one_hot", ["true", '"y"', '["y"]'])
def test_csv_columns_and_one_hot(tmp_path, one_hot):
    (tmp_path / "d.csv").write_text(CSV)
    spec = data_spec(
        tmp_path,
        f'source = "d.csv"\nx = ["c0", "c1", "c2", "c3"]\ny = ["label"]\none_hot = {one_hot}\n'
        "validation_split = 0.3\n",
    )
    train, val = spec.load_data()
    assert len(train["x"]) == 7 and len(val["x"]) == 3
    rows = np.concatenate([train["x"], val["x"]])
    assert sorted(rows[:, 0]) == list(range(10))
    np.testing.assert_array_equal(rows[:, 1], rows[:, 0] + 1)
    labels = np.concatenate([train["y"], val["y"]])
    np.testing.assert_array_equal(labels, rows[:, 0] % 3)


def test_csv_without_one_hot_keeps_columns(tmp_path):
    (tmp_path / "d.csv").write_text(CSV)
    spec = data_spec(
        tmp_path,
        'source = "d.csv"\nx = ["c0", "c1"]\ny = ["label"]\nvalidation_split = 0\n',
        "x = [2]\ny = [1]",
        MLP.replace("[4, 8]", "[2, 8]")
        .replace("[8, 3]", "[8, 1]")
        .replace("b2 = [3]", "b2 = [1]")
        .replace("softmax_cross_entropy", "mse"),
    )
    train, _ = spec.load_data()
    assert train["y"].shape == (10, 1) and train["y"][4, 0] == 1


@pytest.mark.parametrize(
    "csv, table, expected",
    [
        (
            CSV,
            'x = ["c0", "c1", "c2", "cc3"]\ny = ["label"]',
            "no column 'cc3'; did you mean 'c3'?",
        ),
        (
            CSV.replace("0.5", "oops", 1),
            'x = ["c0", "c1", "c2", "c3"]\ny = ["label"]',
            "row 2, column 'c3' is not a number",  # the cell itself is never echoed
        ),
        (CSV, 'x = ["c0", "c1", "c2"]\ny = ["label"]\none_hot = true', "per-sample shape [4]"),
        (
            CSV.replace("0.5,", "1.5,", 1).replace(",1\n", ",1.5\n", 1),
            'x = ["c0", "c1", "c2", "c3"]\ny = ["label"]\none_hot = true',
            "one_hot labels must be integers or names, not both; data row 2",
        ),
        (CSV, 'x = ["c0", "c1", "c2", "c3"]', "[data] y: required"),
        (CSV, 'x = ["c0", "c1", "c2", "c3"]\ny = ["label"]\nxx = ["c0"]', "unknown key 'xx'"),
    ],
)
def test_csv_errors(tmp_path, csv, table, expected):
    (tmp_path / "d.csv").write_text(csv)
    with pytest.raises(SpecError) as info:
        data_spec(tmp_path, f'source = "d.csv"\n{table}\n').load_data()
    message = str(info.value)
    assert expected in message
    assert str(tmp_path / "model.toml") in message and "[data]" in message


@pytest.mark.parametrize(
    "table, expected",
    [
        ('source = "sklearn:irises"\nfeatures = "x"\ntargets = "y"', "did you mean 'iris'?"),
        ('source = "sklearn:iris"\nfeatures = "x"\ntargets = "z"', "[data] targets: no input"),
        ('source = "sklearn:iris"\nfeatures = "x"', "[data] targets: required"),
        ('source = "d.txt"', "unknown data source 'd.txt'"),
        ('source = "missing.csv"', "no such file 'missing.csv'"),
        (
            'source = "sklearn:iris"\nfeatures = "x"\ntargets = "y"\nvalidation_split = 1',
            "[data] validation_split: must be a number in [0, 1)",
        ),
        (
            'source = "sklearn:wine"\nfeatures = "x"\ntargets = "y"',
            "per-sample shape [4] but the data has [13]",
        ),
    ],
)
def test_data_errors(tmp_path, table, expected):
    with pytest.raises(SpecError) as info:
        data_spec(tmp_path, table + "\n").load_data()
    assert expected in str(info.value)


def test_load_sklearn_binary_targets_are_a_column():
    x, y = load_sklearn("breast_cancer")
    assert y.shape == (569, 1) and x.shape == (569, 30)


# --- errors name the file, the table, the key and the token ---------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ('"h @ W2 + b2"', '"hh @ W2 + b2"'),
            "[graph] logits: unknown name 'hh' (column 1); did you mean 'h'?",
        ),
        (('"relu(x @ W1 + b1)"', '"rleu(x @ W1 + b1)"'), "[graph] h: unknown function 'rleu'"),
        (
            ('"relu(x @ W1 + b1)"', '"relu(x @ W1 + b1) + 0 * logits"'),
            "[graph] h: uses 'logits', which is defined later",
        ),
        (('"relu(x @ W1 + b1)"', '"relu(h)"'), "[graph] h: node 'h' uses itself"),
        (('"h @ W2 + b2"', '"x @ W2 + b2"'), "[graph] logits: matmul: 'x' (batch, 4) @ 'W2'"),
        (('"h @ W2 + b2"', '"h"'), "[graph] logits: 'h' is the same value as 'h'"),
        (('"h @ W2 + b2"', '"2 * 3"'), "[graph] logits: '2 * 3' is a constant"),
        (('"h @ W2 + b2"', "3"), "[graph] logits: expected an expression string, got int"),
        (("b2 = [3]", "b2 = [0]"), "[params] b2 shape: a shape must be a list of positive ints"),
        (
            ("b2 = [3]", 'b2 = { shape = [3], init = "zero" }'),
            "[params] b2 init: unknown initializer 'zero'; did you mean 'zeros'?",
        ),
        (("b2 = [3]", "b2 = { shape = [3], int = 1 }"), "[params] b2: unknown key 'int'"),
        (("b2 = [3]", 'b2 = { init = "zeros" }'), "[params] b2: missing key 'shape'"),
        (("x = [4]", "x = 4"), "[inputs] x: a shape must be a list of positive ints, got 4"),
        (("b2 = [3]", "b2 = [3]\nx = [1]"), "[params] x: name 'x' is already used in [inputs]"),
        (("[graph]", "[graf]"), "model.toml: unknown table 'graf'; did you mean 'graph'?"),
        (("[inputs]", "[input]"), "unknown table 'input'; did you mean 'inputs'?"),
        (('h = "relu', 'class = "relu'), "[graph] class: name 'class' is a Python keyword"),
        (
            ('loss = "softmax', 'loss = "softmax_cross_entropy(logits, y)\nq = "'),
            "model.toml: TOML syntax error: ",
        ),
    ],
)
def test_graph_errors_name_file_table_key_and_token(change, expected):
    assert expected in spec_error(MLP.replace(*change))


def test_toml_syntax_error_names_the_line():
    message = spec_error(MLP.replace('"relu(x @ W1 + b1)"', '"relu(x @ W1 + b1)'))
    assert message.startswith("model.toml: TOML syntax error: ") and "line 13" in message


@pytest.mark.parametrize(
    "train, expected",
    [
        ("lrr = 0.1", "[train]: unknown key 'lrr'; did you mean 'lr'?"),
        ('optimizer = "adamm"', "[train] optimizer: 'adamm' is not one of"),
        ('optimizer = "adam"\nmomentum = 0.9', "[train] momentum: not a setting of optimizer"),
        ("lr = -1", "[train] lr: must be a number > 0, got -1"),
        ("lr = true", "[train] lr: must be a number > 0, got True"),
        ('batch_size = "all"', '[train] batch_size: must be a positive int or "full"'),
        ("epochs = 0", "[train] epochs: must be an int in [1,"),
        ('backend = "gpu"', "[train] backend: 'gpu' is not one of numpy, cpu, cuda"),
        ('dtype = "float16"', "[train] dtype: 'float16' is not one of"),
        ('loss = "los"', "[train] loss: 'los' is not a node of [graph]; did you mean 'loss'?"),
        ('loss = "h"', "[train] loss: node 'h' has shape (batch, 8), not a scalar"),
        ('predict = "x"', "[train] predict: 'x' is an input or parameter"),
        ("nesterov = 1\nmomentum = 0.9", "[train] nesterov: must be true or false"),
        ("nesterov = true", "[train] optimizer: SGD: nesterov=True needs momentum > 0"),
        ("betas = [0.9]", "[train] betas: must be a list of two numbers"),
        ('optimizer = "adam"\neps = 0', "[train] optimizer: Adam: eps must be a finite number > 0"),
        ("convergence = { toll = 1 }", "[train.convergence]: unknown key 'toll'"),
    ],
)
def test_train_errors(train, expected):
    assert expected in spec_error(MLP + "[train]\n" + train + "\n")


def test_a_loss_node_not_named_loss_needs_train_loss():
    text = MLP.replace('loss = "softmax', 'objective = "softmax')
    assert spec_error(text).endswith(
        "[train] loss: no node of [graph] is named 'loss', the default loss node; "
        'name it loss or set loss = "objective" (or whichever node is the loss) in [train]'
    )
    assert spec_error(text + '[train]\nloss = "objectiv"\n').endswith(
        "[train] loss: 'objectiv' is not a node of [graph]; did you mean 'objective'?"
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        ('[functions]\nf = "z / (1 + exp(-q))"', "[functions] f: unknown name 'q'"),
        (
            '[functions]\nf = "x / (1 + exp(-x))"',
            "[functions] f: unknown name 'x' (column 1); known: z",
        ),
        ('[functions]\nf = "3"', "[functions] f: the formula does not depend on z"),
        ('[functions]\nrelu = "z"', "[functions] relu: name 'relu' shadows the built-in op"),
        ('[functions]\nf = "z.real"', "[functions] f: attribute access '.real' is not allowed"),
        ("[expect]\naccuracy = 2", "[expect] accuracy: must be a fraction in [0, 1]"),
        ("[expect]\naccurcy = 0.5", "[expect]: unknown key 'accurcy'"),
        ('[model]\ninput = "x"', "[model]: only used with [[layers]]"),
    ],
)
def test_other_table_errors(extra, expected):
    assert expected in spec_error(MLP + extra + "\n")


def test_missing_tables():
    assert "missing table [inputs]" in spec_error('[graph]\nh = "x"\n')
    assert "missing table [graph]" in spec_error("[inputs]\nx = [2]\n")


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[inputs]")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(tmp_path / "bin.toml")


def test_data_paths_are_relative_to_the_spec_file(tmp_path, monkeypatch):
    sub = tmp_path / "specs"
    (sub / "data").mkdir(parents=True)
    (sub / "data" / "d.csv").write_text(CSV)
    path = write(
        sub,
        MLP + '[data]\nsource = "data/d.csv"\nx = ["c0","c1","c2","c3"]\n'
        'y = ["label"]\none_hot = true\n',
    )
    monkeypatch.chdir(tmp_path)
    assert len(load_spec(path).load_data()[0]["x"]) == 8


# --- hostile specs: rejected before anything is evaluated, with no side effect ---------------


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """Run in an empty directory and record whether any graph tensor was ever built."""
    monkeypatch.chdir(tmp_path)
    built = []
    original = spec_module._Builder._leaves

    def leaves(self, *args):
        built.append(True)
        return original(self, *args)

    monkeypatch.setattr(spec_module._Builder, "_leaves", leaves)

    def check(expression, expected, table="graph", key="logits"):
        text = MLP.replace('"h @ W2 + b2"', expression)
        path = write(tmp_path, text, "hostile.toml")
        with pytest.raises(SpecError) as info:
            load_spec(path)
        message = str(info.value)
        assert f"hostile.toml [{table}] {key}" in message and expected in message
        assert not built, "a graph tensor was built before the spec was rejected"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.toml"]
        return message

    return check


def test_hostile_import_system(guarded):
    guarded("\"__import__('os').system('touch PWNED')\"", "'__import__' is not allowed")


def test_hostile_dunder_class_bases(guarded):
    guarded('"().__class__.__bases__"', "attribute access '.__class__' is not allowed")


def test_hostile_attribute_on_a_node(guarded):
    guarded('"h.T @ W2 + b2"', "attribute access '.T' is not allowed (column 2)")


def test_hostile_lambda(guarded):
    guarded('"lambda: h"', "lambda is not allowed")


def test_hostile_power_tower(guarded):
    guarded('"9**9**9"', "the exponent of '**' must be a numeric constant")


def test_hostile_long_expression(guarded):
    guarded('"' + "h+" * 50_000 + 'h"', "expression has 100001 characters; limit 2000")


def test_hostile_ten_megabyte_expression(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, MLP.replace('"h @ W2 + b2"', '"' + "h+" * 5_000_000 + 'h"'))
    with pytest.raises(SpecError, match=r"model.toml: spec file has 10,000,\d+ bytes; the limit"):
        load_spec(path)


def test_hostile_name_shadowing_an_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = MLP.replace('h = "relu', 'relu = "relu').replace('"h @', '"relu @')
    with pytest.raises(SpecError, match=r"\[graph\] relu: name 'relu' shadows the built-in op"):
        load_spec(write(tmp_path, text))


def test_hostile_expression_in_a_function_formula(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "[functions]\nf = \"__import__('os').system('touch PWNED')\"\n" + MLP
    with pytest.raises(SpecError, match=r"\[functions\] f: name '__import__' is not allowed"):
        load_spec(write(tmp_path, text))
    assert not (tmp_path / "PWNED").exists()


# Builtins (as bare names) and SymPy's string evaluators (under any spelling).
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ANYWHERE = {"sympify", "parse_expr", "lambdify", "S"}
SPEC_MODULES = [
    "spec/build.py",
    "spec/train_table.py",
    "spec/data_table.py",
    "cli.py",
    "spec/runner.py",
    "inspect/gradcheck.py",
]


def forbidden_calls(source: str) -> list[str]:
    """Names of eval-like functions that ``source`` calls or refers to."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES | FORBIDDEN_ANYWHERE:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ANYWHERE:
            found.append(node.attr)
        elif isinstance(node, ast.alias) and node.name.rsplit(".", 1)[-1] in FORBIDDEN_ANYWHERE:
            found.append(node.name.rsplit(".", 1)[-1])
    return found


def test_scanner_finds_eval_like_calls():
    assert forbidden_calls("import sympy\nsympy.sympify(text)") == ["sympify"]
    assert forbidden_calls("eval(x)\nexec(y)") == ["eval", "exec"]
    assert forbidden_calls("from sympy import sympify") == ["sympify"]
    assert forbidden_calls("sympy.S('x + 1')") == ["S"]
    assert forbidden_calls("gn.relu(x)\ndriver.compile(g)") == []


@pytest.mark.parametrize("module", SPEC_MODULES)
def test_spec_modules_never_call_eval_exec_or_sympify(module):
    source = (ROOT / "graphnn" / module).read_text(encoding="utf-8")
    assert forbidden_calls(source) == []


def test_spec_module_builds_graphs_only_through_the_safe_parser():
    source = (ROOT / "graphnn" / "spec" / "build.py").read_text(encoding="utf-8")
    assert "parse_expression(" in source
    assert gn.SpecError is SpecError

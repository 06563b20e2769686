"""Every example spec trains to the accuracy its ``[expect]`` table states.

The examples run on the NumPy reference back end, which interprets the same graph and optimizer
formulas the compiled back ends run, so this file needs no kernel compilation and stays fast in a
fresh CI cache.  (``tests/test_cli.py`` trains one example through ``graphnn train`` on the
compiled CPU back end.)  Accuracy is measured on held-out data when the spec holds some out,
and on the training data otherwise (the neuron and XOR examples).
"""

import pathlib

import pytest

from graphnn.spec.build import load_spec
from graphnn.spec.runner import run_spec

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SPECS = sorted(EXAMPLES.glob("*.toml"))
EXPECTED = {
    "neuron",
    "xor",
    "digits",
    "iris",
    "breast_cancer",
    "swish",
    "layers",
    "digits_cnn",
    "reviews",
}


def test_the_examples_are_all_there():
    assert {p.stem for p in SPECS} == EXPECTED


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_reaches_its_stated_accuracy(path):
    spec = load_spec(path)
    assert "accuracy" in spec.expect, f"{path.name} states no [expect] accuracy"
    result = run_spec(spec, backend="numpy")
    held_out = spec.data.validation_split > 0
    assert (result.heldout_metrics is not None) == held_out
    assert result.accuracy >= spec.expect["accuracy"], "\n".join(result.report())
    assert all(met for *_, met in result.expectations())


def test_custom_activation_example_uses_the_user_function():
    graph = load_spec(EXAMPLES / "swish.toml").graph
    assert graph.forward.node("h").attr("fn") == "swish"
    # The derivative of z / (1 + exp(-z)) at add1, derived by SymPy, appears in dL/dW1.
    assert "∘" in str(graph.gradient("W1")) and "swish'(add1)" in str(graph.gradient("W1"))


def test_layers_example_expands_to_dense_layers():
    graph = load_spec(EXAMPLES / "layers.toml").graph
    assert graph.shapes == {
        "W1": (64, 64),
        "b1": (64,),
        "W2": (64, 32),
        "b2": (32,),
        "W3": (32, 10),
        "b3": (10,),
    }
    assert [n.name for n in graph.forward if n.op == "ewise" and n.attr("fn") == "relu"] == [
        "h1",
        "h2",
    ]


def test_the_bundled_reviews_are_what_their_script_writes():
    import importlib.util

    path = EXAMPLES / "data" / "make_reviews.py"
    spec = importlib.util.spec_from_file_location("make_reviews", path)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    assert (EXAMPLES / "data" / "reviews.csv").read_text() == make.csv_text()
    # the labels are the stated rule: more positive than negative words, "not" flipping
    rows = make.rows(50)
    assert all(label == (make.score([make.VOCAB[i] for i in ids]) > 0) for *ids, label in rows)


def test_reviews_example_learns_word_meanings_through_its_embedding():
    graph = load_spec(EXAMPLES / "reviews.toml").graph
    assert graph.forward.node("h1").attr("fn") == "embedding"
    assert graph.shapes["E1"] == (40, 8)
    assert str(graph.gradient("E1")).startswith("Σ_{b,s} one_hot1[b, s, v] · ")

"""Screened derivatives on disk: a new process reads the choice instead of screening again."""

import pickle
import re

import pytest
import sympy

from graphnn.derive import screen
from graphnn.derive import store as derivative_store
from graphnn.errors import GraphnnWarning
from graphnn.ir.elementwise import ARGS

SIGMOID = 1 / (1 + sympy.exp(-ARGS[0]))


@pytest.fixture
def store(monkeypatch, tmp_path):
    """An empty store, and derivative() with no in-process memo (as in a new process)."""
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    derivative_store.derivative.cache_clear()
    yield tmp_path / "derivatives"
    derivative_store.derivative.cache_clear()


def _no_derivation(monkeypatch):
    def refuse(*args):
        raise AssertionError("derived again instead of reading the store")

    monkeypatch.setattr(screen, "derive_form", refuse)


def test_a_new_process_reads_the_screened_choice(store, monkeypatch):
    fresh = derivative_store.derivative(SIGMOID, 0)
    assert (fresh.form, fresh.expr) == ("output", -screen.Y * (screen.Y - 1))
    [path] = store.iterdir()
    derivative_store.derivative.cache_clear()
    _no_derivation(monkeypatch)
    again = derivative_store.derivative(SIGMOID, 0)
    assert again == fresh  # the chosen form, every candidate and its screen result
    assert [c.nonfinite for c in again.candidates] == [c.nonfinite for c in fresh.candidates]
    assert list(store.iterdir()) == [path]  # read, not rewritten


@pytest.mark.parametrize(
    "content", [b"", b"not a pickle", "wrong key", "wrong type", "another tree"]
)
def test_a_corrupt_or_foreign_file_is_derived_again_and_rewritten(store, content):
    fresh = derivative_store.derivative(SIGMOID, 0)
    [path] = store.iterdir()
    key, tree, _ = pickle.loads(path.read_bytes())
    if content == "wrong key":
        content = pickle.dumps((key + " other", tree, fresh))
    elif content == "wrong type":
        content = pickle.dumps((key, tree, "not a Derivative"))
    elif content == "another tree":  # what unpickling with evaluation on would make of it
        content = pickle.dumps((key, tree.replace("Integer(-1)", "Integer(-2)"), fresh))
    path.write_bytes(content)
    derivative_store.derivative.cache_clear()
    with pytest.warns(GraphnnWarning, match=f"damaged cache file {re.escape(str(path))}"):
        assert derivative_store.derivative(SIGMOID, 0) == fresh
    assert pickle.loads(path.read_bytes()) == (key, tree, fresh)


def test_a_change_of_the_screening_code_derives_afresh(store, monkeypatch):
    derivative_store.derivative(SIGMOID, 0)
    derivative_store.derivative.cache_clear()
    calls = []
    real = screen.derive_form
    monkeypatch.setattr(screen, "derive_form", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(derivative_store, "fingerprint", lambda: "other code")
    derivative_store.derivative(SIGMOID, 0)
    assert calls == [(SIGMOID, 0, 1)]
    assert len(list(store.iterdir())) == 2


def test_the_fingerprint_is_the_code_that_runs(store, monkeypatch):
    # formulas' text as imported (a later edit of the file does not change the running code)
    digest = screen._code_digest()
    assert screen.CODE_DIGEST == digest and digest is not None
    before = derivative_store.fingerprint()
    monkeypatch.setattr(screen, "CODE_DIGEST", "edited")
    assert derivative_store.fingerprint() not in (None, before)
    monkeypatch.setattr(screen, "CODE_DIGEST", None)  # no source to hash: the store is off
    assert derivative_store.fingerprint() is None
    assert derivative_store.derivative(SIGMOID, 0).form == "output"
    assert not store.exists()


def test_loading_leaves_sympy_evaluating(store, monkeypatch):
    """Rebuilt trees are unevaluated only in themselves: SymPy's cache and flag are untouched."""
    elu = derivative_store.derivative(*_elu_case())
    derivative_store.derivative.cache_clear()
    # Setting SymPy's (thread-local) evaluate flag clears its (shared) cache: record that it isn't
    # set, since unevaluated trees made meanwhile would reach other threads through the cache.
    flag_changes = []
    monkeypatch.setattr(sympy.core.parameters, "clear_cache", lambda: flag_changes.append(1))
    from_disk = derivative_store.derivative(*_elu_case())
    assert from_disk == elu  # with 1.0*(Y + 1) unexpanded
    assert flag_changes == []
    y = screen.Y
    assert sympy.Float(1.0) * (y + 1) == sympy.Add(sympy.Float(1.0) * y, sympy.Float(1.0))
    assert sympy.core.parameters.global_parameters.evaluate


def _elu_case():
    from graphnn.ir.elementwise import ELEMENTWISE

    spec = ELEMENTWISE["elu"]
    return spec.formula(*spec.params.values()), 0, 1


def test_an_unwritable_cache_directory_only_costs_time(monkeypatch, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(blocker / "cache"))  # mkdir fails under a file
    derivative_store.derivative.cache_clear()
    try:
        with pytest.warns(GraphnnWarning, match="GRAPHNN_CACHE_DIR"):
            assert derivative_store.derivative(SIGMOID, 0).form == "output"
    finally:
        derivative_store.derivative.cache_clear()


def test_every_ops_derivatives_come_back_from_disk_as_the_same_trees(store, monkeypatch):
    """Every op's forms (Piecewise, erf, the output symbol Y, elu's 1.0*(Y + 1)) come back as
    the very trees that were chosen, not re-evaluated ones."""
    from graphnn.ir.elementwise import ELEMENTWISE

    cases = [
        (spec.formula(*spec.params.values()), i, spec.arity)
        for spec in ELEMENTWISE.values()
        for i in range(spec.arity)
    ]
    derived = [derivative_store.derivative(*case) for case in cases]
    derivative_store.derivative.cache_clear()
    _no_derivation(monkeypatch)
    again = [derivative_store.derivative(*case) for case in cases]
    assert [derivative_store.structure(d) for d in again] == [
        derivative_store.structure(d) for d in derived
    ]


def test_a_form_that_cannot_be_pickled_is_derived_in_every_process(store, monkeypatch):
    def unpicklable(obj):
        raise pickle.PicklingError("Can't pickle <class 'local_function'>")

    monkeypatch.setattr(derivative_store, "dumps", unpicklable)
    assert derivative_store.derivative(SIGMOID, 0).form == "output"
    assert not store.exists()

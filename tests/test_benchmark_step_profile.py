"""The step profile's prange experiment (benchmarks/step_profile.py): the rewritten update and
guard compute what the generated serial ones do, bit for bit, so the times it reports compare
the same work."""

import sys
from pathlib import Path

import numpy as np
import pytest

import graphnn as gn
from codegen.cache import load_module
from codegen.cpu.module import module_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from step_profile import parallel_update_source  # noqa: E402


def _modules():
    x, t = gn.input("x", (3,)), gn.input("t", (2,))
    w, b = gn.param("w", (3, 2)), gn.param("b", (2,))
    source = module_source(gn.Graph(gn.mse(gn.tanh(x @ w + b), t)), gn.Adam(lr=0.01))
    parallel = parallel_update_source(source)
    # each loop split, the update's and the guard's
    assert "for i in prange(P_.shape[0]):" in parallel
    assert "for i in prange(a.shape[0]):" in parallel
    return load_module(source), load_module(parallel)


def test_prange_update_and_guard_compute_the_serial_bits():
    serial, parallel = _modules()
    assert parallel.apply_update.targetoptions.get("parallel")
    assert parallel.all_finite.targetoptions.get("parallel")
    assert not serial.apply_update.targetoptions.get("parallel")
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(50_001).astype(np.float32) for _ in range(4)]
    arrays[3] = np.abs(arrays[3])  # v, Adam's second moment, is not negative
    hyper = [np.float32(h) for h in (0.01, 0.9, 0.999, 1e-8, 0.0, 3.0, 0.5)]
    runs = []
    for module in (serial, parallel):
        copies = [a.copy() for a in arrays]
        module.apply_update(*copies, *hyper)
        runs.append(copies)
    moved = [not np.array_equal(s, a) for s, a in zip(runs[0], arrays, strict=True)]
    assert moved == [True, False, True, True]  # P, m and v updated; G read only
    for s, p in zip(*runs, strict=True):
        assert np.array_equal(s.view(np.uint32), p.view(np.uint32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_prange_guard_finds_a_bad_element_anywhere(bad):
    serial, parallel = _modules()
    g = np.ones(40_000, np.float32)
    assert parallel.all_finite(g) and serial.all_finite(g)
    for at in (0, 19_999, 39_999):
        h = g.copy()
        h[at] = bad
        assert not parallel.all_finite(h) and not serial.all_finite(h)


def test_the_rewrite_refuses_a_module_without_an_update():
    x, t, w = gn.input("x", (3,)), gn.input("t", (1,)), gn.param("w", (3, 1))
    with pytest.raises(ValueError, match="apply_update"):
        parallel_update_source(module_source(gn.Graph(gn.mse(x @ w, t))))

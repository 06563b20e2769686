"""Issue 15's reproducers (tests/reproducers.py) on the NumPy reference and the CPU back end.

The reference runs in float64 against the loss computed independently in NumPy and against
central differences; the CPU back end runs in float32 and float64 against the reference.  The
CUDA simulator runs the same cases in tests/test_cuda.py.
"""

import numpy as np
import pytest

import graphnn as gn
from tests.finite_diff import numeric_gradients, relative_error
from tests.reproducers import CASES, NAN_CASES, NAN_OPS


def _as(values, dtype):
    return {k: np.asarray(v, dtype) for k, v in values.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_against_numpy_and_finite_differences(name):
    case = CASES[name]()
    params, data = _as(case.params, np.float64), _as(case.data, np.float64)
    loss, grads = case.graph.value_and_grad(params, data, backend="numpy")
    assert loss == pytest.approx(case.expect(params, data), rel=1e-12, abs=1e-300)
    if case.exact_grads is not None:
        numeric = case.exact_grads(params, data)
    else:
        numeric = numeric_gradients(case.graph, params, data)
    for p in case.graph.param_names:
        assert relative_error(grads[p], numeric[p]) < 1e-6, p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_matches_the_reference(name, dtype):
    case = CASES[name]()
    params, data = _as(case.params, dtype), _as(case.data, dtype)
    want, want_grads = case.graph.value_and_grad(params, data, backend="numpy")
    loss, grads = case.graph.value_and_grad(params, data, backend="cpu")
    tol = 1e-5 if dtype == np.float32 else case.tol64
    assert relative_error(loss, want) < tol, (loss, want)  # relative, also for tiny values
    for p in case.graph.param_names:
        assert relative_error(grads[p], want_grads[p]) < tol, p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", sorted(NAN_OPS))
def test_every_elementwise_op_propagates_nan(name, backend, dtype):
    case = NAN_OPS[name]()
    loss, _ = case.graph.value_and_grad(_as(case.params, dtype), {}, backend=backend)
    assert np.isnan(loss)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", sorted(NAN_CASES))
def test_a_nonfinite_loss_stays_nonfinite(name, backend):
    """The loss is NaN or Inf on every back end, and fit stops on it (it trained on finite
    numbers on the CPU while the reference stopped)."""
    case = NAN_CASES[name]()
    params, data = _as(case.params, np.float32), _as(case.data, np.float32)
    loss, _ = case.graph.value_and_grad(params, data, backend=backend)
    assert not np.isfinite(loss)
    model = gn.compile(case.graph, gn.SGD(lr=0.01), backend=backend)
    model.params = params
    with pytest.raises(gn.NonFiniteError, match="step 1 "):
        model.fit(data, epochs=2, batch_size=None)

"""Optimizers against their published update equations, computed independently in float64.

Each compiled optimizer takes 5 full-batch steps on a linear layer + MSE with fixed data; the
parameters after every step must match an independent float64 NumPy loop (gradients from the
NumPy reference's value_and_grad) to float32 accuracy.  The numpy back end must agree with the
CPU back end on shuffled mini-batches, and a user-defined optimizer compiles like the built-ins.
"""

import math

import numpy as np
import pytest

import graphnn as gn
from graphnn.optim.schedules import Constant, Cosine, Exponential, Step, Warmup

STEPS = 5
RTOL, ATOL = 2e-5, 2e-6  # float32 kernels vs a float64 loop, after 5 steps


def linear_graph():
    x, t = gn.input("x", (4,)), gn.input("t", (3,))
    W, b = gn.param("W", (4, 3)), gn.param("b", (3,), init="normal")
    return gn.Graph(gn.mse(x @ W + b, t))


@pytest.fixture(scope="module")
def graph():
    return linear_graph()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(16, 4)).astype(np.float32)
    T = (X @ rng.normal(size=(4, 3)) + 0.3 * rng.normal(size=(16, 3))).astype(np.float32)
    return {"x": X, "t": T}


# --- independent update rules: (params, grads, state, t, lr) -> new params, in float64 -------


def sgd(wd=0.0):
    def rule(p, g, s, t, lr):
        return {k: p[k] - lr * (g[k] + wd * p[k]) for k in p}

    return rule


def momentum(mu, nesterov=False, wd=0.0):
    """PyTorch's SGD: buf = g on the first step, then mu*buf + g; Nesterov steps g + mu*buf."""

    def rule(p, g, s, t, lr):
        out = {}
        for k in p:
            d = g[k] + wd * p[k]
            s[k] = d.copy() if t == 1 else mu * s[k] + d
            out[k] = p[k] - lr * (d + mu * s[k] if nesterov else s[k])
        return out

    return rule


def adam(b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    """Kingma & Ba with bias correction; L2 (Adam) or decoupled (AdamW, Loshchilov & Hutter)."""

    def rule(p, g, s, t, lr):
        out = {}
        for k in p:
            d = g[k] if decoupled else g[k] + wd * p[k]
            m, v = s.get(k, (np.zeros_like(d), np.zeros_like(d)))
            m = b1 * m + (1 - b1) * d
            v = b2 * v + (1 - b2) * d * d
            s[k] = (m, v)
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            base = p[k] * (1 - lr * wd) if decoupled else p[k]
            out[k] = base - lr * m_hat / (np.sqrt(v_hat) + eps)
        return out

    return rule


def rmsprop(alpha=0.99, eps=1e-8):
    def rule(p, g, s, t, lr):
        out = {}
        for k in p:
            s[k] = alpha * s.get(k, 0.0) + (1 - alpha) * g[k] ** 2
            out[k] = p[k] - lr * g[k] / (np.sqrt(s[k]) + eps)
        return out

    return rule


def adagrad(eps=1e-10):
    def rule(p, g, s, t, lr):
        out = {}
        for k in p:
            s[k] = s.get(k, 0.0) + g[k] ** 2
            out[k] = p[k] - lr * g[k] / (np.sqrt(s[k]) + eps)
        return out

    return rule


def signum_rule(beta=0.9):
    def rule(p, g, s, t, lr):
        out = {}
        for k in p:
            s[k] = beta * s.get(k, 0.0) + (1 - beta) * g[k]
            out[k] = p[k] - lr * np.sign(s[k])
        return out

    return rule


def clipped(max_norm, inner):
    """torch.nn.utils.clip_grad_norm_: scale all gradients by min(1, max / (norm + 1e-6))."""

    def rule(p, g, s, t, lr):
        norm = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
        s.setdefault("norms", []).append(norm)
        scale = min(1.0, max_norm / (norm + 1e-6))
        return inner(p, {k: v * scale for k, v in g.items()}, s, t, lr)

    return rule


def reference(graph, data, rule, lr, schedule=None, steps=STEPS):
    """Params after each of ``steps`` full-batch steps, and the state the rule kept."""
    schedule = schedule or Constant()
    params = {k: v.astype(np.float64) for k, v in graph.init_params(seed=0).items()}
    data64 = {k: v.astype(np.float64) for k, v in data.items()}
    state, trail = {}, []
    for t in range(1, steps + 1):
        _, grads = graph.value_and_grad(params, data64)
        params = rule(params, grads, state, t, lr * schedule(t - 1))
        trail.append(params)
    return trail, state


def compiled_trail(graph, data, optimizer, backend="cpu", steps=STEPS):
    trail = []
    model = gn.compile(graph, optimizer=optimizer, backend=backend)
    model.fit(
        data,
        epochs=steps,
        batch_size=None,
        shuffle=False,
        callbacks=[lambda m, e, logs: trail.append({k: v.copy() for k, v in m.params.items()})],
    )
    return trail, model


SIGNUM = dict(
    hyper={"beta": 0.9, "lr": 0.01},  # lr deliberately not first
    state=("m",),
    updates=(("m", "beta*m + (1 - beta)*G"), ("P", "P - lr*sign(m)")),
)

CASES = {
    "sgd": (lambda: gn.SGD(lr=0.1), sgd(), 0.1),
    "sgd_weight_decay": (lambda: gn.SGD(lr=0.1, weight_decay=0.3), sgd(0.3), 0.1),
    "sgd_momentum": (lambda: gn.SGD(lr=0.05, momentum=0.9), momentum(0.9), 0.05),
    "sgd_nesterov_decay": (
        lambda: gn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
        momentum(0.9, nesterov=True, wd=0.1),
        0.05,
    ),
    "adam": (lambda: gn.Adam(lr=0.05), adam(), 0.05),
    "adam_l2": (lambda: gn.Adam(lr=0.05, weight_decay=0.5), adam(wd=0.5), 0.05),
    "adamw": (
        lambda: gn.AdamW(lr=0.05, weight_decay=0.5),
        adam(wd=0.5, decoupled=True),
        0.05,
    ),
    "rmsprop": (lambda: gn.RMSProp(lr=0.01), rmsprop(), 0.01),
    "adagrad": (lambda: gn.Adagrad(lr=0.1), adagrad(), 0.1),
    "clip_sgd_momentum": (
        lambda: gn.SGD(lr=0.05, momentum=0.9, clip_norm=0.5),
        clipped(0.5, momentum(0.9)),
        0.05,
    ),
    "signum": (lambda: gn.Optimizer("signum", **SIGNUM), signum_rule(0.9), 0.01),
}


@pytest.mark.parametrize("name", list(CASES))
def test_first_steps_match_published_equations(graph, data, name):
    make, rule, lr = CASES[name]
    want, state = reference(graph, data, rule, lr)
    got, _ = compiled_trail(graph, data, make())
    assert len(got) == STEPS
    for step, (g, w) in enumerate(zip(got, want, strict=True), 1):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=RTOL, atol=ATOL, err_msg=f"{k} @ {step}")
    moved = max(np.abs(want[-1][k] - want[0][k]).max() for k in want[0])
    assert moved > 100 * ATOL  # the steps are large enough for the comparison to mean something
    if name.startswith("clip"):
        assert state["norms"][0] > 0.5  # clipping was active


@pytest.mark.parametrize(
    "schedule",
    [Step(every=2, gamma=0.5), Exponential(gamma=0.7), Warmup(steps=2, then=Cosine(total_steps=3))],
    ids=["step", "exponential", "warmup_cosine"],
)
def test_schedules_scale_the_learning_rate_per_step(graph, data, schedule):
    want, _ = reference(graph, data, adam(), 0.05, schedule)
    got, model = compiled_trail(graph, data, gn.Adam(lr=0.05, schedule=schedule))
    for g, w in zip(got, want, strict=True):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=RTOL, atol=ATOL)
    assert model.history["lr"][-1] == pytest.approx(0.05 * schedule(STEPS - 1))
    constant, _ = reference(graph, data, adam(), 0.05)
    assert not np.allclose(constant[-1]["W"], want[-1]["W"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_backend_equals_cpu_backend_on_shuffled_minibatches(graph, data, name):
    make = CASES[name][0]
    runs = {}
    for backend in ("numpy", "cpu"):
        model = gn.compile(graph, optimizer=make(), backend=backend)
        history = model.fit(data, epochs=3, batch_size=5, shuffle=True, seed=3)
        runs[backend] = (model.params, model.state, history["loss"], model.step)
    (p_np, s_np, l_np, t_np), (p_cpu, s_cpu, l_cpu, t_cpu) = runs["numpy"], runs["cpu"]
    assert t_np == t_cpu == 3 * 4
    np.testing.assert_allclose(l_cpu, l_np, rtol=1e-5)
    for k in p_np:
        np.testing.assert_allclose(p_cpu[k], p_np[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for k in s_np:
        np.testing.assert_allclose(s_cpu[k], s_np[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_user_defined_signum_trains_on_cpu(graph, data):
    signum = gn.Optimizer("signum", **SIGNUM)
    assert list(signum.hyper) == ["lr", "beta"]  # lr is moved first for the compiled epoch
    model = gn.compile(graph, optimizer=signum, backend="cpu")
    history = model.fit(data, epochs=15, batch_size=4, seed=1)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert set(model.state) == {"m_W", "m_b"}
    assert "np.sign(m)" in graph.source(optimizer=signum)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hyper={"rate": 0.1}, updates=(("P", "P - rate*G"),)), "needs a learning rate"),
        (dict(hyper={"lr": 0.1}, state=("m",), updates=(("m", "G"),)), "never assigns"),
        (dict(hyper={"lr": 0.1}, updates=(("P", "P"), ("q", "G"))), "unknown names"),
        (dict(hyper={"lr": -1.0}, updates=(("P", "P - lr*G"),)), "lr must be"),
        (dict(hyper={"lr": math.inf}, updates=(("P", "P - lr*G"),)), "lr must be"),
        (dict(hyper={"lr": 0.1, "loss": 1.0}, updates=(("P", "P"),)), "reserved"),
        (dict(hyper={"lr": 0.1}, state=("lr",), updates=(("P", "P"),)), "more than one"),
        (dict(hyper={"lr": 0.1}, state=("m_",), updates=(("P", "P"),)), "not a usable name"),
        (dict(hyper={"lr": 0.1}, updates=(("P", "P"),), clip_norm=0.0), "clip_norm"),
        (dict(hyper={"lr": 0.1}, updates=(("P", "P"),), schedule=0.5), "schedule must be"),
    ],
)
def test_optimizer_declaration_errors(kwargs, match):
    with pytest.raises(gn.GraphError, match=match):
        gn.Optimizer("custom", **kwargs)


def test_builtin_hyper_parameter_checks():
    with pytest.raises(gn.GraphError, match="beta1 must be in"):
        gn.Adam(beta1=1.0)
    with pytest.raises(gn.GraphError, match="alpha must be in"):
        gn.RMSProp(alpha=1.5)
    with pytest.raises(gn.GraphError, match="nesterov"):
        gn.SGD(lr=0.1, nesterov=True)
    for opt in (gn.SGD(0.1), gn.Adam(0.1), gn.AdamW(0.1), gn.RMSProp(0.1), gn.Adagrad(0.1)):
        assert opt.hyper["lr"] == 0.1 and next(iter(opt.hyper)) == "lr"


@pytest.mark.parametrize("make", [gn.Adam, gn.AdamW, gn.RMSProp, gn.Adagrad])
@pytest.mark.parametrize("eps", [0.0, -1e-8, math.nan, math.inf])
def test_eps_must_be_positive(make, eps):
    """eps = 0 made step 1 0/0 = NaN for a zero gradient entry, blamed on the learning rate."""
    with pytest.raises(gn.GraphError, match=r"eps must be a finite number > 0 .* got"):
        make(0.1, eps=eps)


def test_schedule_values():
    assert [Step(every=2, gamma=0.1)(k) for k in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert Exponential(gamma=0.5)(3) == 0.125
    cos = Cosine(total_steps=4, floor=0.2)
    assert [cos(k) for k in (0, 2, 4, 9)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    warm = Warmup(steps=4, then=Step(every=1, gamma=0.5))
    assert warm.multipliers(0, 6).tolist() == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5]
    for bad in (lambda: Step(every=0), lambda: Exponential(gamma=0), lambda: Cosine(0)):
        with pytest.raises(gn.GraphError):
            bad()
    with pytest.raises(gn.GraphError):
        Warmup(steps=2, then=lambda k: 1.0)

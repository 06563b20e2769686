"""Central finite differences in float64: the independent check of every derived gradient."""

import numpy as np


def numeric_gradients(graph, params, data, eps=1e-6):
    """dLoss/dp for every parameter by central differences on the float64 reference."""
    data = {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
    return central_differences(lambda p: graph.value_and_grad(p, data)[0], params, eps)


def central_differences(loss, params, eps=1e-6):
    """d loss(params)/dp for every array p of ``params`` (float64 copies are perturbed)."""
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    out = {}
    for name, p in params.items():
        grad = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = loss(params)
            p[idx] = old - eps
            down = loss(params)
            p[idx] = old
            grad[idx] = (up - down) / (2 * eps)
        out[name] = grad
    return out


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b), 1e-12)
    return np.linalg.norm(a - b) / scale

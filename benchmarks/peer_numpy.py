"""Hand-written NumPy trainer: the honest baseline.

Forward, backward and update in float32 with BLAS matmuls, in-place elementwise work and one
scratch buffer per parameter for the update, so a step allocates little beyond the matmul results.
Update rules follow PyTorch's definitions (SGD momentum v = mu v + g; Adam with bias correction).
``evaluate`` is the reference forward pass the harness uses to check every trainer's result.
"""

from __future__ import annotations

import math

import numpy as np
from trainer_base import SkipWorkload, Trainer, flush_probe
from workloads import Workload


def _activate(z: np.ndarray, activation: str) -> None:
    """Apply the hidden activation to z in place."""
    if activation == "relu":
        np.maximum(z, 0, out=z)
    elif activation == "tanh":
        np.tanh(z, out=z)
    else:
        raise ValueError(f"unknown activation {activation!r}")


def _activation_backward(dh: np.ndarray, h: np.ndarray, activation: str) -> None:
    """dh *= f'(z), written in terms of the output h = f(z), in place."""
    if activation == "relu":
        np.multiply(dh, h > 0, out=dh)  # relu'(0) = 0; 10x faster than dh[h <= 0] = 0
    else:  # tanh' = 1 - h^2
        d = h * h
        np.subtract(1, d, out=d)
        dh *= d


def _sigmoid_inplace(z: np.ndarray) -> None:
    with np.errstate(over="ignore"):  # exp(-z) = inf for very negative z gives sigmoid 0
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1
        np.reciprocal(z, out=z)


def _softmax_inplace(z: np.ndarray) -> None:
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)


def forward(wl: Workload, params, x: np.ndarray) -> list[np.ndarray]:
    """Activations per layer [x, h1, ..., output probabilities]; the output is sigmoid/softmax."""
    acts = [x]
    for i, (W, b) in enumerate(params):
        z = acts[-1] @ W
        z += b
        if i < len(params) - 1:
            _activate(z, wl.activation)
        elif wl.loss == "softmax_ce":
            _softmax_inplace(z)
        else:
            _sigmoid_inplace(z)
        acts.append(z)
    return acts


def conv_forward(wl: Workload, params, x: np.ndarray) -> np.ndarray:
    """Output probabilities of a convolutional workload (``wl.image``) on flat rows ``x``.

    Each conv is an im2col product (windows of the zero-padded NHWC image times the kernel
    reshaped to (kh*kw*in, out)), then bias, relu and a max-pool; for evaluation only.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    out = []
    for s in range(0, len(x), 128):  # im2col of a big batch would take gigabytes
        h = x[s : s + 128].reshape(-1, *wl.image)
        for K, b in params[:-1]:
            kh, kw, _, filters = K.shape
            p = wl.pad
            h = np.pad(h, ((0, 0), (p, p), (p, p), (0, 0)))
            win = sliding_window_view(h, (kh, kw), axis=(1, 2))  # (n, oh, ow, c, kh, kw)
            n, oh, ow = win.shape[:3]
            cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)
            h = (cols @ K.reshape(-1, filters)).reshape(n, oh, ow, filters) + b
            np.maximum(h, 0, out=h)
            q = wl.pool
            h = h[:, : oh // q * q, : ow // q * q]
            h = h.reshape(n, oh // q, q, ow // q, q, filters).max(axis=(2, 4))
        W, b = params[-1]
        z = h.reshape(len(h), -1) @ W + b
        _softmax_inplace(z)
        out.append(z)
    return np.concatenate(out)


def evaluate(wl: Workload, params, X: np.ndarray, Y: np.ndarray) -> dict:
    """Loss (and accuracy for classifiers) of ``params`` on X, Y, in float64 at the end."""
    if wl.image:
        p = conv_forward(wl, params, X).astype(np.float64)
    else:
        p = forward(wl, params, X)[-1].astype(np.float64)
    if wl.loss == "softmax_ce":
        loss = -np.mean(np.sum(Y * np.log(np.maximum(p, 1e-30)), axis=1))
        acc = float(np.mean(p.argmax(1) == Y.argmax(1)))
        return {"loss": float(loss), "accuracy": acc}
    return {"loss": float(np.mean((p - Y) ** 2))}


class NumpyTrainer(Trainer):
    name = "numpy"

    def __init__(self, wl, X, Y, init, seed=0):
        if wl.image:
            raise SkipWorkload("the NumPy trainer is dense-only (no hand-written conv backward)")
        super().__init__(wl, X, Y, seed)
        self.params = [[W.copy(), b.copy()] for W, b in init]
        flat = [p for layer in self.params for p in layer]
        self.scratch = [np.empty_like(p) for p in flat]
        opt = wl.optimizer
        if opt.name == "adam":
            self.m = [np.zeros_like(p) for p in flat]
            self.v = [np.zeros_like(p) for p in flat]
        elif opt.momentum:
            self.velocity = [np.zeros_like(p) for p in flat]
        self.t = 0

    def train_batch(self, idx):
        self._step(self.X[idx], self.Y[idx])

    def _step(self, xb: np.ndarray, yb: np.ndarray) -> None:
        wl = self.wl
        acts = forward(wl, self.params, xb)
        # Output gradient dL/dz of the fused loss.
        dz = acts[-1]
        if wl.loss == "softmax_ce":  # (softmax(z) - y) / B
            dz -= yb
            dz *= 1 / len(xb)
        else:  # d/dz mean((s - y)^2) = 2 (s - y) s (1 - s) / (B * n_out)
            s = dz.copy()
            dz -= yb
            dz *= 2 / dz.size
            dz *= s
            np.subtract(1, s, out=s)
            dz *= s
        self.t += 1
        for i in range(len(self.params) - 1, -1, -1):
            W, b = self.params[i]
            gW = acts[i].T @ dz
            gb = dz.sum(axis=0)
            if i > 0:  # propagate before W is updated
                dh = dz @ W.T
                _activation_backward(dh, acts[i], wl.activation)
            self._update(2 * i, W, gW)
            self._update(2 * i + 1, b, gb)
            if i > 0:
                dz = dh

    def _update(self, k: int, p: np.ndarray, g: np.ndarray) -> None:
        opt, tmp = self.wl.optimizer, self.scratch[k]
        if opt.name == "adam":
            m, v = self.m[k], self.v[k]
            m *= opt.beta1
            np.multiply(g, 1 - opt.beta1, out=tmp)
            m += tmp
            v *= opt.beta2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - opt.beta2
            v += tmp
            bc1 = 1 - opt.beta1**self.t
            bc2_sqrt = math.sqrt(1 - opt.beta2**self.t)
            np.sqrt(v, out=tmp)  # denom = sqrt(v) / sqrt(bc2) + eps, as in torch.optim.Adam
            tmp *= 1 / bc2_sqrt
            tmp += opt.eps
            np.divide(m, tmp, out=tmp)
            tmp *= opt.lr / bc1
            p -= tmp
        elif opt.momentum:
            vel = self.velocity[k]
            vel *= opt.momentum
            vel += g
            np.multiply(vel, opt.lr, out=tmp)
            p -= tmp
        else:
            g *= opt.lr
            p -= g

    def params_numpy(self):
        return [(W, b) for W, b in self.params]

    def state_arrays(self):
        arrays = [p for layer in self.params for p in layer]
        for name in ("m", "v", "velocity"):
            arrays += getattr(self, name, [])
        return arrays

    def info(self):
        from threadpoolctl import threadpool_info

        blas = [
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
            f"threads={i.get('num_threads')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
        return {
            "version": np.__version__,
            "optimizer": self.wl.optimizer.describe(),
            "blas": "; ".join(blas),
            **flush_probe(lambda a, b: a * b),
        }

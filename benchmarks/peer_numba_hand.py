"""Hand-written Numba trainer: the limit peer, the fastest loop a person would write by hand.

A whole chunk (every minibatch of it) runs inside one ``@njit`` function: rows gathered into
reused buffers, forward, backward and the update in place, no allocation per step.  Products with
a layer of more than a few dozen weights call BLAS (``np.dot`` with an output buffer); the tiny
ones (the single neuron) are plain loops.  Same data, batches and update rules as the NumPy
trainer (PyTorch's SGD momentum and Adam), so ``check_peers.py``-style comparisons hold.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit
from numba.typed import List
from trainer_base import SkipWorkload, Trainer, flush_probe

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
SMALL = 64  # a layer with at most this many weights multiplies with loops, not BLAS


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _matmul(a, b, out, small):
    if small:
        for r in range(a.shape[0]):
            for c in range(b.shape[1]):
                s = np.float32(0.0)
                for p in range(a.shape[1]):
                    s += a[r, p] * b[p, c]
                out[r, c] = s
    else:
        np.dot(a, b, out)


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _train_chunk(X, Y, order, bs, Ws, bs_, acts, deltas, gWs, gbs, m1, m2, hyper, kind, t0):
    """Every minibatch of ``order``; kind: 0 relu/softmax-CE, 1 tanh/softmax-CE, 2 sigmoid-MSE.

    hyper = (lr, momentum, beta1, beta2, eps, adam flag); m1/m2: momentum or Adam buffers per
    parameter, W then b of each layer.  Returns the optimizer steps taken.
    """
    lr, mom, beta1, beta2, eps, adam = hyper
    L = len(Ws)
    steps = 0
    for start in range(0, order.shape[0], bs):
        n = min(bs, order.shape[0] - start)
        x = acts[0][:n]
        for r in range(n):
            for j in range(X.shape[1]):
                x[r, j] = X[order[start + r], j]
        # forward
        for i in range(L):
            z = acts[i + 1][:n]
            W, b = Ws[i], bs_[i]
            _matmul(acts[i][:n], W, z, W.size <= SMALL)
            last = i == L - 1
            for r in range(n):
                for c in range(z.shape[1]):
                    v = z[r, c] + b[c]
                    if not last:
                        v = max(v, np.float32(0.0)) if kind == 0 else math.tanh(v)
                    elif kind == 2:
                        v = np.float32(1.0) / (np.float32(1.0) + math.exp(-v))
                    z[r, c] = v
            if last and kind != 2:  # softmax over each row
                for r in range(n):
                    mx = z[r, 0]
                    for c in range(1, z.shape[1]):
                        mx = max(mx, z[r, c])
                    s = np.float32(0.0)
                    for c in range(z.shape[1]):
                        z[r, c] = math.exp(z[r, c] - mx)
                        s += z[r, c]
                    for c in range(z.shape[1]):
                        z[r, c] /= s
        # dL/dz of the output
        out, d = acts[L][:n], deltas[L - 1][:n]
        for r in range(n):
            row = order[start + r]
            for c in range(out.shape[1]):
                if kind == 2:
                    s = out[r, c]
                    d[r, c] = np.float32(2.0) * (s - Y[row, c]) * s * (1 - s) / (n * out.shape[1])
                else:
                    d[r, c] = (out[r, c] - Y[row, c]) / n
        steps += 1
        t = t0 + steps
        for i in range(L - 1, -1, -1):
            W, d = Ws[i], deltas[i][:n]
            gW, gb = gWs[i], gbs[i]
            _matmul(acts[i][:n].T, d, gW, W.size <= SMALL)
            for c in range(gb.shape[0]):
                s = np.float32(0.0)
                for r in range(n):
                    s += d[r, c]
                gb[c] = s
            if i > 0:  # propagate before W changes
                dh = deltas[i - 1][:n]
                _matmul(d, W.T, dh, W.size <= SMALL)
                h = acts[i][:n]
                for r in range(n):
                    for c in range(dh.shape[1]):
                        if kind == 0:
                            dh[r, c] = dh[r, c] if h[r, c] > 0 else np.float32(0.0)
                        else:
                            dh[r, c] *= 1 - h[r, c] * h[r, c]
            for k, (p, g) in enumerate(((W.ravel(), gW.ravel()), (bs_[i], gb))):
                a, v = m1[2 * i + k], m2[2 * i + k]
                if adam:
                    bc1 = 1 - beta1**t
                    bc2 = math.sqrt(1 - beta2**t)
                    for e in range(p.shape[0]):
                        a[e] = beta1 * a[e] + (1 - beta1) * g[e]
                        v[e] = beta2 * v[e] + (1 - beta2) * g[e] * g[e]
                        p[e] -= lr / bc1 * a[e] / (math.sqrt(v[e]) / bc2 + eps)
                elif mom != 0:
                    for e in range(p.shape[0]):
                        a[e] = mom * a[e] + g[e]
                        p[e] -= lr * a[e]
                else:
                    for e in range(p.shape[0]):
                        p[e] -= lr * g[e]
    return steps


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _train_neuron(X, Y, order, bs, w, b, lr):
    """The single sigmoid neuron with MSE and plain SGD, the way one writes it for that case."""
    k = X.shape[1]
    gw = np.empty(k, np.float32)
    steps = 0
    for start in range(0, order.shape[0], bs):
        n = min(bs, order.shape[0] - start)
        gw[:] = 0
        gb = np.float32(0.0)
        for r in range(n):
            row = order[start + r]
            z = b[0]
            for j in range(k):
                z += X[row, j] * w[j, 0]
            s = np.float32(1.0) / (np.float32(1.0) + math.exp(-z))
            d = np.float32(2.0) * (s - Y[row, 0]) * s * (1 - s) / n
            for j in range(k):
                gw[j] += X[row, j] * d
            gb += d
        for j in range(k):
            w[j, 0] -= lr * gw[j]
        b[0] -= lr * gb
        steps += 1
    return steps


class NumbaHandTrainer(Trainer):
    name = "numba_hand"

    def __init__(self, wl, X, Y, init, seed=0):
        if wl.image:
            raise SkipWorkload("the hand-written Numba trainer is dense-only")
        super().__init__(wl, X, Y, seed)
        self.X, self.Y = np.ascontiguousarray(X), np.ascontiguousarray(Y)
        f32 = np.float32
        self.Ws = List([np.ascontiguousarray(W, f32) for W, _ in init])
        self.bs = List([np.ascontiguousarray(b, f32) for _, b in init])
        B, sizes = wl.batch_size, wl.sizes
        self.acts = List([np.empty((B, s), f32) for s in sizes])
        self.deltas = List([np.empty((B, s), f32) for s in sizes[1:]])
        self.gWs = List([np.empty_like(W) for W in self.Ws])
        self.gbs = List([np.empty_like(b) for b in self.bs])
        flat = [p.ravel() for W, b in zip(self.Ws, self.bs, strict=True) for p in (W, b)]
        self.m1 = List([np.zeros_like(p) for p in flat])
        self.m2 = List([np.zeros_like(p) for p in flat])
        opt = wl.optimizer
        adam = opt.name == "adam"
        self.hyper = (
            f32(opt.lr),
            f32(0 if adam else (opt.momentum or 0)),
            f32(getattr(opt, "beta1", 0.9)),
            f32(getattr(opt, "beta2", 0.999)),
            f32(getattr(opt, "eps", 1e-8)),
            adam,
        )
        self.kind = 2 if wl.loss == "sigmoid_mse" else (0 if wl.activation == "relu" else 1)
        self.t = 0

    def _train(self, start: int, stop: int) -> None:
        order = (start + self.rng.permutation(stop - start)).astype(np.int64)
        opt = self.wl.optimizer
        if len(self.Ws) == 1 and self.kind == 2 and opt.name != "adam" and not opt.momentum:
            w, b, lr = self.Ws[0], self.bs[0], np.float32(opt.lr)
            self.t += _train_neuron(self.X, self.Y, order, self.wl.batch_size, w, b, lr)
            return
        self.t += _train_chunk(
            self.X, self.Y, order, self.wl.batch_size, self.Ws, self.bs, self.acts,
            self.deltas, self.gWs, self.gbs, self.m1, self.m2, self.hyper, self.kind, self.t,
        )  # fmt: skip

    def params_numpy(self):
        return list(zip(self.Ws, self.bs, strict=True))

    def state_arrays(self):
        return [*self.Ws, *self.bs, *self.m1, *self.m2]

    def info(self):
        return {
            "version": numba.__version__,
            "optimizer": self.wl.optimizer.describe(),
            **flush_probe(_multiply),
        }


@njit
def _multiply(a, b):
    return a * b

"""JAX trainer: one jitted step (gather minibatch, grad, update) with donated parameter buffers.

Uses optax when installed, else the same update rules written in jax.numpy. The data set lives on
the device once; each step receives only the minibatch indices. ``train_chunk`` blocks until the
last step is done. JAX keeps its default denormal handling (XLA on CPU flushes them to zero).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from trainer_base import Trainer, flush_probe

try:
    import optax
except ImportError:
    optax = None


def _conv_logits(wl, params, x):
    """NHWC images: lax.conv_general_dilated (HWIO kernel) + bias -> relu -> max-pool
    (lax.reduce_window) per conv layer, then flatten (h, w, c) -> dense."""
    h = x.reshape(-1, *wl.image)
    q, p = wl.pool, wl.pad
    for K, b in params[:-1]:
        h = jax.lax.conv_general_dilated(
            h, K, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + b)
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, q, q, 1), (1, q, q, 1), "VALID")
    W, b = params[-1]
    return h.reshape(h.shape[0], -1) @ W + b


def _forward_logits(wl, params, x):
    if wl.image:
        return _conv_logits(wl, params, x)
    act = jax.nn.relu if wl.activation == "relu" else jnp.tanh
    for i, (W, b) in enumerate(params):
        x = x @ W + b
        if i < len(params) - 1:
            x = act(x)
    return x


def _loss(wl, params, x, y):
    z = _forward_logits(wl, params, x)
    if wl.loss == "softmax_ce":
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(z, axis=1), axis=1))
    return jnp.mean((jax.nn.sigmoid(z) - y) ** 2)


def _hand_optimizer(opt):
    """(init, update) pair with optax's signature, written in jax.numpy."""
    tm = jax.tree_util.tree_map
    if opt.name == "adam":

        def init(params):
            return (
                jnp.zeros((), jnp.int32),
                tm(jnp.zeros_like, params),
                tm(jnp.zeros_like, params),
            )

        def update(grads, state, params):
            t, m, v = state
            t = t + 1
            m = tm(lambda m, g: opt.beta1 * m + (1 - opt.beta1) * g, m, grads)
            v = tm(lambda v, g: opt.beta2 * v + (1 - opt.beta2) * g * g, v, grads)
            tf = t.astype(jnp.float32)
            bc1, bc2 = 1 - opt.beta1**tf, 1 - opt.beta2**tf
            upd = tm(lambda m, v: -opt.lr * (m / bc1) / (jnp.sqrt(v / bc2) + opt.eps), m, v)
            return upd, (t, m, v)

    elif opt.momentum:

        def init(params):
            return tm(jnp.zeros_like, params)

        def update(grads, vel, params):
            vel = tm(lambda v, g: opt.momentum * v + g, vel, grads)
            return tm(lambda v: -opt.lr * v, vel), vel

    else:

        def init(params):
            return ()

        def update(grads, state, params):
            return tm(lambda g: -opt.lr * g, grads), state

    return init, update


def _optimizer(opt):
    if optax is None:
        return _hand_optimizer(opt)
    if opt.name == "adam":
        tx = optax.adam(opt.lr, b1=opt.beta1, b2=opt.beta2, eps=opt.eps)
    else:
        tx = optax.sgd(opt.lr, momentum=opt.momentum or None)
    return tx.init, tx.update


class JaxTrainer(Trainer):
    name = "jax"

    def __init__(self, wl, X, Y, init, seed=0):
        super().__init__(wl, X, Y, seed)
        opt_init, opt_update = _optimizer(wl.optimizer)
        self.params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in init]
        self.opt_state = opt_init(self.params)
        self.Xd, self.Yd = jax.device_put(X), jax.device_put(Y)
        grad_fn = jax.grad(partial(_loss, wl))

        @partial(jax.jit, donate_argnums=(0, 1))
        def step(params, opt_state, X, Y, idx):
            grads = grad_fn(params, X[idx], Y[idx])
            updates, opt_state = opt_update(grads, opt_state, params)
            params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
            return params, opt_state

        self._step = step

    def _train(self, start, stop):
        B = self.wl.batch_size
        order = (start + self.rng.permutation(stop - start)).astype(np.int32)
        for i in range(0, len(order), B):
            self.train_batch(order[i : i + B])
        jax.block_until_ready((self.params, self.opt_state))  # steps are dispatched async

    def train_batch(self, idx):
        idx = idx if idx.dtype == np.int32 else idx.astype(np.int32)
        self.params, self.opt_state = self._step(self.params, self.opt_state, self.Xd, self.Yd, idx)

    def params_numpy(self):
        return [(np.asarray(W), np.asarray(b)) for W, b in self.params]

    def state_arrays(self):
        leaves = jax.tree_util.tree_leaves((self.params, self.opt_state))
        return [np.asarray(a) for a in leaves if getattr(a, "ndim", 0) > 0]

    def info(self):
        mul = jax.jit(lambda a, b: a * b)
        return {
            "version": jax.__version__,
            "optimizer": self.wl.optimizer.describe(),
            "update": "optax" if optax else "hand-written jax.numpy (optax not installed)",
            "device": str(jax.devices()[0]),
            **flush_probe(lambda a, b: mul(a, b)),
        }

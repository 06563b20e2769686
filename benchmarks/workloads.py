"""The benchmark workloads: what each one trains, on which (seeded) data, and how.

Every trainer (graphnn and its peers) reads the same ``Workload`` and the same arrays, so the
models, optimizers, batch sizes and initial weight distributions are identical across trainers.

    >>> wl = get_workload("digits")
    >>> X, Y = make_data(wl)
    >>> X.shape, Y.shape, X.dtype
    ((1797, 64), (1797, 10), dtype('float32'))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

DTYPE = np.float32


@dataclass(frozen=True)
class Optimizer:
    """An update rule as PyTorch defines it (SGD momentum: v = mu v + g; p -= lr v)."""

    name: str  # "sgd" or "adam"
    lr: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def describe(self) -> str:
        if self.name == "adam":
            return f"Adam(lr={self.lr:g})"
        if self.momentum:
            return f"SGD(lr={self.lr:g}, momentum={self.momentum:g})"
        return f"SGD(lr={self.lr:g})"


@dataclass(frozen=True)
class Workload:
    """One benchmark: a dense network, its loss, optimizer, batch size and data size.

    ``loss`` is "sigmoid_mse" (sigmoid output, mean squared error over all elements) or
    "softmax_ce" (softmax cross-entropy with one-hot targets, mean over the batch).
    ``chunk`` is the number of samples one ``train_chunk`` call trains on (a multiple of the batch
    size); ``warmup_chunks`` chunks are trained before timing starts, and each timed repeat trains
    ``repeat_chunks`` chunks (the same work, hence the same training progress, for every trainer).
    """

    name: str
    description: str
    sizes: tuple[int, ...]  # (n_in, hidden..., n_out)
    activation: str  # hidden activation: "relu" or "tanh" (unused without hidden layers)
    loss: str
    optimizer: Optimizer
    batch_size: int
    n_samples: int
    chunk: int
    repeat_chunks: int = 1
    warmup_chunks: int = 1
    # graphnn falls back to this optimizer if it lacks the workload's own (recorded in results).
    fallback_optimizer: Optimizer | None = None
    # Convolutional workloads: each sample's sizes[0] features are an NHWC image (height, width,
    # channels); each of ``convs`` (filters) is conv kernel x kernel + bias -> relu -> max-pool
    # ``pool``, then flatten (h, w, c order) -> dense sizes[-1].  Empty for the dense MLPs.
    image: tuple[int, int, int] | None = None
    convs: tuple[int, ...] = ()
    kernel: int = 3
    padding: str = "same"  # "same" (zeros around, stride 1) or "valid"
    pool: int = 2
    # The last ``holdout`` samples are not trained on; the harness reports accuracy on them.
    holdout: int = 0

    @property
    def n_layers(self) -> int:
        return len(self.convs) + 1 if self.image else len(self.sizes) - 1

    @property
    def pad(self) -> int:
        """Zeros on each side of a convolution's input."""
        return self.kernel // 2 if self.padding == "same" else 0

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Per layer: the weight's shape, conv kernels (kh, kw, in, out), dense (in, out)."""
        if not self.image:
            return list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        h, w, c = self.image
        shapes = []
        for filters in self.convs:
            shapes.append((self.kernel, self.kernel, c, filters))
            h, w = h + 2 * self.pad - self.kernel + 1, w + 2 * self.pad - self.kernel + 1
            h, w, c = h // self.pool, w // self.pool, filters
        return [*shapes, (h * w * c, self.sizes[-1])]

    def param_names(self) -> list[tuple[str, str]]:
        """(weight, bias) names per layer, as graphnn's ``model.params`` uses them."""
        if self.name == "neuron":
            return [("w", "b")]
        return [(f"W{i}", f"b{i}") for i in range(1, self.n_layers + 1)]

    def init_schemes(self) -> list[str]:
        """Weight init per layer: he_normal before relu, glorot_uniform otherwise."""
        hidden = "he_normal" if self.activation == "relu" else "glorot_uniform"
        if self.image:
            return [hidden] * len(self.convs) + ["glorot_uniform"]
        return [hidden] * (self.n_layers - 1) + ["glorot_uniform"]


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            name="neuron",
            description="y = sigmoid(w.x + b), 8 inputs, MSE, SGD lr 0.1, batch 1, 20k samples",
            sizes=(8, 1),
            activation="none",
            loss="sigmoid_mse",
            optimizer=Optimizer("sgd", lr=0.1),
            batch_size=1,
            n_samples=20_000,
            chunk=20_000,  # one epoch per call, as graphnn's fit runs it (per-call costs included)
        ),
        Workload(
            name="digits",
            description="sklearn digits/16, 64-128 relu-10, softmax CE, SGD 0.1 mom 0.9, batch 32",
            sizes=(64, 128, 10),
            activation="relu",
            loss="softmax_ce",
            optimizer=Optimizer("sgd", lr=0.1, momentum=0.9),
            batch_size=32,
            n_samples=1797,
            chunk=1792,  # 56 full batches: every timed step has the full batch size
            repeat_chunks=4,
        ),
        Workload(
            name="mnist_mlp",
            description="synthetic 60k x 784, 784-256-256-10 relu, softmax CE, Adam 1e-3, bs 128",
            sizes=(784, 256, 256, 10),
            activation="relu",
            loss="softmax_ce",
            optimizer=Optimizer("adam", lr=1e-3),
            batch_size=128,
            n_samples=60_000,
            chunk=128 * 32,
            repeat_chunks=16,
            warmup_chunks=3,
            fallback_optimizer=Optimizer("sgd", lr=0.01, momentum=0.9),
        ),
        Workload(
            name="wide",
            description="synthetic 16k x 1024, 1024-1024x3 tanh-10, softmax CE, SGD 0.01, bs 256",
            sizes=(1024, 1024, 1024, 1024, 10),
            activation="tanh",
            loss="softmax_ce",
            optimizer=Optimizer("sgd", lr=0.01),
            batch_size=256,
            n_samples=16_384,
            chunk=256 * 4,
            repeat_chunks=4,
        ),
        Workload(
            name="digits_cnn",
            description="sklearn digits/16 as 8x8x1, conv 3x3x32 same relu-pool 2-dense 10, "
            "softmax CE, Adam 3e-3, batch 32 (examples/digits_cnn.toml)",
            sizes=(64, 10),
            activation="relu",
            loss="softmax_ce",
            optimizer=Optimizer("adam", lr=3e-3),
            batch_size=32,
            n_samples=1797,
            chunk=1438,  # the 1,438 training rows: one epoch per chunk (45 steps, the last of 30)
            repeat_chunks=2,
            image=(8, 8, 1),
            convs=(32,),
            kernel=3,
            holdout=359,  # the spec's validation_split 0.2 (see _digits_spec_split)
        ),
        Workload(
            name="image28",
            description="synthetic 28x28x1, conv 5x5x32 same relu-pool 2-conv 5x5x64 same relu-"
            "pool 2-dense 10, softmax CE, Adam 1e-3, batch 64",
            sizes=(784, 10),
            activation="relu",
            loss="softmax_ce",
            optimizer=Optimizer("adam", lr=1e-3),
            batch_size=64,
            n_samples=4096,
            chunk=64 * 4,
            repeat_chunks=1,
            image=(28, 28, 1),
            convs=(32, 64),
            kernel=5,
        ),
    ]
}


def _deep(layers: int) -> Workload:
    return Workload(
        name=f"deep{layers}",
        description=f"synthetic 2k x 64, 64-64x{layers} relu-10, softmax CE, SGD mom 0.9, bs 32",
        sizes=(64,) + (64,) * layers + (10,),
        activation="relu",
        loss="softmax_ce",
        optimizer=Optimizer("sgd", lr=0.01, momentum=0.9),
        batch_size=32,
        n_samples=2048,
        chunk=2048,
    )


# Start-up only (run.py --startup-workloads): how a cold compile grows with depth, 1 vs 30
# hidden layers of width 64.  Not in WORKLOADS, so throughput runs leave them out.
STARTUP_WORKLOADS: dict[str, Workload] = {w.name: w for w in [_deep(1), _deep(30)]}

# --quick keeps every architecture, optimizer and batch size, and shrinks the data and chunks.
_QUICK = {
    "neuron": dict(n_samples=2000, chunk=2000),
    "digits": dict(repeat_chunks=1),
    "mnist_mlp": dict(n_samples=4096, chunk=1024, repeat_chunks=1, warmup_chunks=1),
    "wide": dict(n_samples=1024, chunk=512, repeat_chunks=1),
    "digits_cnn": dict(repeat_chunks=1),
    "image28": dict(n_samples=1024),
}


def get_workload(name: str, quick: bool = False) -> Workload:
    """The workload called ``name``; ``quick`` shrinks its data for a smoke test."""
    if name in STARTUP_WORKLOADS:
        return STARTUP_WORKLOADS[name]
    if name not in WORKLOADS:
        known = ", ".join([*WORKLOADS, *STARTUP_WORKLOADS])
        raise KeyError(f"unknown workload {name!r}; known: {known}")
    wl = WORKLOADS[name]
    return replace(wl, **_QUICK[name]) if quick else wl


def make_data(wl: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 inputs X (N, n_in) and targets Y (N, n_out); one-hot for classifiers."""
    rng = np.random.default_rng(seed)
    maker = {
        "neuron": _neuron_data,
        "digits": _digits_data,
        "mnist_mlp": _mnist_like_data,
        "wide": _teacher_data,
        "digits_cnn": _digits_spec_split,
        "image28": _image_data,
    }.get(wl.name, _teacher_data)
    X, Y = maker(wl, rng)
    return np.ascontiguousarray(X, DTYPE), np.ascontiguousarray(Y, DTYPE)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((labels.size, n_classes), DTYPE)
    out[np.arange(labels.size), labels] = 1
    return out


def _neuron_data(wl, rng):
    # A teacher neuron: the student can fit it exactly.
    X = rng.standard_normal((wl.n_samples, wl.sizes[0]), dtype=DTYPE)
    w = rng.standard_normal((wl.sizes[0], 1), dtype=DTYPE) / np.sqrt(DTYPE(wl.sizes[0]))
    Y = 1 / (1 + np.exp(-(X @ w + DTYPE(0.1))))
    return X, Y


def _digits_data(wl, rng):
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data[: wl.n_samples] / 16.0
    return X, one_hot(digits.target[: wl.n_samples], 10)


def _digits_spec_split(wl, rng):
    # The rows in the order of graphnn's seeded split (a permutation from default_rng(seed), the
    # first draw of ``rng``): the last 359 are the 20% that `graphnn train digits_cnn.toml`
    # holds out, the first 1,438 its training rows.
    X, Y = _digits_data(wl, rng)
    order = rng.permutation(len(X))
    return X[order], Y[order]


def _mnist_like_data(wl, rng):
    # MNIST-shaped: ~80% zero pixels, intensities in [0.3, 1]. Each class raises or lowers every
    # pixel's chance of being on by 30%: learnable to ~93% in one epoch but not separable at a
    # glance, so (as on MNIST) the softmax grows confident gradually rather than at once.
    n, d = wl.n_samples, wl.sizes[0]
    labels = rng.integers(0, 10, n)
    p_on = np.where(rng.random((10, d)) < 0.5, DTYPE(0.19 * 1.3), DTYPE(0.19 * 0.7))
    on = rng.random((n, d), dtype=DTYPE) < p_on[labels]
    X = np.where(on, rng.uniform(0.3, 1.0, (n, d)).astype(DTYPE), DTYPE(0))
    return X, one_hot(labels, 10)


def _teacher_data(wl, rng):
    # Gaussian inputs labelled by a random linear teacher.
    X = rng.standard_normal((wl.n_samples, wl.sizes[0]), dtype=DTYPE)
    teacher = rng.standard_normal((wl.sizes[0], wl.sizes[-1]), dtype=DTYPE)
    return X, one_hot(np.argmax(X @ teacher, axis=1), wl.sizes[-1])


def _image_data(wl, rng):
    # 10 classes, each a smooth random template (a sum of a few Gaussian blobs); a sample is its
    # class's template shifted by up to 2 pixels, scaled, plus noise, clipped to [0, 1]: a
    # convolution's translation invariance pays off, and the task is not solved in one step.
    n, (h, w, _) = wl.n_samples, wl.image
    yy, xx = np.mgrid[0:h, 0:w].astype(DTYPE)
    templates = np.zeros((10, h, w), DTYPE)
    for k in range(10):
        for _ in range(4):
            cy, cx = rng.uniform(6, h - 6), rng.uniform(6, w - 6)
            s = rng.uniform(1.5, 3.5)
            templates[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    templates /= templates.max(axis=(1, 2), keepdims=True)
    labels = rng.integers(0, 10, n)
    X = np.empty((n, h, w), DTYPE)
    shifts = rng.integers(-2, 3, (n, 2))
    for i in range(n):
        X[i] = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1))
    X *= rng.uniform(0.6, 1.0, (n, 1, 1)).astype(DTYPE)
    X += DTYPE(0.3) * rng.standard_normal((n, h, w), dtype=DTYPE)
    np.clip(X, 0, 1, out=X)
    return X.reshape(n, -1), one_hot(labels, 10)


def init_params(wl: Workload, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Initial (W (in, out) or conv kernel (kh, kw, in, out), b (out,)) per layer, float32,
    from the workload's init schemes."""
    rng = np.random.default_rng(seed + 1)
    params = []
    for shape, scheme in zip(wl.weight_shapes(), wl.init_schemes(), strict=True):
        # a conv kernel (kh, kw, in, out): fan_in kh*kw*in, fan_out kh*kw*out (Keras' rule)
        field = int(np.prod(shape[:-2]))
        fan_in, fan_out = field * shape[-2], field * shape[-1]
        if scheme == "he_normal":
            W = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-limit, limit, shape)
        params.append((W.astype(DTYPE), np.zeros(shape[-1], DTYPE)))
    return params

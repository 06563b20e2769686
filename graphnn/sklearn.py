"""scikit-learn estimators: a graphnn MLP as a ``GraphnnClassifier`` or ``GraphnnRegressor``.

They take the usual 2-D feature array and target, so they work in ``Pipeline``,
``cross_val_score`` and ``GridSearchCV``.  The network is dense layers of ``hidden`` widths with
``activation`` (any activation row of graphnn's op table), softmax cross-entropy for a classifier
and mean squared error for a regressor, trained by graphnn's generated kernels (``backend``).

>>> import numpy as np
>>> from graphnn.sklearn import GraphnnClassifier
>>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 8)
>>> y = np.array(["no", "yes", "yes", "no"] * 8)
>>> clf = GraphnnClassifier(hidden=(8,), activation="tanh", lr=0.05, epochs=300, backend="numpy")
>>> clf.fit(X, y).score(X, y)
1.0
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from graphnn.api import Graph
from graphnn.ir import ops
from graphnn.ir.elementwise import ACTIVATIONS, ELEMENTWISE
from graphnn.optim.optimizers import SGD, Adam
from graphnn.train.driver import compile as compile_model

OPTIMIZERS = {"adam": Adam, "sgd": SGD}


class _GraphnnEstimator(BaseEstimator):
    """What both estimators share: the network, its training and its prediction."""

    def __init__(
        self,
        hidden=(32,),
        activation="relu",
        optimizer="adam",
        lr=0.01,
        epochs=100,
        batch_size=32,
        backend="cpu",
        dtype="float32",
        seed=0,
    ):
        self.hidden = hidden
        self.activation = activation
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.backend = backend
        self.dtype = dtype
        self.seed = seed

    def _check_settings(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {sorted(OPTIMIZERS)}")
        widths = tuple(self.hidden)
        if not all(isinstance(w, int | np.integer) and w > 0 for w in widths):
            raise ValueError(f"hidden must be positive layer widths, got {self.hidden!r}")

    def _graph(self, n_in: int, n_out: int, loss) -> Graph:
        x, y = ops.input("x", (n_in,)), ops.input("y", (n_out,))
        h, width = x, n_in
        act = ops.activation(self.activation)
        init = ELEMENTWISE[self.activation].init
        for k, units in enumerate(self.hidden, 1):
            W = ops.param(f"W{k}", (width, int(units)), init=init)
            b = ops.param(f"b{k}", (int(units),), init="zeros")
            h, width = act(h @ W + b), int(units)
        W = ops.param("W_out", (width, n_out))
        b = ops.param("b_out", (n_out,), init="zeros")
        out = (h @ W + b).named("out")
        return Graph(loss(out, y))

    def _train(self, X: np.ndarray, Y: np.ndarray) -> None:
        self._check_settings()
        self._sizes_ = (X.shape[1], Y.shape[1])
        self.model_ = self._compile()
        batch = None if self.batch_size is None else min(int(self.batch_size), len(X))
        data = {"x": X.astype(self.dtype), "y": Y.astype(self.dtype)}
        self.history_ = self.model_.fit(data, epochs=self.epochs, batch_size=batch, seed=self.seed)

    def _compile(self):
        graph = self._graph(*self._sizes_, self._loss)
        optimizer = OPTIMIZERS[self.optimizer](lr=self.lr)
        return compile_model(
            graph, optimizer, backend=self.backend, dtype=self.dtype, predict="out", seed=self.seed
        )

    # Compiled kernels do not pickle: a pickle holds the trained weights, and unpickling
    # compiles the same network again (from the kernel cache) and puts the weights back.
    def __getstate__(self):
        state = dict(self.__dict__)
        model = state.pop("model_", None)
        if model is not None:
            state["_weights_"] = {k: np.array(v) for k, v in model.params.items()}
        return state

    def __setstate__(self, state):
        weights = state.pop("_weights_", None)
        self.__dict__.update(state)
        if weights is not None:
            self.model_ = self._compile()
            for k, v in weights.items():
                self.model_.params[k][...] = v

    def _outputs(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.model_.predict({"x": X.astype(self.dtype)}).astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class GraphnnClassifier(ClassifierMixin, _GraphnnEstimator):
    """An MLP classifier: any label type (ints, strings), softmax cross-entropy on the logits."""

    _loss = staticmethod(ops.softmax_cross_entropy)

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"a classifier needs at least 2 classes; y has {len(self.classes_)} class"
            )
        onehot = np.eye(len(self.classes_))[codes]
        self._train(X, onehot)
        return self

    def predict_proba(self, X) -> np.ndarray:
        z = self._outputs(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        z = self._outputs(X)  # checks that the estimator is fitted
        return self.classes_[np.argmax(z, axis=1)]


class GraphnnRegressor(RegressorMixin, _GraphnnEstimator):
    """An MLP regressor for one or several targets, trained on mean squared error."""

    _loss = staticmethod(ops.mse)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        self._single_ = y.ndim == 1
        Y = y.reshape(len(y), -1)
        if not np.all(np.isfinite(Y)):
            raise ValueError("y holds NaN or Inf")
        self._train(X, Y)
        return self

    def predict(self, X) -> np.ndarray:
        out = self._outputs(X)
        return out[:, 0] if self._single_ else out


__all__ = ["GraphnnClassifier", "GraphnnRegressor"]

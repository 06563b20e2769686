"""``gn.load_model``: a model from its file alone, with no spec and no Python code.

A model file (``model.save(path)``, ``graphnn train``'s ``model.npz``, any checkpoint) holds the
parameters and optimizer state under their names (``np.load(path).files`` lists
``param/W1``, ...), the preprocessing, and the graph and optimizer as data
(:mod:`graphnn.ir.serialize`: formulas as trees of SymPy class names, read through a fixed
table; nothing pickled, nothing evaluated).

>>> model = gn.load_model("runs/iris/model.npz")   # doctest: +SKIP
>>> model.predict({"x": raw_rows})                  # doctest: +SKIP
"""

from __future__ import annotations

import os

from graphnn.api import Graph
from graphnn.derive.structural import STRUCTURAL
from graphnn.errors import CheckpointError, GraphError, GraphnnError
from graphnn.ir.serialize import graph_from_data
from graphnn.optim.optimizers import optimizer_from_data
from graphnn.train import checkpoint
from graphnn.train.driver import Model, compile


def load_model(path: str | os.PathLike, backend: str | None = None) -> Model:
    """The model saved at ``path``: graph, parameters, optimizer and its state, counters,
    history and preprocessing, compiled for ``backend`` (default: the one it was saved from).
    CheckpointError naming ``path`` for a missing, corrupt or graph-less file."""
    where = os.fspath(path)
    arrays, meta = checkpoint.load_checkpoint(path)
    if not meta.get("graph") or not meta.get("optimizer_data"):
        raise CheckpointError(
            f"{where} holds no graph description (written by an older graphnn, or its graph "
            "could not be stored); build the graph, gn.compile it and call model.load(path)"
        )
    settings = meta.get("model")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where}: its model settings are missing")
    try:
        outputs = graph_from_data(meta["graph"], tuple(STRUCTURAL))
        graph = Graph(outputs[0], outputs[1:])
        optimizer = optimizer_from_data(meta["optimizer_data"])
        model = compile(
            graph,
            optimizer=optimizer,
            backend=backend or settings.get("backend", "cpu"),
            dtype=settings.get("dtype", "float32"),
            predict=settings.get("predict"),
            seed=settings.get("seed", 0),
            flush_denormals=settings.get("flush_denormals", True),
        )
    except GraphError as exc:
        raise CheckpointError(f"{where}: its graph cannot be rebuilt: {exc}") from None
    except GraphnnError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    model._restore(where, arrays, meta)
    return model

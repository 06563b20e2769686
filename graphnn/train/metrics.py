"""Evaluation metrics, and how a graph's prediction node is found.

>>> import numpy as np
>>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), "argmax")
0.5
"""

from __future__ import annotations

import numpy as np

from graphnn.ir.graph import GraphIR


def prediction_node(ir: GraphIR, loss: str) -> tuple[str, str | None]:
    """(prediction node, target input) of a loss: the parameter-dependent operand of the node
    nearest the loss that also reads a data input directly (softmax_cross_entropy(logits, y),
    mse(pred, y), ...). Falls back to the loss itself."""
    depends: dict[str, bool] = {}
    for node in ir.nodes:
        depends[node.name] = node.op == "param" or any(depends[i] for i in node.inputs)
    for node in reversed(ir.nodes):
        targets = [i for i in node.inputs if ir.node(i).op == "input"]
        preds = [i for i in node.inputs if depends[i]]
        if targets and preds:
            return preds[0], targets[0]
    return loss, None


def accuracy_kind(ir: GraphIR, loss: str, prediction: str) -> str | None:
    """How to read classes from the prediction: 'argmax' (softmax classifiers), 'logit' (> 0,
    with a BCE-with-logits loss), 'prob' (> 0.5, a sigmoid output); None for a regression."""
    node = ir.node(prediction)
    if len(node.shape) != 2:
        return None
    if any(n.op == "softmax_ce" for n in ir.nodes) or node.op == "softmax":
        return "argmax" if node.shape[1] > 1 else None
    if any(n.attr("fn") == "bce_with_logits" for n in ir.nodes):
        return "logit"
    if node.attr("fn") == "sigmoid":
        return "prob"
    return None


def accuracy(pred: np.ndarray, target: np.ndarray, kind: str) -> float:
    """Fraction of rows whose predicted class matches the target's ('argmax'), or of outputs
    on the target's side of the threshold ('logit': 0, 'prob': 0.5; multi-label too)."""
    if kind == "argmax":
        return float(np.mean(pred.argmax(axis=1) == target.argmax(axis=1)))
    threshold = 0.0 if kind == "logit" else 0.5
    return float(np.mean((pred > threshold) == (target > 0.5)))

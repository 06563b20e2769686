"""What a graph predicts: the node a loss compares with its target, and how to read classes from it.

>>> import graphnn as gn
>>> x, y = gn.input("x", (4,)), gn.input("y", (3,))
>>> logits = (x @ gn.param("W", (4, 3))).named("logits")
>>> ir = gn.Graph(gn.softmax_cross_entropy(logits, y)).forward
>>> prediction_node(ir, "softmax_ce1"), accuracy_kind(ir, "softmax_ce1", "logits")
(('logits', 'y'), 'argmax')
"""

from __future__ import annotations

from graphnn.ir.graph import GraphIR


def prediction_node(ir: GraphIR, loss: str) -> tuple[str, str | None]:
    """(prediction node, target input) of a loss: the parameter-dependent operand of the node
    nearest the loss that also reads a data input directly (softmax_cross_entropy(logits, y),
    mse(pred, y), ...). Falls back to the loss itself."""
    depends: dict[str, bool] = {}
    for node in ir.nodes:
        depends[node.name] = node.op == "param" or any(depends[i] for i in node.inputs)

    def target(name: str) -> str | None:  # an input, or an input of class ids read as one-hot
        node = ir.node(name)
        if node.op == "reshape":  # a column of ids: reshape(one_hot(y)) (sparse cross-entropy)
            node = ir.node(node.inputs[0])
        if node.op == "one_hot" and ir.node(node.inputs[0]).op == "input":
            return node.inputs[0]
        return name if node.op == "input" else None

    for node in reversed(ir.nodes):
        targets = [t for t in map(target, node.inputs) if t is not None]
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

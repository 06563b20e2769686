"""The argument names of a generated module's functions: one :class:`Signature` per graph and
optimizer, shared by every back end and by the exports.

>>> import graphnn as gn
>>> x = gn.input("x", (2,)); W = gn.param("W", (2, 1))
>>> sig = signature(gn.Graph(gn.mean(x @ W)), gn.Adam())
>>> sig.inputs, sig.params, sig.state
(('x',), ('W',), ('m_W', 'v_W'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codegen.names import RESERVED, identifiers, size_variables, update_locals
from codegen.plan import make_plan
from graphnn.ir.dropout import has_dropout
from graphnn.ir.graph import GraphIR
from graphnn.optim.optimizers import state_key


@dataclass(frozen=True)
class Signature:
    """Argument names of the generated functions, in order (identifiers as printed)."""

    inputs: tuple[str, ...]
    params: tuple[str, ...]
    state: tuple[str, ...]  # "<buffer>_<param>" for each parameter and optimizer buffer
    hyper: tuple[str, ...]
    training: GraphIR  # the training graph with every node named by its identifier
    forward: GraphIR
    loss: str
    grads: tuple[str, ...]  # gradient node identifiers, in parameter order
    ident: dict  # node name -> identifier
    draws: bool = False  # the training kernel takes dropout's draw (draw, sample_ids)
    # params[:trainable] are optimized; the rest are state parameters, each assigned the value
    # its entry of grads holds (batch norm's running statistics: graphnn.ir.batch_norm)
    trainable: int = 0


def signature(graph, optimizer) -> Signature:
    hyper = tuple(optimizer.hyper) if optimizer else ()
    if optimizer is not None and optimizer.clip_norm is not None:
        hyper += ("clip_norm",)
    buffers = tuple(optimizer.state) if optimizer else ()
    scalars = tuple(k for k, _ in optimizer.per_step) if optimizer else ()
    state = tuple(state_key(b, p) for p in graph.param_names for b in buffers)
    flat = {f"{b}_" for b in buffers}  # apply_update's and update_all's views of the buffers
    dims = size_variables(graph)
    written = set(update_locals(optimizer).values()) if optimizer else set()  # small models'
    taken = {*hyper, *buffers, *flat, *scalars, *state, *dims, *written}
    ident = identifiers(graph, RESERVED | taken)
    rename = {
        tid: ident[name] for ir in (graph.training, graph.forward) for tid, name in ir.names.items()
    }
    params = tuple(ident[p] for p in graph.kernel_params)
    news = [graph.grad_names[p] for p in graph.param_names]
    news += [graph.update_names[s] for s in graph.state_names]
    return Signature(
        inputs=tuple(ident[n.name] for n in graph.forward.inputs),
        params=params,
        state=state,
        hyper=hyper,
        training=GraphIR(graph.training.outputs, rename),
        forward=GraphIR(graph.forward.outputs, rename),
        loss=ident[graph.loss_name],
        grads=tuple(ident[g] for g in news),
        ident=ident,
        draws=has_dropout(graph.training),
        trainable=len(graph.param_names),
    )


def forward_inputs(graph, outputs: Sequence[str]) -> tuple[str, ...]:
    """The data inputs that ``outputs`` depend on (a prediction needs no targets)."""
    needed = make_plan(graph.forward, outputs).needed
    return tuple(n.name for n in graph.forward.inputs if n.name in needed)

"""graphnn: declare a network as a symbolic graph; SymPy derives its gradients by the chain rule;
generated Numba kernels train it.

>>> import graphnn as gn
>>> x = gn.input("x", (64,)); y = gn.input("y", (10,))
>>> W = gn.param("W", (64, 10)); b = gn.param("b", (10,), init="zeros")
>>> g = gn.Graph(gn.softmax_cross_entropy(x @ W + b, y))
>>> sorted(g.param_names)
['W', 'b']
"""

from graphnn import distributed
from graphnn.api import Graph
from graphnn.budgets import LimitError
from graphnn.errors import (
    CheckpointError,
    CodegenError,
    DataError,
    DistributedError,
    GraphError,
    GraphnnError,
    GraphnnWarning,
    NonFiniteError,
    RunExistsError,
    ShapeError,
    SpecError,
)
from graphnn.ir.batch_norm import batch_norm
from graphnn.ir.conv import avg_pool2d, concat, conv2d, flatten, max_pool2d
from graphnn.ir.dropout import dropout
from graphnn.ir.elementwise import ACTIVATIONS
from graphnn.ir.embedding import (
    embedding,
    layer_norm,
    one_hot,
    sparse_softmax_cross_entropy,
)
from graphnn.ir.indexed import contract
from graphnn.ir.ops import (
    Tensor,
    apply,
    binary_cross_entropy_with_logits,
    constant,
    elementwise,
    elu,
    gelu,
    input,
    leaky_relu,
    matmul,
    mean,
    mse,
    param,
    power,
    relu,
    reshape,
    sigmoid,
    silu,
    softmax,
    softmax_cross_entropy,
    softplus,
    sum,
    tanh,
)
from graphnn.ir.ops import exp_ as exp
from graphnn.ir.ops import log_ as log
from graphnn.model_file import load_model
from graphnn.optim.optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, RMSProp
from graphnn.train.driver import Model, compile

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Model",
    "Optimizer",
    "RMSProp",
    "compile",
    "distributed",
    "ACTIVATIONS",
    "avg_pool2d",
    "batch_norm",
    "contract",
    "dropout",
    "embedding",
    "layer_norm",
    "one_hot",
    "reshape",
    "concat",
    "conv2d",
    "flatten",
    "max_pool2d",
    "CheckpointError",
    "CodegenError",
    "DataError",
    "DistributedError",
    "Graph",
    "GraphError",
    "GraphnnError",
    "GraphnnWarning",
    "LimitError",
    "NonFiniteError",
    "RunExistsError",
    "ShapeError",
    "SpecError",
    "Tensor",
    "apply",
    "binary_cross_entropy_with_logits",
    "constant",
    "elementwise",
    "elu",
    "exp",
    "gelu",
    "input",
    "leaky_relu",
    "load_model",
    "log",
    "matmul",
    "mean",
    "mse",
    "param",
    "power",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "softplus",
    "sum",
    "tanh",
]

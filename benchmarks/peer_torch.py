"""PyTorch eager trainer: nn.Linear layers, torch.optim, F.cross_entropy / F.mse_loss.

Minibatches are gathered by index from tensors preloaded once (``torch.from_numpy``, no copy).
Runs with ``torch.set_num_threads(2)`` and PyTorch's default denormal handling (not flushed;
``torch.set_flush_denormal`` is left alone and recorded).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from trainer_base import Trainer, flush_probe

torch.set_num_threads(2)


class TorchTrainer(Trainer):
    name = "torch"

    def __init__(self, wl, X, Y, init, seed=0):
        super().__init__(wl, X, Y, seed)
        layers: list[nn.Module] = []
        self.linears = []
        for i, (W, b) in enumerate(init):
            lin = nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            self.linears.append(lin)
            if i < len(init) - 1:
                layers.append(nn.ReLU() if wl.activation == "relu" else nn.Tanh())
        self.model = nn.Sequential(*layers)
        opt = wl.optimizer
        if opt.name == "adam":
            betas = (opt.beta1, opt.beta2)
            self.opt = torch.optim.Adam(
                self.model.parameters(), lr=opt.lr, betas=betas, eps=opt.eps
            )
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=opt.lr, momentum=opt.momentum)
        self.Xt = torch.from_numpy(X)
        if wl.loss == "softmax_ce":  # class indices: the standard form of F.cross_entropy
            self.Tt = torch.from_numpy(Y.argmax(axis=1).astype(np.int64))
        else:
            self.Tt = torch.from_numpy(Y)

    def _loss(self, out, target):
        if self.wl.loss == "softmax_ce":
            return F.cross_entropy(out, target)
        return F.mse_loss(torch.sigmoid(out), target)

    def train_batch(self, idx):
        idx = torch.from_numpy(idx)  # no copy
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(self.model(self.Xt[idx]), self.Tt[idx])
        loss.backward()
        self.opt.step()

    def params_numpy(self):
        return [
            (lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())
            for lin in self.linears
        ]

    def state_arrays(self):
        arrays = [p for layer in self.params_numpy() for p in layer]
        for state in self.opt.state.values():
            arrays += [v.numpy() for v in state.values() if torch.is_tensor(v) and v.ndim > 0]
        return arrays

    def info(self):
        return {
            "version": torch.__version__,
            "optimizer": self.wl.optimizer.describe(),
            "threads": torch.get_num_threads(),
            "set_flush_denormal": "default (off)",
            **flush_probe(lambda a, b: (torch.tensor(a) * torch.tensor(b)).item()),
        }

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
        if wl.image:
            self._build_conv(wl, X, init)
        else:
            self._build_dense(wl, X, init)
        opt = wl.optimizer
        if opt.name == "adam":
            betas = (opt.beta1, opt.beta2)
            self.opt = torch.optim.Adam(
                self.model.parameters(), lr=opt.lr, betas=betas, eps=opt.eps
            )
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=opt.lr, momentum=opt.momentum)
        if wl.loss == "softmax_ce":  # class indices: the standard form of F.cross_entropy
            self.Tt = torch.from_numpy(Y.argmax(axis=1).astype(np.int64))
        else:
            self.Tt = torch.from_numpy(Y)

    def _build_conv(self, wl, X, init):
        """nn.Conv2d (NCHW, PyTorch's native CPU layout) -> ReLU -> MaxPool2d per conv layer,
        Flatten, nn.Linear.  The images are transposed to NCHW once, here; the dense layer's
        rows are permuted from the harness's (h, w, c) flatten order to NCHW's (c, h, w), so
        the model computes the same function as graphnn's NHWC one without a transpose per step.
        """
        layers: list[nn.Module] = []
        self.convs = []
        for K, b in init[:-1]:
            kh, kw, cin, cout = K.shape
            conv = nn.Conv2d(cin, cout, (kh, kw), padding=wl.pad)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(K.transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(b))
            layers += [conv, nn.ReLU(), nn.MaxPool2d(wl.pool)]
            self.convs.append(conv)
        W, b = init[-1]
        self._flat_hwc = self._pooled_shape(wl, init)  # (h, w, c) before the flatten
        lin = nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(self._hwc_to_chw(W).T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        self.linears = [lin]
        self.model = nn.Sequential(*layers, nn.Flatten(), lin)
        images = X.reshape(-1, *wl.image).transpose(0, 3, 1, 2)
        self.Xt = torch.from_numpy(np.ascontiguousarray(images))

    @staticmethod
    def _pooled_shape(wl, init):
        h, w, _ = wl.image
        for _ in init[:-1]:
            h = (h + 2 * wl.pad - wl.kernel + 1) // wl.pool
            w = (w + 2 * wl.pad - wl.kernel + 1) // wl.pool
        return h, w, init[-2][0].shape[-1]

    def _hwc_to_chw(self, W):
        h, w, c = self._flat_hwc
        return W.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)

    def _chw_to_hwc(self, W):
        h, w, c = self._flat_hwc
        return W.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)

    def _build_dense(self, wl, X, init):
        layers: list[nn.Module] = []
        self.convs = []
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
        self.Xt = torch.from_numpy(X)

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
        convs = [
            (c.weight.detach().numpy().transpose(2, 3, 1, 0).copy(), c.bias.detach().numpy().copy())
            for c in self.convs
        ]
        dense = [
            (lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())
            for lin in self.linears
        ]
        if self.convs:
            dense = [(self._chw_to_hwc(dense[0][0]), dense[0][1])]
        return convs + dense

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

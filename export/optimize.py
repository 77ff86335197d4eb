"""Export-time rewrites that keep the numbers and speed up the graphs (ONNX Runtime CPU, TensorRT).

:class:`UnfoldCondConv2d` computes a k x k :class:`~mrcnet.model.CondConv2d` with its im2col done by a
constant one-hot depthwise convolution (``C -> C k^2`` channels, groups = C) instead of k^2 Slices +
a Concat: one Conv node with static weights (fast on every backend, TensorRT-friendly), then the
same per-sample gathered-weight MatMul. Parameters are shared with the original module (same
state-dict names, no copy).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mrcnet.model import CondConv2d


class UnfoldCondConv2d(nn.Module):
    """Drop-in for a k x k :class:`CondConv2d` (k > 1). x (N, in, H, W), obj_index (N,) int64 ->
    (N, out, H, W). ``weights`` (n_obj, out, in, k, k) and ``bias`` (n_obj, out, 1, 1) are the
    original module's parameters."""

    def __init__(self, cond: CondConv2d):
        super().__init__()
        self.n_obj, self.cin, self.cout, self.k = cond.n_obj, cond.cin, cond.cout, cond.k
        self.weights = cond.weights
        self.bias = cond.bias
        k2 = self.k * self.k
        eye = torch.zeros(self.cin * k2, 1, self.k, self.k)
        for c in range(self.cin):
            for j in range(k2):
                eye[c * k2 + j, 0, j // self.k, j % self.k] = 1.0
        self.register_buffer("unfold_kernel", eye, persistent=False)

    def forward(self, x: Tensor, obj_index: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.k
        weight = self.weights.index_select(0, obj_index).reshape(n, self.cout, c * k * k)
        bias = self.bias.index_select(0, obj_index).reshape(n, self.cout, 1)
        cols = F.conv2d(x, self.unfold_kernel, padding=k // 2, groups=c).reshape(n, c * k * k, h * w)
        return (torch.matmul(weight, cols) + bias).reshape(n, self.cout, h, w)


def optimize_for_export(model: nn.Module) -> nn.Module:
    """Swap every k x k (k > 1) :class:`CondConv2d` for :class:`UnfoldCondConv2d`, in place.
    Returns ``model``; its state dict keys are unchanged."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, CondConv2d) and child.k > 1:
                setattr(mod, name, UnfoldCondConv2d(child))
    return model

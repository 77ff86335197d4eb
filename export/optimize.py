"""Export-time rewrites that keep the numbers and speed up the graphs (ONNX Runtime CPU, TensorRT).

Per-object convolutions (:class:`~mrcnet.model.CondConv2d`) have two exact export forms, chosen per
export by :func:`optimize_for_export` from the number of objects kept:

:class:`StackedCondConv2d` (few objects: the typical edge export)
    one static convolution over all kept objects' weights (``n_obj x out`` output channels), then
    each sample's own ``out`` channels picked by a Gather (none for one object). Runs on the
    backends' best convolution kernels (ONNX Runtime's blocked NCHWc convolutions, TensorRT
    tactics) at ``n_obj`` times the multiplies.
:class:`UnfoldCondConv2d` (k > 1) / the module's own ``"matmul"`` form (k = 1)
    the per-sample weights gathered by ``obj_index`` and one batched MatMul, with the k x k im2col
    done by a constant one-hot depthwise convolution (``C -> C k^2`` channels, groups = C) instead
    of k^2 Slices + a Concat: work independent of the number of objects.

Measured on this project's 2-core CPU (ONNX Runtime 1.32, 4 crops, CPU time of one thread; see
``STACKED_MAX_OBJECTS``): the stacked form wins by a wide margin at 1 object and stays ahead up to a
few objects, after which its ``n_obj``-fold multiplies dominate. Parameters are shared with the
original module (same state-dict names, no copy).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mrcnet.model import CondConv2d

#: exports with at most this many objects use :class:`StackedCondConv2d` (``condconv="auto"``)
STACKED_MAX_OBJECTS = 1
FORMS = ("auto", "stacked", "gather")


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


class StackedCondConv2d(nn.Module):
    """Drop-in for a :class:`CondConv2d`: one convolution with all objects' weights stacked
    (``weights.reshape(n_obj * out, in, k, k)``), then sample i keeps the channels of object
    ``obj_index[i]``. x (N, in, H, W), obj_index (N,) int64 -> (N, out, H, W). With one object
    the graph has no Gather and ignores ``obj_index``."""

    def __init__(self, cond: CondConv2d):
        super().__init__()
        self.n_obj, self.cin, self.cout, self.k = cond.n_obj, cond.cin, cond.cout, cond.k
        self.weights = cond.weights
        self.bias = cond.bias

    def forward(self, x: Tensor, obj_index: Tensor) -> Tensor:
        k, m = self.k, self.n_obj * self.cout
        y = F.conv2d(x, self.weights.reshape(m, self.cin, k, k), self.bias.reshape(m), padding=k // 2)
        if self.n_obj == 1:
            return y
        _, _, h, w = y.shape
        # row i * n_obj + obj_index[i] of the (N n_obj, out, H, W) view is sample i's own output
        rows = torch.arange(x.shape[0], device=x.device) * self.n_obj + obj_index
        return y.reshape(-1, self.cout, h, w).index_select(0, rows)


def condconv_form(n_obj: int, form: str = "auto") -> str:
    """The export form for ``n_obj`` objects: ``"stacked"`` or ``"gather"`` (``form="auto"``:
    stacked up to :data:`STACKED_MAX_OBJECTS` objects)."""
    if form not in FORMS:
        raise ValueError(f"condconv form: {form!r} is not one of {FORMS}")
    if form == "auto":
        return "stacked" if n_obj <= STACKED_MAX_OBJECTS else "gather"
    return form


def optimize_for_export(model: nn.Module, condconv: str = "auto") -> nn.Module:
    """Swap every :class:`CondConv2d` for its export form (:func:`condconv_form` of the model's
    object count), in place: :class:`StackedCondConv2d`, or :class:`UnfoldCondConv2d` for k > 1 and
    the module's own gather + matmul for k = 1. Returns ``model``; its state dict keys are unchanged."""
    conds = [m for m in model.modules() if isinstance(m, CondConv2d)]
    if not conds:
        return model
    form = condconv_form(conds[0].n_obj, condconv)
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if not isinstance(child, CondConv2d):
                continue
            if form == "stacked":
                setattr(mod, name, StackedCondConv2d(child))
            elif child.k > 1:
                setattr(mod, name, UnfoldCondConv2d(child))
    return model

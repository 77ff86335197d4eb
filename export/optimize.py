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

:class:`SortedPoseDecoder` (ONNX Runtime CPU exports, any number of objects)
    the decoder's crops sorted by object once (one TopK, one Gather per input), each per-object
    convolution run as ``n_obj`` static convolutions on its object's rows (:class:`SlicedCondConv2d`:
    Slices with run-time bounds, empty for absent objects), the rows put back in order at the end.
    The multiplies of one convolution per crop on ONNX Runtime's best kernels, and int8 QLinearConv
    with constant weights. TopK with a run-time K and data-dependent Slice bounds are not TensorRT
    layers (:func:`mrcnet.export.trt_support.check_graph` flags the TopK): TensorRT exports keep the
    two forms above.

Measured on this project's 2-core CPU (ONNX Runtime 1.32, 4 crops, CPU time of one thread; see
``STACKED_MAX_OBJECTS``): the stacked form wins by a wide margin at 1 object and stays ahead up to a
few objects, after which its ``n_obj``-fold multiplies dominate. The sorted form beats both on
ONNX Runtime: the demo model's decoder (3 objects, ONNX Runtime 1.32, one thread, training running
beside it: ratios only) 292 ms for 16 crops (gather 682, stacked 842, eager torch 374) and 16 ms for
4 crops (gather 45, stacked 147). Parameters are shared with the original module (same state-dict
names, no copy).

Batch-statistics normalisation (:class:`~mrcnet.model.GroupBatchNorm2d`) is exported as
:class:`InstanceGroupBatchNorm2d`: the group's crops moved next to the spatial axes by one Transpose
and one ``InstanceNormalization`` (a single fused kernel in ONNX Runtime and TensorRT) instead of
two ReduceMeans and five elementwise passes (Sub, Mul, Div by Sqrt, scale, shift). ONNX Runtime
CPU, 4 crops, one layer + ReLU: 2-3x faster, and nearer to the PyTorch numbers (see
``tests/test_export.py``). In int8 graphs these layers are what stays float between the int8
convolutions (``benchmarks/int8_variants.py`` profiles it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mrcnet.model import CondConv2d, GroupBatchNorm2d
from mrcnet.model.mrcnet import PoseDecoder

#: exports with at most this many objects use :class:`StackedCondConv2d` (``condconv="auto"``)
STACKED_MAX_OBJECTS = 1
FORMS = ("auto", "stacked", "gather", "sorted")
#: what ``condconv_form`` chooses for: ONNX Runtime (CPU) or TensorRT graphs
TARGETS = ("onnxruntime", "tensorrt")
NORM_FORMS = ("instance", "reduce")


class CondConvForm(nn.Module):
    """Base of the export forms of a :class:`CondConv2d`: its sizes and its ``weights`` (n_obj,
    out, in, k, k) and ``bias`` (n_obj, out, 1, 1) parameters, shared (same state-dict names)."""

    def __init__(self, cond: CondConv2d):
        super().__init__()
        self.n_obj, self.cin, self.cout, self.k = cond.n_obj, cond.cin, cond.cout, cond.k
        self.weights = cond.weights
        self.bias = cond.bias


class UnfoldCondConv2d(CondConvForm):
    """Drop-in for a k x k :class:`CondConv2d` (k > 1). x (N, in, H, W), obj_index (N,) int64 ->
    (N, out, H, W). ``weights`` (n_obj, out, in, k, k) and ``bias`` (n_obj, out, 1, 1) are the
    original module's parameters."""

    def __init__(self, cond: CondConv2d):
        super().__init__(cond)
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


class StackedCondConv2d(CondConvForm):
    """Drop-in for a :class:`CondConv2d`: one convolution with all objects' weights stacked
    (``weights.reshape(n_obj * out, in, k, k)``), then sample i keeps the channels of object
    ``obj_index[i]``. x (N, in, H, W), obj_index (N,) int64 -> (N, out, H, W). With one object
    the graph has no Gather and ignores ``obj_index``."""

    def forward(self, x: Tensor, obj_index: Tensor) -> Tensor:
        k, m = self.k, self.n_obj * self.cout
        y = F.conv2d(x, self.weights.reshape(m, self.cin, k, k), self.bias.reshape(m), padding=k // 2)
        if self.n_obj == 1:
            return y
        _, _, h, w = y.shape
        # row i * n_obj + obj_index[i] of the (N n_obj, out, H, W) view is sample i's own output
        rows = torch.arange(x.shape[0], device=x.device) * self.n_obj + obj_index
        return y.reshape(-1, self.cout, h, w).index_select(0, rows)


class SlicedCondConv2d(CondConvForm):
    """Drop-in for a :class:`CondConv2d` inside :class:`SortedPoseDecoder` only: ``obj_index``
    must be sorted ascending. Rows ``[start_o, end_o)`` (those of object o) go through one static
    convolution with object o's weights; the outputs are concatenated in row order.
    x (N, in, H, W), obj_index (N,) int64 sorted -> (N, out, H, W)."""

    def forward(self, x: Tensor, obj_index: Tensor) -> Tensor:
        if self.n_obj == 1:
            return F.conv2d(x, self.weights[0], self.bias[0].reshape(-1), padding=self.k // 2)
        ends = torch.cumsum(torch.stack([(obj_index == o).sum() for o in range(self.n_obj)]), 0)
        outs = []
        for o in range(self.n_obj):
            rows = x[(ends[o - 1] if o else 0):ends[o]]
            outs.append(F.conv2d(rows, self.weights[o], self.bias[o].reshape(-1), padding=self.k // 2))
        return torch.cat(outs, 0)


class SortedPoseDecoder(PoseDecoder):
    """Export form of a :class:`~mrcnet.model.mrcnet.PoseDecoder` (same children, so the same
    state-dict names; its CondConvs swapped for :class:`SlicedCondConv2d`): the rows sorted by
    object (ties in row order), the decoder run, the rows put back. x4, x3, x2 (N, C, h, w) feature
    maps, obj_index (N,) int64 -> (N, embed + 1, H/4, W/4), the numbers of the original."""

    @classmethod
    def of(cls, dec: PoseDecoder) -> "SortedPoseDecoder":
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        for name, child in dec.named_children():
            setattr(m, name, SlicedCondConv2d(child) if isinstance(child, CondConv2d) else child)
        return m

    def forward(self, x4: Tensor, x3: Tensor, x2: Tensor, obj_index: Tensor) -> Tensor:
        if self.layer4_1x1.n_obj == 1:
            return super().forward(x4, x3, x2, obj_index)
        n = obj_index.shape[0]
        order = torch.argsort(obj_index * n + torch.arange(n, device=obj_index.device))  # unique keys
        y = super().forward(x4[order], x3[order], x2[order], obj_index[order])
        return y[torch.argsort(order)]


class InstanceGroupBatchNorm2d(GroupBatchNorm2d):
    """Export form of a :class:`~mrcnet.model.GroupBatchNorm2d` (same statistics: mean and biased
    variance over (group, H, W) per channel; ``weight``, ``bias`` shared with the original; a
    subclass, so ``MRCNet.set_bn_group`` still sets ``group_size``). x (N, C, H, W) float32 ->
    (N, C, H, W): reshape to (N / g, g, C, H W), swap the group and channel axes, InstanceNorm,
    swap back. ``group_size`` 0 = the whole batch as one group."""

    @classmethod
    def of(cls, bn: GroupBatchNorm2d) -> "InstanceGroupBatchNorm2d":
        m = cls(bn.num_features, bn.eps, bn.group_size)
        m.weight, m.bias = bn.weight, bn.bias
        return m

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:  # autocast training path: the original's float32 statistics
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.group_size
        y = (x.reshape(-1, g, c, h * w) if g > 0 else x.reshape(1, -1, c, h * w)).transpose(1, 2)
        y = F.instance_norm(y, weight=self.weight, bias=self.bias, eps=self.eps)
        return y.transpose(1, 2).reshape(n, c, h, w)


def condconv_form(n_obj: int, form: str = "auto", target: str = "tensorrt") -> str:
    """The export form for ``n_obj`` objects: ``"sorted"``, ``"stacked"`` or ``"gather"``
    (``form="auto"``: ``"sorted"`` for ONNX Runtime graphs, fp32 and int8 alike,
    ``target="onnxruntime"``; for TensorRT graphs stacked up to :data:`STACKED_MAX_OBJECTS`
    objects, else gather)."""
    if form not in FORMS:
        raise ValueError(f"condconv form: {form!r} is not one of {FORMS}")
    if target not in TARGETS:
        raise ValueError(f"condconv target: {target!r} is not one of {TARGETS}")
    if form == "sorted" and target == "tensorrt":
        raise ValueError("condconv form 'sorted' is ONNX Runtime only (TopK with a run-time K, data-dependent Slices)")
    if form == "auto":
        if target == "onnxruntime":
            return "sorted"
        return "stacked" if n_obj <= STACKED_MAX_OBJECTS else "gather"
    return form


def optimize_for_export(model: nn.Module, condconv: str = "auto", norm: str = "instance",
                        target: str = "tensorrt") -> nn.Module:
    """Swap every :class:`CondConv2d` for its export form (:func:`condconv_form` of the model's
    object count for ``target``, ``"onnxruntime"`` or ``"tensorrt"``), in place: every
    :class:`~mrcnet.model.mrcnet.PoseDecoder` for a :class:`SortedPoseDecoder`, or each CondConv for a :class:`StackedCondConv2d`, or an :class:`UnfoldCondConv2d` for k > 1 and
    the module's own gather + matmul for k = 1; and (``norm="instance"``) every
    :class:`GroupBatchNorm2d` for :class:`InstanceGroupBatchNorm2d` (``"reduce"`` keeps the
    ReduceMean form). Returns ``model``; its state dict keys are unchanged."""
    if norm not in NORM_FORMS:
        raise ValueError(f"norm form: {norm!r} is not one of {NORM_FORMS}")
    conds = [m for m in model.modules() if isinstance(m, CondConv2d)]
    form = condconv_form(conds[0].n_obj, condconv, target) if conds else None
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if norm == "instance" and type(child) is GroupBatchNorm2d:
                setattr(mod, name, InstanceGroupBatchNorm2d.of(child))
            if form == "sorted" and type(child) is PoseDecoder:
                setattr(mod, name, SortedPoseDecoder.of(child))
            if not isinstance(child, CondConv2d) or form == "sorted":
                continue
            if form == "stacked":
                setattr(mod, name, StackedCondConv2d(child))
            elif child.k > 1:
                setattr(mod, name, UnfoldCondConv2d(child))
    return model

"""Building blocks: group BatchNorm, conv + GroupNorm + SiLU, ASPP, per-object conditional conv.

All of them trace to ONNX opset 17 with a dynamic batch and avoid dynamic-weight convolutions
(TensorRT-friendly): no Python control flow on tensor values, no in-place ops on inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mrcnet.runtime.geometry import TTA_GROUP


def _tracing() -> bool:
    """True while the graph is being traced for export (TorchScript/ONNX, torch.export, dynamo)."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


class GroupBatchNorm2d(nn.Module):
    """BatchNorm that always normalises with batch statistics, taken per group of consecutive
    samples (the official ``BatchNorm2d(track_running_stats=False)`` applied to one detection's
    TTA group at a time).

    ``group_size`` (attribute, set for the whole model by ``MRCNet.set_bn_group``): ``4`` = one
    detection's four in-plane rotations (official inference), ``1`` = per sample (TTA off),
    ``0`` = the whole batch (training, as the official trainer). The batch must be a multiple of
    ``group_size``. Statistics: mean and biased variance over (group, H, W) per channel.
    Parameters ``weight``, ``bias`` (C,) as ``nn.BatchNorm2d``; no running statistics.
    x: (N, C, H, W) -> (N, C, H, W), the dtype of x.

    AMP: a float16 / bfloat16 input (autocast) is normalised in float32 (squares of |x - mean| >
    255 overflow float16) and the result cast back; float32 inputs (export, fp32 training) are
    computed as they are, with no cast in the traced graph.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, group_size: int = TTA_GROUP):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.group_size
        low = x.dtype in (torch.float16, torch.bfloat16)
        xf = x.float() if low else x  # statistics in float32 under autocast
        if g > 0:
            xg = xf.reshape(-1, g, c, h, w)
        else:
            xg = xf.unsqueeze(0)
        mean = xg.mean(dim=(1, 3, 4), keepdim=True)
        xc = xg - mean
        var = (xc * xc).mean(dim=(1, 3, 4), keepdim=True)
        y = xc * torch.rsqrt(var + self.eps)
        y = y.reshape(x.shape)
        y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype) if low else y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, group_size={self.group_size}"


class ConvGNAct(nn.Module):
    """``conv`` (k x k, no bias) -> ``norm`` GroupNorm -> SiLU. (N, in, H, W) -> (N, out, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 32,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False)
        self.norm = nn.GroupNorm(groups, cout)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling without a projection: output = concat of the input, its
    global average (broadcast back to H x W) and one 3x3 ``ConvGNAct`` per dilation
    (``convs.{i}``). (N, C, H, W) -> (N, (2 + len(dilations)) C, H, W)."""

    def __init__(self, channels: int, dilations: Sequence[int] = (2, 3, 4, 6, 8, 12), groups: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(ConvGNAct(channels, channels, 3, dilation=d, groups=groups) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        return torch.cat([x, pooled] + [conv(x) for conv in self.convs], dim=1)


class CondConv2d(nn.Module):
    """Per-object convolution: sample i uses ``weights[obj_index[i]]`` and ``bias[obj_index[i]]``.

    Parameters (official names): ``weights`` (n_obj, out, in, k, k), ``bias`` (n_obj, out, 1, 1).
    Stride 1, 'same' zero padding. x (N, in, H, W), obj_index (N,) int64 -> (N, out, H, W).

    Two implementations of the same numbers (``impl``):
    ``"matmul"``: gather of the per-sample weights and a batched matmul over the k x k shifted
    copies of the input (im2col by slicing): exports to ONNX as Gather + Pad + Slice + Concat +
    MatMul, with no convolution on run-time weights (TensorRT-safe, dynamic N).
    ``"conv"``: one grouped convolution (groups = N) on the gathered weights: about 3x faster in
    eager PyTorch on a CPU, but a dynamic-weight conv whose group count is the batch size.
    ``"auto"`` (default): ``"matmul"`` while tracing / exporting / compiling, else ``"conv"``.
    """

    impl: str = "auto"

    def __init__(self, n_obj: int, cin: int, cout: int, k: int = 1):
        super().__init__()
        self.n_obj, self.cin, self.cout, self.k = n_obj, cin, cout, k
        self.weights = nn.Parameter(torch.empty(n_obj, cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(n_obj, cout, 1, 1))
        for i in range(n_obj):
            nn.init.kaiming_uniform_(self.weights.data[i], a=5**0.5)

    def forward(self, x: Tensor, obj_index: Tensor) -> Tensor:
        impl = self.impl
        if impl == "auto":
            impl = "matmul" if _tracing() else "conv"
        if impl == "conv":
            return self._forward_conv(x, obj_index)
        return self._forward_matmul(x, obj_index)

    def _forward_conv(self, x: Tensor, obj_index: Tensor) -> Tensor:
        n, c, h, w = x.shape
        weight = self.weights.index_select(0, obj_index).reshape(n * self.cout, c, self.k, self.k)
        bias = self.bias.index_select(0, obj_index).reshape(n * self.cout)
        y = F.conv2d(x.reshape(1, n * c, h, w), weight, bias, padding=self.k // 2, groups=n)
        return y.reshape(n, self.cout, h, w)

    def _forward_matmul(self, x: Tensor, obj_index: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.k
        weight = self.weights.index_select(0, obj_index).reshape(n, self.cout, c * k * k)  # (N, out, in k k)
        bias = self.bias.index_select(0, obj_index).reshape(n, self.cout, 1)
        if k == 1:
            cols = x.reshape(n, c, h * w)
        else:
            p = k // 2
            xp = F.pad(x, (p, p, p, p))
            # (N, in, k*k, H, W): the order (in, ky, kx) matches weights.reshape(out, in*k*k)
            cols = torch.stack([xp[:, :, dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)], dim=2)
            cols = cols.reshape(n, c * k * k, h * w)
        y = torch.matmul(weight, cols) + bias
        return y.reshape(n, self.cout, h, w)

    def extra_repr(self) -> str:
        return f"n_obj={self.n_obj}, {self.cin}, {self.cout}, kernel_size={self.k}"

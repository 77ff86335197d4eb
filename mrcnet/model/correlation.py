"""Local correlation (cost volume) in plain torch ops (ONNX: Pad + Slice + Mul + ReduceSum + Concat).

``correlation(a, b, patch)[n, i * patch + j, y, x] = sum_c a[n, c, y, x] * b[n, c, y + i - r, x + j - r]``
with ``r = patch // 2``, zero outside the map: displacements y-major, as the official
``spatial_correlation_sampler`` (patch ``11`` -> 121 channels). No normalisation here;
:class:`ResidualCorrelation` divides by sqrt(channels).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def correlation(a: Tensor, b: Tensor, patch: int = 11) -> Tensor:
    """a, b (N, C, H, W) -> (N, patch * patch, H, W), displacement ``(i - r, j - r)`` at channel
    ``i * patch + j`` (y-major)."""
    r = patch // 2
    h, w = a.shape[-2:]
    bp = F.pad(b, (r, r, r, r))
    outs = [(a * bp[:, :, i:i + h, j:j + w]).sum(dim=1) for i in range(patch) for j in range(patch)]
    return torch.stack(outs, dim=1)


class ResidualCorrelation(nn.Module):
    """Correlation of the rendered features against the real ones at one scale.

    ``proj_in`` (1x1 conv with bias, shared by both inputs) projects (N, cin, H, W) to ``cout``
    channels; output ``correlation(proj(rendered), proj(real)) / sqrt(cout)``: (N, patch^2, H, W).
    """

    def __init__(self, cin: int, cout: int, patch: int = 11):
        super().__init__()
        self.patch = patch
        self.proj_in = nn.Conv2d(cin, cout, 1)
        self.scale = 1.0 / math.sqrt(cout)

    def forward(self, rendered: Tensor, real: Tensor) -> Tensor:
        return correlation(self.proj_in(rendered), self.proj_in(real), self.patch) * self.scale

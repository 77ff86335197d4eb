"""Local correlation (cost volume), two implementations of the same numbers.

``correlation(a, b, patch)[n, i * patch + j, y, x] = sum_c a[n, c, y, x] * b[n, c, y + i - r, x + j - r]``
with ``r = patch // 2``, zero outside the map: displacements y-major, as the official
``spatial_correlation_sampler`` (patch ``11`` -> 121 channels). No normalisation here;
:class:`ResidualCorrelation` divides by sqrt(channels).

``impl``:

``"slices"``
    one multiply + channel sum per displacement (patch^2 of them): the fastest eager PyTorch form on
    a CPU and the lightest for training (the slices are views), but patch^2 x 4 ONNX nodes.
``"matmul"``
    a few large operations: per output row y and vertical displacement i, the row of ``a``
    (W, C) times the padded row ``y + i`` of ``b`` (C, W + 2r) in one batched MatMul, then the
    band ``x + j`` of each product row taken by a pad / reshape / slice (no element gather).
    About 15 ONNX nodes per correlation, all with static shapes but the batch; the MatMul does
    (W + 2r) / patch times the strictly needed multiplies, still a small share of stage 2.
``"auto"`` (default)
    ``"matmul"`` while tracing / exporting / compiling, else ``"slices"``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .layers import _tracing

IMPLS = ("auto", "slices", "matmul")


def correlation(a: Tensor, b: Tensor, patch: int = 11, impl: str = "auto") -> Tensor:
    """a, b (N, C, H, W) -> (N, patch * patch, H, W), displacement ``(i - r, j - r)`` at channel
    ``i * patch + j`` (y-major). ``impl``: see the module docstring."""
    if impl == "auto":
        impl = "matmul" if _tracing() else "slices"
    if impl == "slices":
        return _correlation_slices(a, b, patch)
    if impl == "matmul":
        return _correlation_matmul(a, b, patch)
    raise ValueError(f"correlation impl: {impl!r} is not one of {IMPLS}")


def _correlation_slices(a: Tensor, b: Tensor, patch: int) -> Tensor:
    r = patch // 2
    h, w = a.shape[-2:]
    bp = F.pad(b, (r, r, r, r))
    outs = [(a * bp[:, :, i:i + h, j:j + w]).sum(dim=1) for i in range(patch) for j in range(patch)]
    return torch.stack(outs, dim=1)


def _correlation_matmul(a: Tensor, b: Tensor, patch: int) -> Tensor:
    p, r = patch, patch // 2
    c, h, w = (int(s) for s in a.shape[1:])  # static under export: only the batch is dynamic
    wp = w + 2 * r
    rows = (torch.arange(h).view(h, 1) + torch.arange(p).view(1, p)).reshape(-1).to(a.device)  # (H P,)
    bp = F.pad(b, (r, r, r, r)).transpose(1, 2)                        # (N, H + 2r, C, W + 2r)
    bs = bp.index_select(1, rows).reshape(-1, h, p, c, wp)             # (N, H, P, C, Wp): row y + i
    at = a.permute(0, 2, 3, 1).unsqueeze(2)                            # (N, H, 1, W, C)
    m = torch.matmul(at, bs).reshape(-1, h, p, w * wp)                 # (N, H, P, W Wp): [x, x']
    # band m[x, x + j]: flat index x (Wp + 1) + j -> pad W entries, view as (W, Wp + 1), keep j < P
    band = F.pad(m, (0, w)).reshape(-1, h, p, w, wp + 1)[..., :p]      # (N, H, Pi, W, Pj)
    return band.permute(0, 2, 4, 1, 3).reshape(-1, p * p, h, w)


class ResidualCorrelation(nn.Module):
    """Correlation of the rendered features against the real ones at one scale.

    ``proj_in`` (1x1 conv with bias, shared by both inputs) projects (N, cin, H, W) to ``cout``
    channels; output ``correlation(proj(rendered), proj(real)) / sqrt(cout)``: (N, patch^2, H, W).
    ``impl`` (attribute): the :func:`correlation` implementation (default ``"auto"``).
    """

    impl: str = "auto"

    def __init__(self, cin: int, cout: int, patch: int = 11):
        super().__init__()
        self.patch = patch
        self.proj_in = nn.Conv2d(cin, cout, 1)
        self.scale = 1.0 / math.sqrt(cout)

    def forward(self, rendered: Tensor, real: Tensor) -> Tensor:
        return correlation(self.proj_in(rendered), self.proj_in(real), self.patch, self.impl) * self.scale

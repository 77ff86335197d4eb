"""Object subsets: keep only some objects' per-object decoder weights (used by the exporter and the reference).

The per-object decoder (``backbone.decoder``, six :class:`~mrcnet.model.CondConv2d`) holds
``n_obj`` x 5.4 M parameters in the paper preset (T-LESS: 162 M of 245 M). Exporting a subset
slices those tensors along the object axis; the kept objects are renumbered 0..k-1 in the given
order (the graphs' ``obj_index`` is the position in the manifest's ``obj_ids``). With one object the
conditional convolutions become plain ``nn.Conv2d`` (:class:`SingleObjectConv2d`): a regular Conv
node in ONNX, and ``obj_index`` is no longer read.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mrcnet.runtime.errors import ParameterError

from .layers import CondConv2d


class SubsetError(ParameterError):
    """Object ids that the checkpoint does not hold; the message names them."""


class SingleObjectConv2d(nn.Module):
    """A :class:`CondConv2d` restricted to one object: a plain 'same'-padded convolution.

    ``conv.weight`` (out, in, k, k), ``conv.bias`` (out,). ``forward(x, obj_index)`` ignores
    ``obj_index`` (kept for the CondConv call signature). x (N, in, H, W) -> (N, out, H, W).
    """

    def __init__(self, cond: CondConv2d, index: int = 0):
        super().__init__()
        self.cin, self.cout, self.k = cond.cin, cond.cout, cond.k
        self.conv = nn.Conv2d(cond.cin, cond.cout, cond.k, padding=cond.k // 2)
        with torch.no_grad():
            self.conv.weight.copy_(cond.weights[index])
            self.conv.bias.copy_(cond.bias[index].reshape(-1))

    def forward(self, x: Tensor, obj_index: Tensor | None = None) -> Tensor:
        return self.conv(x)


def resolve_object_ids(requested: Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """Validate ``requested`` BOP ids against the checkpoint's ``available`` ids (None = all).

    Raises :class:`SubsetError` naming the missing ids; duplicates are an error too."""
    available = [int(i) for i in available]
    if requested is None:
        return available
    req = [int(i) for i in requested]
    if not req:
        raise SubsetError("object_ids", "empty list")
    dup = sorted({i for i in req if req.count(i) > 1})
    if dup:
        raise SubsetError("object_ids", f"duplicate id(s) {dup}")
    missing = [i for i in req if i not in available]
    if missing:
        raise SubsetError("object_ids", f"object(s) {missing} not in the checkpoint (it holds {available})")
    return req


def parse_object_ids(text: str | None) -> list[int] | None:
    """``"5,7"`` -> [5, 7]; None/empty -> None. Raises :class:`SubsetError` on a bad token."""
    if text is None or not str(text).strip():
        return None
    out = []
    for tok in str(text).split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            out.append(int(tok))
        except ValueError:
            raise SubsetError("object_ids", f"{tok!r} is not an integer object id") from None
    return out


def subset_model(model: nn.Module, indices: Sequence[int], inplace: bool = False) -> nn.Module:
    """Keep the per-object decoder weights of ``indices`` (0-based positions in the model's object
    list, in the new order). One index -> :class:`SingleObjectConv2d` everywhere.

    ``inplace=False`` works on a deep copy (the paper model is ~1 GB: the CLI uses ``inplace``).
    Returns the model with ``n_obj = len(indices)``; ``model.meta['obj_ids']`` is remapped if present.
    """
    idx = [int(i) for i in indices]
    if not idx:
        raise SubsetError("indices", "no object indices")
    bad = [i for i in idx if not 0 <= i < model.n_obj]
    if bad:
        raise SubsetError("indices", f"object index(es) {bad} outside 0..{model.n_obj - 1}")
    if not inplace:
        model = copy.deepcopy(model)
    sel = torch.tensor(idx, dtype=torch.long)
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if not isinstance(child, CondConv2d):
                continue
            if len(idx) == 1:
                setattr(mod, cname, SingleObjectConv2d(child, idx[0]))
            else:
                with torch.no_grad():
                    child.weights = nn.Parameter(child.weights.detach().index_select(0, sel).clone())
                    child.bias = nn.Parameter(child.bias.detach().index_select(0, sel).clone())
                child.n_obj = len(idx)
    model.n_obj = len(idx)
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and meta.get("obj_ids") is not None and len(meta["obj_ids"]) > max(idx):
        meta["obj_ids"] = [meta["obj_ids"][i] for i in idx]
        meta["n_obj"] = len(idx)
    return model


def per_object_params(model: nn.Module) -> int:
    """Parameters of the per-object decoder (all objects): CondConv2d / SingleObjectConv2d."""
    n = 0
    for m in model.modules():
        if isinstance(m, (CondConv2d, SingleObjectConv2d)):
            n += sum(p.numel() for p in m.parameters())
    return n


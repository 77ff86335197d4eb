"""The PyTorch reference backend: the runtime's Backend interface over ``MRCNet.stage1/stage2``.

``Pipeline(TorchBackend(model), manifest, renderer)`` runs the same pipeline as the exported
graphs (same preprocessing, renderer, TTA selection), so ONNX Runtime / TensorRT poses can be
compared with PyTorch poses on the same detections. Stage-1 tensors stay torch tensors (on the
model's device) between the two calls; only the fetched outputs become numpy.
"""
from __future__ import annotations

import inspect
from typing import Mapping, Optional

import numpy as np
import torch

from mrcnet.checkpoint import load_checkpoint
from mrcnet.model.subset import subset_model
from mrcnet.runtime.backends import Backend, BackendError
from mrcnet.runtime.geometry import TTA_GROUP

_INT_INPUTS = ("obj_index",)


class TorchBackend(Backend):
    """``model``: an :class:`mrcnet.model.MRCNet` (eval mode; its BatchNorm group must be the
    export's ``bn_group``, 4). device: where to run (default: the model's).

    Graph names: classifier inputs = ``stage1``'s parameters, regressor inputs = ``stage2``'s; the
    outputs are the keys of their result dicts (probed once on construction), a superset of the
    exported graphs' outputs.
    """

    def __init__(self, model: torch.nn.Module, device: Optional[str] = None):
        self.model = model.eval()
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.name = f"torch-{self.device.type}"
        self.classifier_inputs = [p for p in inspect.signature(model.stage1).parameters]
        self.regressor_inputs = [p for p in inspect.signature(model.stage2).parameters]
        self.classifier_outputs, self.regressor_outputs = self._probe()
        self._last: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, path, dataset: Optional[str] = None, object_ids=None, device: str = "cpu") -> "TorchBackend":
        """A checkpoint (official or project), optionally reduced to ``object_ids`` (BOP ids) the
        way ``mrcnet-export --object-ids`` does, so ``obj_index`` means the same as in the export."""
        model = load_checkpoint(path, dataset=dataset, device=device)
        if object_ids is not None:
            ids = list(model.meta["obj_ids"])
            missing = [i for i in object_ids if i not in ids]
            if missing:
                raise BackendError(f"torch: objects {missing} not in checkpoint {path} (has {ids})")
            model = subset_model(model, [ids.index(i) for i in object_ids])
        return cls(model, device)

    def _probe(self) -> tuple[list[str], list[str]]:
        """Output names of both stages from one tiny forward pass (one TTA group)."""
        s = self.model.cfg.crop_size
        n = TTA_GROUP
        K = torch.tensor([[700.0, 0, s / 2], [0, 700.0, s / 2], [0, 0, 1]]).expand(n, 3, 3).contiguous()
        feeds = {"crops": torch.rand(n, 4, s, s), "obj_index": torch.zeros(n, dtype=torch.int64),
                 "fov": torch.tensor([[0.0, 0.0, 0.3]]).expand(n, 3).contiguous(), "K_roi": K}
        feeds = {k: v.to(self.device) for k, v in feeds.items()}
        with torch.no_grad():
            s1 = self.model.stage1(**{k: feeds[k] for k in self.classifier_inputs})
            s2 = self.model.stage2(**{k: (feeds["crops"] if k == "render" else feeds.get(k, s1.get(k)))
                                      for k in self.regressor_inputs})
        return list(s1), list(s2)

    def _tensor(self, name: str, a) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a.to(self.device)
        dtype = np.int64 if name in _INT_INPUTS else np.float32
        return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).to(self.device)

    def _run_classifier(self, feeds: dict, fetch: list[str]) -> dict:
        t = {k: self._tensor(k, v) for k, v in feeds.items()}
        with torch.no_grad():
            out = self.model.stage1(**t)
        self._last = {**t, **out}
        return {k: out[k].detach().cpu().numpy() for k in fetch}

    def _run_regressor(self, feeds: Mapping, fetch: list[str]) -> dict:
        args = {}
        for n in self.regressor_inputs:
            if n in feeds:
                args[n] = self._tensor(n, feeds[n])
            elif n in self._last:
                args[n] = self._last[n]
            else:
                raise BackendError(f"{self.name}: regressor input {n!r} neither fed nor produced by the classifier")
        with torch.no_grad():
            out = self.model.stage2(**args)
        return {k: out[k].detach().cpu().numpy() for k in fetch}

    def close(self) -> None:
        self._last = {}

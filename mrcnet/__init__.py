"""MRC-Net Edge: MRC-Net 6-DoF pose estimation, PyTorch reference, export and a torch-free runtime.

Importing ``mrcnet`` does not import torch: ``mrcnet.runtime`` lives under this package and must stay
torch-free. Torch-backed names are resolved lazily.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": ("mrcnet.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("mrcnet.checkpoint", "save_checkpoint"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mrcnet' has no attribute {name!r}")

"""PyTorch MRC-Net, numerically the official one (see ``mrcnet.model.mrcnet``).

``build_model(n_obj, depth_range, preset="paper")`` -> :class:`MRCNet` with ``stage1``, ``stage2``,
``forward``; presets in :mod:`mrcnet.model.config`.
"""
from .config import PRESETS, ModelConfig, get_config
from .correlation import ResidualCorrelation, correlation
from .layers import ASPP, CondConv2d, ConvGNAct, GroupBatchNorm2d
from .mrcnet import STAGE2_FEATURES, MRCNet, build_model
from .resnet import ResNet

__all__ = [
    "PRESETS", "ModelConfig", "get_config", "ResidualCorrelation", "correlation", "ASPP", "CondConv2d",
    "ConvGNAct", "GroupBatchNorm2d", "STAGE2_FEATURES", "MRCNet", "build_model", "ResNet",
]

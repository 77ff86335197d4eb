"""ImageNet initialisation of the backbone from a torchvision ResNet-34 state dict (the official recipe).

The official trainer starts its ResNet-34 from ImageNet weights. Here they come from a local file:
the state dict of ``torchvision.models.resnet34(weights="IMAGENET1K_V1")`` saved with ``torch.save``
(docs/TRAINING.md says how to make one), read with ``torch.load(..., weights_only=True)``.

Key layout (torchvision) -> MRC-Net (``mrcnet.model.resnet``, one Siamese backbone for both stages):

- ``layer{i}.{b}.conv1.weight``, ``.bn1.weight`` ... ``.downsample.0.weight``, ``.downsample.1.bias``
  -> ``backbone.layer{i}.0.{b}.<same>`` (stages 1-4, blocks 3-4-6-3);
- ``*.running_mean``, ``*.running_var``, ``*.num_batches_tracked``: not used - MRC-Net's BatchNorm
  always normalises with batch statistics (the official ``BatchNorm2d(track_running_stats=False)``);
- ``fc.weight``, ``fc.bias``: the ImageNet classifier, not part of the backbone;
- ``conv1.weight`` (64, 3, 7, 7), ``bn1.weight``, ``bn1.bias``: the stem, by ``stem`` (:data:`STEM_RULES`):
  ``"official"``: not used - the official network takes a 4-channel input (BGR + box map), so it
  builds a new 7x7/2 stem (conv + BatchNorm) with PyTorch's default initialisation and never copies
  the 3-channel filters; the model's own fresh stem is kept. ``"imagenet"``: the filters are copied
  to the three colour channels in BGR order (the crops are BGR; torchvision's filters are RGB), the
  box-map channel's filters start at zero, and the stem's BatchNorm takes ``bn1.weight`` / ``bn1.bias``.

Every key is accounted for: a file with a key outside this layout, without one of its keys (but the
unused ``num_batches_tracked``, absent from files saved by older torch versions), or with a tensor of
another shape is refused with one line naming them (:class:`BackboneInitError`).
Only the ResNet-34 backbone (the ``paper`` preset) can take these weights.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from mrcnet.model.config import ModelConfig
from mrcnet.runtime.errors import error_line

log = logging.getLogger(__name__)

RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET34_CHANNELS = (64, 128, 256, 512)
RESNET34_STEM = 64
IMAGENET_CLASSES = 1000
STEM_RULES = ("official", "imagenet")
#: BatchNorm buffers of a torchvision file that MRC-Net has no use for (batch statistics always)
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
STEM_KEYS = ("conv1.weight", "bn1.weight", "bn1.bias")


class BackboneInitError(ValueError):
    """An ImageNet state dict that cannot initialise the backbone; the message names the file or preset."""


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet34_shapes() -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a torchvision ResNet-34 state dict (``conv1``, ``bn1``, ``layer1..4``, ``fc``)."""
    shapes = {"conv1.weight": (RESNET34_STEM, 3, 7, 7), **_bn_shapes("bn1", RESNET34_STEM)}
    cin = RESNET34_STEM
    for i, (c, n) in enumerate(zip(RESNET34_CHANNELS, RESNET34_BLOCKS), start=1):
        for b in range(n):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (c, cin if b == 0 else c, 3, 3)
            shapes.update(_bn_shapes(f"{p}.bn1", c))
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            shapes.update(_bn_shapes(f"{p}.bn2", c))
            if b == 0 and (i > 1 or cin != c):
                shapes[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                shapes.update(_bn_shapes(f"{p}.downsample.1", c))
        cin = c
    shapes["fc.weight"] = (IMAGENET_CLASSES, RESNET34_CHANNELS[-1])
    shapes["fc.bias"] = (IMAGENET_CLASSES,)
    return shapes


def _few(items: list[str], n: int = 8) -> str:
    """The first ``n`` items, comma-separated, and how many more (one line)."""
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_resnet34(cfg: ModelConfig) -> None:
    """A one-line :class:`BackboneInitError` unless the model preset's backbone is ResNet-34."""
    if (tuple(cfg.stage_blocks) != RESNET34_BLOCKS or tuple(cfg.stage_channels) != RESNET34_CHANNELS
            or cfg.stem_channels != RESNET34_STEM):
        raise BackboneInitError(
            f"preset {cfg.name!r}: its backbone (blocks {tuple(cfg.stage_blocks)}, widths "
            f"{tuple(cfg.stage_channels)}, stem {cfg.stem_channels}) is not ResNet-34; ImageNet ResNet-34 "
            "weights initialise only a ResNet-34 backbone (the 'paper' preset)")


def target_key(key: str) -> str | None:
    """The MRC-Net parameter a torchvision ResNet-34 key initialises (stages 1-4), None for the stem,
    the classifier and the running statistics."""
    parts = key.split(".")
    if not parts[0].startswith("layer") or parts[-1] in RUNNING_STATS:
        return None
    return ".".join(["backbone", parts[0], "0", *parts[1:]])


def read_imagenet_state(path) -> dict[str, torch.Tensor]:
    """The checked state dict of an ImageNet ResNet-34 file (torchvision layout): every key of
    :func:`torchvision_resnet34_shapes` present with its shape (``num_batches_tracked`` may be
    absent), no other key. One-line
    :class:`BackboneInitError` naming the file and the keys otherwise."""
    path = Path(path)
    if not path.is_file():
        raise BackboneInitError(f"{path}: file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle of anything but tensors, a damaged file: the loader's reason, one line
        raise BackboneInitError(f"{path}: not a readable state dict ({error_line(e, 200)})") from None
    return check_imagenet_state(sd, path)


def check_imagenet_state(sd, name="state dict") -> dict[str, torch.Tensor]:
    """``sd`` if it is a torchvision ResNet-34 state dict (:func:`read_imagenet_state`'s rules), else a
    one-line :class:`BackboneInitError` starting with ``name``."""
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneInitError(f"{name}: not a state dict of tensors (expected torchvision's "
                                "resnet34().state_dict() saved with torch.save)")
    expected = torchvision_resnet34_shapes()
    # num_batches_tracked may be absent (files saved before BatchNorm had it; unused here anyway)
    missing = [k for k in expected if k not in sd and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys: {_few(missing)}"] if missing else []) + (
            [f"unexpected keys: {_few(unexpected)}"] if unexpected else [])
        raise BackboneInitError(f"{name}: not a torchvision ResNet-34 state dict; " + "; ".join(parts))
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if wrong:
        raise BackboneInitError(f"{name}: mismatched shapes: {_few(wrong)}")
    return sd


@torch.no_grad()
def init_backbone_from_imagenet(model: nn.Module, source, stem: str = "official") -> dict:
    """Copy an ImageNet ResNet-34 (``source``: a file or a state dict in torchvision's layout) into
    ``model.backbone`` (an :class:`mrcnet.model.MRCNet` of a ResNet-34 preset); ``stem`` of
    :data:`STEM_RULES` (module docstring). Returns ``{"loaded": [MRC-Net names], "unused": {reason:
    [torchvision keys]}}`` - together every key of the file."""
    if stem not in STEM_RULES:
        raise ValueError(f"stem {stem!r} is not one of {STEM_RULES}")
    check_resnet34(model.cfg)
    sd = check_imagenet_state(source) if isinstance(source, dict) else read_imagenet_state(source)
    params = dict(model.named_parameters())
    loaded, unused = [], {"ImageNet classifier": [], "running statistics (batch statistics always)": [],
                          f"stem ({stem} rule: a fresh 4-channel stem)": []}
    for key, value in sd.items():
        name = target_key(key)
        if name is not None:
            params[name].copy_(value.to(params[name].dtype))
            loaded.append(name)
        elif key.startswith("fc."):
            unused["ImageNet classifier"].append(key)
        elif key.split(".")[-1] in RUNNING_STATS:
            unused["running statistics (batch statistics always)"].append(key)
        elif stem == "imagenet":
            loaded.extend(_copy_stem(model, key, value))
        else:
            unused[f"stem ({stem} rule: a fresh 4-channel stem)"].append(key)
    unused = {k: v for k, v in unused.items() if v}
    stages = [n for n in params if n.startswith(tuple(f"backbone.layer{i}." for i in range(1, 5)))]
    untouched = sorted(set(stages) - set(loaded))
    if untouched:  # the layouts disagree (a model change): never train from a half-initialised backbone
        raise BackboneInitError(f"backbone parameters without an ImageNet value: {', '.join(untouched[:8])}")
    log.info("backbone: %d tensors from ImageNet ResNet-34; unused: %s", len(loaded),
             "; ".join(f"{len(v)} {k}" for k, v in unused.items()) or "none")
    return {"loaded": loaded, "unused": unused}


def _copy_stem(model: nn.Module, key: str, value: torch.Tensor) -> list[str]:
    """The ``imagenet`` stem rule for one of :data:`STEM_KEYS`; returns the MRC-Net names written."""
    conv, norm = model.backbone.layer0[0], model.backbone.layer0[1]
    if key == "conv1.weight":
        w = torch.zeros_like(conv.weight)
        w[:, :3] = value.flip(1).to(w.dtype)  # RGB filters -> the BGR crop channels; box map: 0
        conv.weight.copy_(w)
        return ["backbone.layer0.0.weight"]
    target = {"bn1.weight": norm.weight, "bn1.bias": norm.bias}[key]
    target.copy_(value.to(target.dtype))
    return [f"backbone.layer0.1.{key.split('.')[-1]}"]

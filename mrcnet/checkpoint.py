"""Checkpoints: the official MRC-Net format and the project's own, into :class:`MRCNet`.

Official format (``tless.pth`` ...): ``{'network': state_dict, 'optimizer', 'scheduler',
'last_epoch'}`` with quirks (docs/MODEL.md §7):

- ``backbone.base_model.{4,5,6,7}.REST`` alias ``backbone.layer{1,2,3,4}.0.REST`` (the ResNet stages
  registered twice): loaded once through the ``layerN`` names, the alias checked equal and dropped;
- ``backbone.base_model.0.weight`` (a 3-channel stem) and ``backbone.base_model.1.*`` are unused by
  the official forward: dropped.

Every other key must match a parameter of the model by name and shape. Official checkpoints carry
no metadata: the preset is ``paper``, the number of objects is read from the per-object decoder,
the dataset (for the depth range and object ids) is the argument, or the only dataset preset with
that many objects. A checkpoint with the official trainer's decoder count for its dataset (LM-O:
15, ``DatasetPreset.official_decoders``) keeps the first ``n_objects`` decoders (the dataset's
objects in ``obj_ids`` order, as the official inference maps them) and drops the others, which
were never trained (:func:`keep_decoders`; said in one logged line and in ``meta['note']``).

Project format: ``{'network': state_dict, 'meta': {...}}`` (plus optional training state) with
``meta`` = ``format``, ``version``, ``preset``, ``config`` (the full :class:`ModelConfig`),
``n_obj``, ``dataset``, ``obj_ids``, ``depth_range``, ``bins``, ``fov_variant``
(``'inference'``: the official inference fov, or ``'training'``).

Both load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch

from mrcnet.geometry import BinTables
from mrcnet.model import MRCNet, ModelConfig, get_config
from mrcnet.runtime.errors import ParameterError, error_line
from mrcnet.runtime.formats.files import atomic_open
from mrcnet.runtime.geometry import TTA_GROUP
from mrcnet.runtime.preprocess import BOX_RULES, FOV_VARIANTS
from mrcnet.runtime.presets import DATASETS, get_dataset

log = logging.getLogger(__name__)

FORMAT = "mrcnet-edge"
VERSION = 1
#: official keys the model does not use (an unused 3-channel 7x7 stem and its BatchNorm)
DROPPED_PREFIXES = ("backbone.base_model.0.", "backbone.base_model.1.")
#: a per-object decoder tensor: its leading dimension is the number of objects
N_OBJ_KEY = "backbone.decoder.conv_last.weights"
#: the per-object tensors (weights and biases of the conditional convolutions): leading dim = objects
DECODER_PREFIX = "backbone.decoder."


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message is one line naming the key."""


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def official_key_map(key: str) -> tuple[str | None, str]:
    """Official state-dict key -> ``(model key or None, reason)``.

    reason: ``'load'`` (same name), ``'alias'`` (``backbone.base_model.{4..7}.*``: the model key is
    the ``backbone.layer{1..4}.0.*`` it aliases) or ``'unused'`` (dropped stem)."""
    if key.startswith(DROPPED_PREFIXES):
        return None, "unused"
    if key.startswith("backbone.base_model."):
        parts = key.split(".")
        idx = int(parts[2]) if parts[2].isdigit() else -1
        if 4 <= idx <= 7:
            return f"backbone.layer{idx - 3}.0." + ".".join(parts[3:]), "alias"
        return None, "unknown"
    return key, "load"


def convert_official_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``network`` state dict -> model state dict (aliases folded, unused stem dropped).

    An alias present without its ``layerN`` twin is loaded through it; one that differs from its
    twin is an error. Unknown ``backbone.base_model.*`` keys are an error."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, tuple[str, torch.Tensor]] = {}
    for k, v in sd.items():
        target, why = official_key_map(k)
        if why == "load":
            out[k] = v
        elif why == "alias":
            aliases[target] = (k, v)  # type: ignore[index]
        elif why == "unknown":
            raise CheckpointError(f"unexpected official key {k!r} with shape {_shape(v)}: not part of MRC-Net")
    for target, (k, v) in aliases.items():
        if target not in out:
            out[target] = v
            continue
        w = out[target]
        if _shape(v) != _shape(w):
            raise CheckpointError(f"alias {k!r} has shape {_shape(v)} but {target!r} has shape {_shape(w)}")
        same = v.device.type != "meta" and (v.data_ptr() == w.data_ptr() or torch.equal(v, w))
        if v.device.type != "meta" and not same:
            raise CheckpointError(f"alias {k!r} differs from {target!r} (shape {_shape(v)}): not an official checkpoint")
    return out


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` (one line, key and both shapes) unless ``sd`` has exactly
    the model's keys with the model's shapes."""
    ours = model.state_dict()
    for k, v in sd.items():
        if k not in ours:
            raise CheckpointError(f"checkpoint key {k!r} (shape {_shape(v)}) does not exist in the model")
        if _shape(v) != _shape(ours[k]):
            raise CheckpointError(
                f"checkpoint key {k!r} has shape {_shape(v)} but the model expects {_shape(ours[k])}"
            )
    for k, v in ours.items():
        if k not in sd:
            raise CheckpointError(f"checkpoint lacks key {k!r} (model shape {_shape(v)})")


def keep_decoders(sd: Mapping[str, torch.Tensor], n_keep: int) -> dict[str, torch.Tensor]:
    """``sd`` with the per-object decoder tensors (``backbone.decoder.*``, leading dimension = number
    of objects) cut to their first ``n_keep`` objects; every other tensor as it is."""
    return {k: (v[:n_keep] if k.startswith(DECODER_PREFIX) else v) for k, v in sd.items()}


def official_decoder_dataset(dataset, n_obj: int):
    """The dataset preset whose official trainer builds ``n_obj`` decoders for fewer objects (LM-O:
    15 for 8), or None: ``dataset`` when given (None unless its ``official_decoders`` is ``n_obj``),
    else the only preset with that official decoder count."""
    if dataset is not None:
        p = get_dataset(dataset)
        return p if p.official_decoders == n_obj and p.n_objects != n_obj else None
    matches = [p for p in DATASETS.values() if p.official_decoders == n_obj and p.n_objects != n_obj]
    return matches[0] if len(matches) == 1 else None


def _resolve_dataset(dataset, n_obj: int, meta: Mapping, obj_ids=None
                     ) -> tuple[str | None, tuple[int, ...], tuple[float, float]]:
    """(dataset name, object ids, depth range) from the argument, the metadata, or the object count.

    ``obj_ids`` (the BOP ids of the checkpoint's decoders, in order) replaces the dataset's or the
    metadata's list: a checkpoint with fewer objects than its dataset preset."""
    if obj_ids is not None:
        obj_ids = tuple(int(i) for i in obj_ids)
        if len(obj_ids) != n_obj:
            raise CheckpointError(f"checkpoint holds {n_obj} objects, obj_ids names {len(obj_ids)}")
    if dataset is None and "depth_range" in meta and "obj_ids" in meta:
        ids, depth_range = obj_ids or tuple(meta["obj_ids"]), tuple(meta["depth_range"])
        if len(ids) != n_obj:
            raise CheckpointError(
                f"metadata lists {len(ids)} object ids but checkpoint key {N_OBJ_KEY!r} has {n_obj} (leading dimension)"
            )
        return meta.get("dataset"), ids, depth_range  # type: ignore[return-value]
    name = dataset if dataset is not None else meta.get("dataset")
    if name is None:
        matches = [p.name for p in DATASETS.values() if p.n_objects == n_obj]
        if len(matches) != 1 or obj_ids is not None:
            raise CheckpointError(
                f"cannot tell the dataset of a checkpoint with {n_obj} objects ({N_OBJ_KEY}); pass dataset="
            )
        name = matches[0]
    preset = get_dataset(name)
    if obj_ids is not None:
        missing = [i for i in obj_ids if i not in preset.obj_ids]
        if missing:
            raise CheckpointError(f"obj_ids {missing} are not objects of dataset {preset.name!r} "
                                  f"({list(preset.obj_ids)})")
        return preset.name, obj_ids, preset.depth_range  # type: ignore[return-value]
    if len(preset.obj_ids) != n_obj:
        raise CheckpointError(
            f"dataset {preset.name!r} has {len(preset.obj_ids)} objects but checkpoint key {N_OBJ_KEY!r} has "
            f"{n_obj} (leading dimension)"
        )
    return preset.name, preset.obj_ids, preset.depth_range  # type: ignore[return-value]


def model_from_state_dict(sd: Mapping[str, torch.Tensor], depth_range, cfg="paper", bn_group: int = TTA_GROUP):
    """A model (eval mode) built around the tensors of a model-format state dict, without a random
    initialisation (built on the meta device, then the tensors assigned); the number of objects
    is read from ``sd``. Raises :class:`CheckpointError` on any key or shape mismatch."""
    cfg = get_config(cfg)
    if N_OBJ_KEY not in sd:
        raise CheckpointError(f"checkpoint lacks key {N_OBJ_KEY!r} (the per-object decoder)")
    n_obj = int(sd[N_OBJ_KEY].shape[0])
    with torch.device("meta"):
        model = MRCNet(n_obj, depth_range, cfg, bn_group=bn_group)
    model.tables = BinTables(cfg.bins, depth_range)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


class CheckpointFileError(CheckpointError, ParameterError):
    """A checkpoint file that cannot be read at all (missing, empty, truncated, not PyTorch):
    ``param`` is the parameter that named it (``checkpoint``), ``value`` the path."""

    __init__ = ParameterError.__init__
    __reduce__ = ParameterError.__reduce__


def read_checkpoint_file(path: "str | os.PathLike", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing, empty, truncated, text or
    unsafe (arbitrary pickle) file raises :class:`CheckpointError` with one line naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointFileError(what, "file not found", path)
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(what, "empty file (0 bytes)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        text = str(e)
        why = error_line(e, 200)
        if "weights_only" in text or "Unsupported global" in text:
            why = "holds Python objects other than tensors (refused: weights_only loading)"
        raise CheckpointFileError(what, f"not a readable PyTorch checkpoint ({why})", path) from None


def load_checkpoint(path: "str | os.PathLike", dataset: str | None = None, preset=None, device="cpu",
                    bn_group: int = TTA_GROUP, obj_ids=None):
    """Load an official or project checkpoint into a new :class:`mrcnet.model.MRCNet` (eval mode).

    path: ``.pth`` file; dataset: dataset preset name (depth range, object ids) - required for an
    official checkpoint unless its object count identifies one; preset: model preset name or
    :class:`ModelConfig` (default: the checkpoint's metadata, else ``paper``); obj_ids: the BOP ids
    of the checkpoint's per-object decoders, in order (one per object) - for a checkpoint holding
    fewer objects than its dataset preset (they must be objects of that preset).
    The model's ``meta`` attribute holds the resolved metadata (``dataset``, ``obj_ids``,
    ``depth_range``, ``preset``, ``fov_variant``, ``box_rule`` (:func:`checkpoint_box_rule`),
    ``source`` = ``'official'`` | ``'project'``).
    Raises :class:`CheckpointError` on any mismatch.
    """
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{os.fspath(path)}: not a checkpoint dict (got {type(ckpt).__name__})")
    return model_from_checkpoint(ckpt, dataset=dataset, preset=preset, device=device, bn_group=bn_group,
                                 obj_ids=obj_ids, name=os.fspath(path))


def model_from_checkpoint(ckpt: Mapping, dataset: str | None = None, preset=None, device="cpu",
                          bn_group: int = 4, obj_ids=None, name: str = "checkpoint"):
    """:func:`load_checkpoint` on a checkpoint dict already read (``{'network': state_dict, ...}``
    or a bare state dict); ``name`` is used in messages. Meta-device tensors give a meta-device
    model (``device='meta'``): every key and shape checked without the memory."""
    if "network" in ckpt:
        sd = ckpt["network"]
    elif N_OBJ_KEY in ckpt:
        sd = ckpt  # a bare state dict
    else:
        raise CheckpointError(f"{name}: no 'network' entry (keys: {sorted(ckpt)[:8]})")
    meta = dict(ckpt.get("meta") or {})
    source = "project" if meta.get("format") == FORMAT else "official"
    if source == "official":
        sd = convert_official_state_dict(sd)
    if N_OBJ_KEY not in sd:
        raise CheckpointError(f"checkpoint lacks key {N_OBJ_KEY!r} (the per-object decoder)")
    n_obj = int(sd[N_OBJ_KEY].shape[0])
    note = None
    wide = official_decoder_dataset(dataset, n_obj) if source == "official" and obj_ids is None else None
    if wide is not None:
        sd = keep_decoders(sd, wide.n_objects)
        note = (f"{name}: {n_obj} decoders (the official {wide.name} trainer's count); decoders 0-"
                f"{wide.n_objects - 1} are objects {list(wide.obj_ids)}, decoders {wide.n_objects}-{n_obj - 1} "
                f"(never trained) dropped")
        log.warning("%s", note)
        dataset, n_obj = wide.name, wide.n_objects

    if preset is not None:
        cfg = get_config(preset)
    elif "config" in meta:
        cfg = ModelConfig.from_dict(meta["config"])
    else:
        cfg = get_config(meta.get("preset", "paper"))
    ds_name, obj_ids, depth_range = _resolve_dataset(dataset, n_obj, meta, obj_ids)

    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # float16 checkpoints
    model = model_from_state_dict(sd, depth_range, cfg, bn_group).to(device)
    model.meta = {
        "source": source,
        "preset": cfg.name,
        "dataset": ds_name,
        "obj_ids": list(obj_ids),
        "depth_range": list(depth_range),
        "fov_variant": normalise_fov_variant(meta.get("fov_variant", "inference")),
        "box_rule": checkpoint_box_rule(meta, source),
        "n_obj": n_obj,
    }
    if note:
        model.meta["note"] = note
    return model


def checkpoint_box_rule(meta: Mapping, source: str) -> str:
    """How detections become crop squares for a checkpoint (``mrcnet.runtime.preprocess.BOX_RULES``):
    its metadata's ``box_rule`` if any, else ``'official'`` for an official checkpoint (bit-parity
    with the official results needs the official truncation and caps) and ``'clip'`` otherwise."""
    rule = str(meta.get("box_rule") or ("official" if source == "official" else "clip"))
    if rule not in BOX_RULES:
        raise CheckpointError(f"unknown box rule {rule!r}; expected one of {BOX_RULES}")
    return rule


def save_checkpoint(path: "str | os.PathLike", model, dataset: str | None = None, obj_ids=None,
                    depth_range=None, fov_variant: str | None = None, half: bool = False, **extra) -> dict:
    """Write ``{'network': state_dict, 'meta': {...}, **extra}`` (project format), atomically
    (a temporary file in the same folder, then renamed). ``half``: store floating tensors as
    float16 (half the size; :func:`load_checkpoint` returns float32 either way).

    Metadata defaults come from ``model.meta`` (set by :func:`load_checkpoint`) and ``model.cfg``;
    ``extra`` holds optional training state (``optimizer``, ``epoch``, ...), which must be
    ``weights_only``-loadable (tensors, numbers, strings, containers). Returns the meta dict.
    """
    old = dict(getattr(model, "meta", {}) or {})
    ds = dataset if dataset is not None else old.get("dataset")
    if obj_ids is None:
        obj_ids = old.get("obj_ids") or (list(get_dataset(ds).obj_ids) if ds else list(range(1, model.n_obj + 1)))
    if depth_range is None:
        depth_range = old.get("depth_range") or list(model.tables.depth_range)
    cfg = model.cfg
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "preset": cfg.name,
        "config": cfg.to_dict(),
        "n_obj": int(model.n_obj),
        "dataset": ds,
        "obj_ids": [int(i) for i in obj_ids],
        "depth_range": [float(x) for x in depth_range],
        "bins": cfg.to_dict()["bins"],
        "fov_variant": normalise_fov_variant(fov_variant or old.get("fov_variant", "inference")),
        "box_rule": checkpoint_box_rule(old, "project"),
    }
    if len(meta["obj_ids"]) != model.n_obj:
        raise CheckpointError(f"{len(meta['obj_ids'])} object ids for a model with {model.n_obj} objects")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    with atomic_open(path, "wb") as f:
        torch.save({"network": sd, "meta": meta, **extra}, f)
    return meta


def normalise_fov_variant(name: str) -> str:
    """The fov variant in the runtime's vocabulary (``mrcnet.runtime.preprocess.FOV_VARIANTS``):
    ``'inference'`` (the official inference, offsets from the box centre) or ``'training'``;
    ``'official'`` (older project checkpoints) means ``'inference'``."""
    name = {"official": "inference"}.get(str(name), str(name))
    if name not in FOV_VARIANTS:
        raise CheckpointError(f"unknown fov variant {name!r}; expected one of {FOV_VARIANTS}")
    return name


def slim_checkpoint(src: "str | os.PathLike", dst: "str | os.PathLike", half: bool = True) -> dict:
    """Copy a project checkpoint without its training state (optimizer, scheduler, RNG), floating
    tensors as float16 when ``half`` (how the demo model is shipped). Returns the meta dict."""
    model = load_checkpoint(src)
    return save_checkpoint(dst, model, half=half)

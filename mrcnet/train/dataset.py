"""Training samples as a torch Dataset (docs/MODEL.md §5): object crops of BOP splits with the official targets.

The crop and augmentation rules (zoom-in, in-plane rotation, colour, background rule, box map, mask
target) are torch-free and live in :mod:`mrcnet.data.samples`; this module applies them and adds
the targets.

Targets (:mod:`mrcnet.train.targets`): soft rotation labels over the bins (symmetry-aware; cached
per (object, rotated GT rotation): in memory and, with ``label_cache_dir``, on disk under a folder
named by a digest of the model points, the symmetry set and the diameter, a file per (object,
digest of the rotation), so labels are never read for other poses or meshes), soft depth and cell
labels, the crop/4 visible mask, model points sampled on the surface (mm), the symmetry group
(``sym_R``, ``sym_t``, sampled as the official label code does,
:func:`mrcnet.train.targets.symmetry_tensors`) and the diameter. :func:`collate_samples` pads
vertices and symmetries of different objects with masks.

Several splits in one run (``"train_pbr,train_primesense"``, :func:`training_samples`): one
:class:`TrainingSamples` per split (each with its own images, cameras, background rule (PBR or
real) and models folder: the dataset preset's for the split unless ``models`` overrides it), joined
by :class:`MultiSplitSamples`.

Randomness is a pure function of ``(seed, epoch, index)`` (and the split's position when there are
several): the same sample comes out in any worker, process or resumed run (``set_epoch`` before
each epoch).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mrcnet.data import bop
from mrcnet.data.backgrounds import FolderBackgrounds
from mrcnet.data.samples import (BG_PROB, BG_RULES, BOX_MAP_MODES, COLOR_AUG_PROB, MIN_BOX_PX, MIN_VISIB_FRACT,
                                 N_ROT, background_applies, box_location, centred_box, clean_mask,
                                 color_augmenter, crop_at, dynamic_zoom_in, find_split, is_pbr_split)
from mrcnet.runtime.datasets import render_models_dir
from mrcnet.runtime.geometry import BinSpec, translation_to_persp, tta_rotations
from mrcnet.runtime.preprocess import CROP_SIZE, PAD_SCALE, box_map, check_camera, check_image, crop_fov
from mrcnet.runtime.render import load_mesh

from . import targets as T

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------- objects
@dataclass
class ObjectData:
    """Per-object loss tensors: vertices (V, 3) f32 mm (model points spread uniformly over the
    surface, :func:`mrcnet.train.targets.surface_points`), sym_R (S, 3, 3), sym_t (S, 3) mm
    (:func:`mrcnet.train.targets.symmetry_tensors`), diameter mm."""

    vertices: torch.Tensor
    sym_R: torch.Tensor
    sym_t: torch.Tensor
    diameter: float


def load_object_data(models_dir, infos: dict, obj_ids: Sequence[int], n_vertices: int = 1000,
                     symmetry_sampling: str = "official") -> dict[int, ObjectData]:
    """``{obj_id: ObjectData}`` from ``models_dir/obj_XXXXXX.ply`` and the models_info entries
    (symmetries sampled by :func:`mrcnet.train.targets.symmetry_tensors`)."""
    out = {}
    for oid in obj_ids:
        path = Path(models_dir) / f"obj_{int(oid):06d}.ply"
        if not path.is_file():
            raise bop.BopFormatError(f"{path}: model file not found (object {oid})")
        mesh = load_mesh(path)
        R, t = T.symmetry_tensors(infos[oid], sampling=symmetry_sampling)
        pts = T.surface_points(mesh.vertices, mesh.faces, n_vertices, seed=int(oid))
        out[int(oid)] = ObjectData(torch.from_numpy(pts),
                                   torch.from_numpy(R), torch.from_numpy(t), float(infos[oid].diameter))
    return out



# ------------------------------------------------------------------------------------ splits
def split_names(split: str | Sequence[str] | None) -> list[str] | None:
    """Split folder names from ``"a,b"`` or a list (order kept); None stays None (the default
    split). A one-line ValueError for an empty or repeated name."""
    if split is None:
        return None
    names = [s.strip() for s in (split.split(",") if isinstance(split, str) else split)]
    if not names or any(not n for n in names):
        raise ValueError(f"split: expected comma-separated split folder names, got {split!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"split: {', '.join(dup)} given more than once in {split!r}")
    return names


# ------------------------------------------------------------------------------------ dataset
class TrainingSamples(Dataset):
    """Object crops and targets from a BOP split.

    root: dataset folder (``models/`` + split folders); split: split folder name (default
    :func:`find_split`); obj_ids: the model's objects, in class-index order (default: all of
    models_info); bins, depth_range: the output discretisation; augment: training (zoom-in,
    rotation, colour, background) or validation crops; seed: randomness; n_vertices: model points
    (on the surface) for the labels and losses; label_cache: entries of the rotation-label LRU cache (0 = off);
    backgrounds: optional folder of background images (or a :class:`FolderBackgrounds`; default:
    images of the split); bg_prob,
    bg_rule (:data:`BG_RULES`), box_map_mode (:data:`BOX_MAP_MODES`), symmetry_sampling
    (:data:`mrcnet.train.targets.SYMMETRY_SAMPLINGS`): see :mod:`mrcnet.data.samples`; models: a
    models folder for every split (a name under root, or a path), else ``dataset``'s preset folder
    for the split (:func:`mrcnet.runtime.datasets.render_models_dir`: T-LESS ``models_cad``), else
    ``models``; stream: the split's position when several are joined (a separate random stream), None alone.

    ``__getitem__`` returns a dict of tensors (N = one sample):
    ``crops`` (4, S, S) f32 BGR/255 + box map; ``obj_index`` () i64 (0-based); ``obj_id`` () i64;
    ``fov`` (3,) f32 (training variant); ``K_roi`` (3, 3) f32; ``k`` () i64 in-plane rotation index;
    ``R`` (3, 3) f32 and ``t`` (3,) f32 mm: the pose in the rotated crop frame; ``persp`` (3,) f32
    (dx, dy, d); ``rot_labels`` (n_rot,), ``depth_labels`` (n_depth,), ``cell_labels`` (n_cells^2,) f32;
    ``mask`` (S/4, S/4) f32 {0, 1}; ``vertices`` (V, 3) mm, ``sym_R`` (S, 3, 3), ``sym_t`` (S, 3) mm,
    ``diameter`` () f32 mm; ``key`` (3,) i64 (scene_id, im_id, gt_id).
    """

    def __init__(self, root, bins: BinSpec, depth_range: tuple[float, float], split: str | None = None,
                 obj_ids: Sequence[int] | None = None, augment: bool = True, seed: int = 0,
                 n_vertices: int = 1000, label_cache: int = 4096, label_cache_dir=None, backgrounds=None,
                 bg_prob: float = BG_PROB, color_prob: float = COLOR_AUG_PROB, size: int = CROP_SIZE,
                 bg_rule: str = "official", box_map_mode: str = "centred", symmetry_sampling: str = "official",
                 models=None, dataset: str | None = None, stream: int | None = None):
        if bg_rule not in BG_RULES:
            raise ValueError(f"bg_rule {bg_rule!r} is not one of {BG_RULES}")
        if box_map_mode not in BOX_MAP_MODES:
            raise ValueError(f"box_map_mode {box_map_mode!r} is not one of {BOX_MAP_MODES}")
        if not 0.0 <= float(bg_prob) <= 1.0:
            raise ValueError(f"bg_prob {bg_prob} is not a probability in [0, 1]")
        # the backgrounds folder is checked before the (slow) indexing: fail fast
        self._backgrounds = (backgrounds if isinstance(backgrounds, FolderBackgrounds)
                             else FolderBackgrounds(backgrounds) if backgrounds else None)
        self.root = Path(root)
        self.split = split or find_split(self.root)
        self.stream = None if stream is None else int(stream)
        # models: the split's render folder of the dataset preset (T-LESS models_cad), or the override
        self.ds = bop.BopDataset(self.root, self.split,
                                 models=str(render_models_dir(self.root, dataset, self.split, models).resolve()))
        self.obj_ids = [int(o) for o in (obj_ids if obj_ids is not None else self.ds.obj_ids)]
        missing = [o for o in self.obj_ids if o not in self.ds.models_info]
        if missing:
            raise bop.BopFormatError(f"{self.ds.models_dir / 'models_info.json'}: no object(s) {missing}")
        self.cls = {o: i for i, o in enumerate(self.obj_ids)}
        self.bins, self.depth_range = bins, (float(depth_range[0]), float(depth_range[1]))
        self.augment, self.seed, self.size = bool(augment), int(seed), int(size)
        self.bg_prob, self.color_prob = float(bg_prob), float(color_prob)
        self.bg_rule, self.box_map_mode = bg_rule, box_map_mode
        self.epoch = 0
        self.objects = load_object_data(self.ds.models_dir, self.ds.models_info, self.obj_ids, n_vertices,
                                        symmetry_sampling)
        self.items: list[tuple[tuple[int, int], int]] = []  # ((scene_id, im_id), gt_id)
        self.same_object: dict[tuple[int, int, int], int] = {}  # (scene, im, obj) -> usable instances
        skipped = 0
        for rec in self.ds:
            for inst in rec.instances:
                if inst.obj_id not in self.cls:
                    continue
                info = inst.info or {}
                box = info.get("bbox_visib")
                if box is None:
                    raise bop.BopFormatError(f"{rec.scene_dir / 'scene_gt_info.json'}: image {rec.im_id} "
                                             f"instance {inst.gt_id}: missing key 'bbox_visib'")
                if box[2] <= MIN_BOX_PX or box[3] <= MIN_BOX_PX or info.get("visib_fract", 1.0) < MIN_VISIB_FRACT:
                    skipped += 1
                    continue
                self.items.append(((rec.scene_id, rec.im_id), inst.gt_id))
                key = (rec.scene_id, rec.im_id, inst.obj_id)
                self.same_object[key] = self.same_object.get(key, 0) + 1
        if not self.items:
            raise bop.BopFormatError(f"{self.ds.split_dir}: no usable instance of objects {self.obj_ids}")
        self.n_skipped = skipped
        self._aug = color_augmenter(self.color_prob) if self.augment and self.color_prob > 0 else None
        self.is_pbr = is_pbr_split(self.split)
        self._label_cache: OrderedDict = OrderedDict()
        self.label_cache_size = int(label_cache)
        self.label_cache_dir = None
        if label_cache_dir is not None:
            # the labels depend on the model points and symmetries: a digest keeps caches of other
            # meshes (a re-generated dataset, another point sampling) from being read
            h = hashlib.sha1()
            for oid in self.obj_ids:
                od = self.objects[oid]
                h.update(np.int64(oid).tobytes() + od.vertices.numpy().tobytes() + od.sym_R.numpy().tobytes()
                         + od.sym_t.numpy().tobytes() + np.float32(od.diameter).tobytes())
            tag = f"{self.split}_nside{bins.n_side}_v{n_vertices}_{h.hexdigest()[:10]}"
            self.label_cache_dir = Path(label_cache_dir) / tag
            self.label_cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def models_dir(self) -> Path:
        """The models folder of the split (meshes for the labels and the stage-2 renders)."""
        return self.ds.models_dir

    @property
    def counts(self) -> dict[str, int]:
        """``{split: usable instances}``."""
        return {self.split: len(self.items)}

    def split_index(self, index: int) -> tuple[int, int]:
        """``index`` -> (epoch, item): indices >= len encode the epoch (``epoch * len + item``), so
        persistent DataLoader workers follow the epoch without ``set_epoch``."""
        index = int(index)
        if index >= len(self.items):
            return index // len(self.items), index % len(self.items)
        return self.epoch, index

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of an epoch (call before creating the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    # -------------------------------------------------------------------------------------
    def rotation_labels(self, obj_id: int, R: np.ndarray) -> torch.Tensor:
        """Soft rotation labels (n_rot,) f32 of rotation R (3, 3) of object obj_id; cached in an
        in-memory LRU (per worker) and, with ``label_cache_dir``, in
        ``<dir>/obj<id>_<digest of R as float32>.npy`` (float16, written atomically): the key is
        what the labels depend on (the folder's name covers the meshes, symmetries and bins)."""
        Rb = np.ascontiguousarray(R, np.float32).tobytes()
        key = (obj_id, Rb)
        hit = self._label_cache.get(key)
        if hit is not None:
            self._label_cache.move_to_end(key)
            return hit
        path = (self.label_cache_dir / f"obj{int(obj_id)}_{hashlib.sha1(Rb).hexdigest()[:24]}.npy"
                if self.label_cache_dir else None)
        lab = None
        if path is not None and path.is_file():
            try:
                arr = np.load(path)
                if arr.shape == (self.bins.n_rot,):
                    lab = torch.from_numpy(arr.astype(np.float32))
            except (OSError, ValueError):
                lab = None
        if lab is None:
            od = self.objects[obj_id]
            lab = T.rotation_labels(torch.from_numpy(np.asarray(R, np.float32)), od.vertices, od.sym_R, od.sym_t,
                                    od.diameter, self.bins.n_side)
            if path is not None:
                lab = lab.half().float()  # what a later read gives: the same labels either way
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    np.save(f, lab.numpy().astype(np.float16))
                os.replace(tmp, path)
        if self.label_cache_size > 0:
            self._label_cache[key] = lab
            if len(self._label_cache) > self.label_cache_size:
                self._label_cache.popitem(last=False)
        return lab

    def background_applies(self, scene_id: int, im_id: int, obj_id: int) -> bool:
        """Whether the background rule lets this instance get a new background (before ``bg_prob``)."""
        return background_applies(self.bg_rule, self.is_pbr, self.same_object.get((scene_id, im_id, obj_id), 0))

    def _background(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """A (H, W, 3) uint8 BGR background for a whole image: a random window of an image of the
        ``backgrounds`` folder, else of the split."""
        if self._backgrounds is None:
            keys = sorted({it[0] for it in self.items})
            self._backgrounds = FolderBackgrounds(self.ds.split_dir,
                                                  files=[self.ds.image(*k).image_path for k in keys])
        return self._backgrounds(rng, width, height)

    def __getitem__(self, index: int) -> dict:
        return self.sample(*self.split_index(index))

    def sample(self, epoch: int, index: int) -> dict:
        """Item ``index`` (< len) with the randomness of ``epoch``: the dict of ``__getitem__``."""
        (scene_id, im_id), gt_id = self.items[index]
        key = [self.seed, epoch, index] if self.stream is None else [self.seed, epoch, index, self.stream]
        rng = np.random.default_rng(key)
        rec = self.ds.image(scene_id, im_id)
        inst = rec.instances[gt_id]
        image = rec.load_image("bgr")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, 2)
        if image.dtype != np.uint8:
            image = np.clip(np.round(check_image(image)), 0, 255).astype(np.uint8)
        K = check_camera(rec.K, f"{rec.scene_dir / 'scene_camera.json'} image {im_id} cam_K")
        mask_full = clean_mask(rec.load_mask(gt_id, visib=True))
        H, W = image.shape[:2]
        x, y, w, h = inst.info["bbox_visib"]
        box = np.array([x, y, x + w, y + h], np.float64)

        if self.augment:
            center, side = dynamic_zoom_in(box, rng, max_side=max(H, W))
            k = int(rng.integers(N_ROT))
            if self._aug is not None:  # the whole image, before cropping; dropped pixels leave the mask
                self._aug.set_random_seed(int(rng.integers(2**31)))
                res = self._aug(image=image, mask=mask_full)
                image, mask_full = res["image"], res["mask"]
            if self.background_applies(scene_id, im_id, inst.obj_id) and rng.random() < self.bg_prob:
                image = np.where(mask_full[..., None] > 0, image, self._background(rng, W, H))
        else:
            center, side = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]), PAD_SCALE * max(w, h)
            k = 0
        crop, K_roi, M, c_rot = crop_at(image, K, center, side, k, N_ROT, self.size)
        ms = self.size // T.MASK_STRIDE  # the mask goes straight to the network's 1/4 map
        mask64 = crop_at(mask_full.astype(np.float32), K, center, side, k, N_ROT, ms)[0] > 0.5

        box_loc = box_location(centred_box(box, center) if self.box_map_mode == "centred" else box,
                               center, side, k, N_ROT)
        crops = np.empty((4, self.size, self.size), np.float32)
        crops[:3] = np.moveaxis(crop, 2, 0).astype(np.float32) / 255.0
        crops[3] = box_map(box_loc[None], self.size)[0]
        fov = crop_fov(K, center, c_rot, side, "training")

        Rz = tta_rotations(N_ROT)[k]
        R_k = Rz @ inst.R
        t_k = Rz @ inst.t
        dxy, d = translation_to_persp(t_k, K_roi, self.size)
        od = self.objects[inst.obj_id]
        R_t = torch.from_numpy(R_k.astype(np.float32))
        dxy_t = torch.from_numpy(dxy.astype(np.float32))
        d_t = torch.tensor(float(d), dtype=torch.float32)
        return {
            "crops": torch.from_numpy(crops),
            "obj_index": torch.tensor(self.cls[inst.obj_id], dtype=torch.int64),
            "obj_id": torch.tensor(inst.obj_id, dtype=torch.int64),
            "fov": torch.from_numpy(fov.astype(np.float32)),
            "K_roi": torch.from_numpy(K_roi.astype(np.float32)),
            "k": torch.tensor(k, dtype=torch.int64),
            "R": R_t,
            "t": torch.from_numpy(t_k.astype(np.float32)),
            "persp": torch.cat([dxy_t, d_t[None]]),
            "rot_labels": self.rotation_labels(inst.obj_id, R_k),
            "depth_labels": T.depth_labels(d_t, self.bins, self.depth_range),
            "cell_labels": T.cell_labels(dxy_t, self.bins),
            "mask": torch.from_numpy(mask64.astype(np.float32)),
            "vertices": od.vertices,
            "sym_R": od.sym_R,
            "sym_t": od.sym_t,
            "diameter": torch.tensor(od.diameter, dtype=torch.float32),
            "key": torch.tensor([scene_id, im_id, gt_id], dtype=torch.int64),
        }


class MultiSplitSamples(Dataset):
    """Several :class:`TrainingSamples` of one dataset (one per split) as one Dataset: index ``i``
    is item ``i - offset`` of the part holding it, in the order given; ``__getitem__`` returns the
    parts' dict. The parts must train the same objects in the same class order; labels, meshes and
    backgrounds are each part's own (a split may use another models folder).
    Indices >= len encode the epoch as in :meth:`TrainingSamples.split_index`."""

    def __init__(self, parts: Sequence[TrainingSamples]):
        parts = list(parts)
        if not parts:
            raise ValueError("MultiSplitSamples: no splits")
        for p in parts[1:]:
            if p.obj_ids != parts[0].obj_ids:
                raise ValueError(f"split {p.split}: objects {p.obj_ids} differ from split {parts[0].split}'s "
                                 f"{parts[0].obj_ids}")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.epoch = 0

    # what the trainer reads of a dataset, from the first split
    root = property(lambda self: self.parts[0].root)
    obj_ids = property(lambda self: self.parts[0].obj_ids)
    cls = property(lambda self: self.parts[0].cls)
    objects = property(lambda self: self.parts[0].objects)
    models_dir = property(lambda self: self.parts[0].models_dir,
                          doc="The first split's models folder (the stage-2 renders' meshes).")

    @property
    def split(self) -> str:
        return ",".join(p.split for p in self.parts)

    @property
    def counts(self) -> dict[str, int]:
        """``{split: usable instances}`` in the order given."""
        return {p.split: len(p) for p in self.parts}

    @property
    def n_skipped(self) -> int:
        return sum(p.n_skipped for p in self.parts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for p in self.parts:
            p.set_epoch(epoch)

    def locate(self, index: int) -> tuple[int, int, int]:
        """``index`` -> (epoch, part, item of the part)."""
        index, n = int(index), len(self)
        epoch, item = (index // n, index % n) if index >= n else (self.epoch, index)
        part = int(np.searchsorted(self.offsets, item, side="right")) - 1
        return epoch, part, item - int(self.offsets[part])

    def __getitem__(self, index: int) -> dict:
        epoch, part, item = self.locate(index)
        return self.parts[part].sample(epoch, item)


def training_samples(root, bins: BinSpec, depth_range: tuple[float, float],
                     split: str | Sequence[str] | None = None, **kwargs) -> TrainingSamples | MultiSplitSamples:
    """The training Dataset of one split or several (``"train_pbr,train_primesense"`` or a list):
    a :class:`TrainingSamples`, or a :class:`MultiSplitSamples` of one per split (each its own
    random stream); ``kwargs`` go to every :class:`TrainingSamples`."""
    names = split_names(split)
    if names is None or len(names) == 1:
        return TrainingSamples(root, bins, depth_range, split=names[0] if names else None, **kwargs)
    if kwargs.get("backgrounds") and not isinstance(kwargs["backgrounds"], FolderBackgrounds):
        kwargs["backgrounds"] = FolderBackgrounds(kwargs["backgrounds"])  # one folder scan for all splits
    return MultiSplitSamples([TrainingSamples(root, bins, depth_range, split=name, stream=i, **kwargs)
                              for i, name in enumerate(names)])


PADDED = {"vertices": "vertices_mask", "sym_R": "sym_mask", "sym_t": None}


def collate_samples(samples: list[dict]) -> dict:
    """Stack samples; ``vertices`` (B, Vmax, 3), ``sym_R`` (B, Smax, 3, 3) (padded with identity),
    ``sym_t`` (B, Smax, 3) are padded, with ``vertices_mask`` (B, Vmax) and ``sym_mask`` (B, Smax) bool."""
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key not in PADDED:
            out[key] = torch.stack(vals)
            continue
        n = max(v.shape[0] for v in vals)
        pad = torch.zeros((len(vals), n) + tuple(vals[0].shape[1:]), dtype=vals[0].dtype)
        if key == "sym_R":
            pad[:] = torch.eye(3, dtype=vals[0].dtype)
        valid = torch.zeros(len(vals), n, dtype=torch.bool)
        for i, v in enumerate(vals):
            pad[i, : v.shape[0]] = v
            valid[i, : v.shape[0]] = True
        out[key] = pad
        if PADDED[key]:
            out[PADDED[key]] = valid
    return out

"""Training samples (docs/MODEL.md §5): a torch Dataset of object crops with the official targets.

One sample = one annotated instance of a BOP split (box = ``bbox_visib``; instances with box width
or height <= 10 px or ``visib_fract`` < 0.1 are skipped), cropped the MODEL.md §1 way with

- dynamic zoom-in (training): box centre shifted by up to +-25 % of the box w / h, side
  ``1.5 * max(w, h) * U(0.75, 1.25)``, capped at the longer image side;
- one random in-plane rotation ``k * 90 deg`` (k uniform in 0..3): the crop is warped through
  ``K Rz K^-1`` exactly as :func:`mrcnet.runtime.preprocess.prepare_detection` does for its k-th TTA
  crop, and the pose is rotated with it: ``R_k = Rz R``, ``t_k = Rz t``; ``K_roi`` is not rotated;
- colour augmentation (albumentations) with probability 0.8: Gaussian noise, coarse dropout (the
  dropped pixels leave the visible mask too), blur, brightness, invert, per-channel and global
  multiply, contrast - the official imgaug recipe, each with its official probability; applied to
  the whole image before cropping, as the official code does;
- background replacement (after the colour augmentation, so the new background is not augmented):
  the pixels of the whole image outside the instance's visible mask are replaced by a random
  window of a background image (a ``backgrounds`` folder, any folder of images such as VOC2012
  ``JPEGImages``; default: images of the split itself), with probability ``bg_prob`` (0.8) for the
  instances ``bg_rule`` selects. ``"official"``: on a PBR split (folder name with ``pbr``) only an
  instance whose object appears at least 3 times in the image (usable instances), on any other
  split (real images) every instance; ``"every"``: every instance;
- box map (4th channel), ``box_map_mode``: ``"centred"`` (the official training rule) is the box of
  the instance's size ``(w, h)`` centred in the zoomed crop - the location computed from the
  unshifted centre, whatever the zoom-in shift - so the map stands for a noisy detection and the
  network does not learn to read the object's position off it; ``"exact"`` is the ground-truth box
  inside the shifted crop (the rule of this project before; a model then trusts the box as an exact
  locator and loses accuracy with a real detector's boxes).

The visible-mask target: ``mask_visib`` cleaned by a 3x3 morphological close then open, warped
straight to the network's 1/4 map (bilinear, > 0.5).

Targets (:mod:`mrcnet.train.targets`): soft rotation labels over the bins (symmetry-aware; cached
per (object, rotated GT rotation): in memory and, with ``label_cache_dir``, on disk under a folder
named by a digest of the model points, the symmetry set and the diameter, a file per (object,
digest of the rotation), so labels are never read for other poses or meshes), soft depth and cell
labels, the crop/4 visible mask, model points sampled on the surface (mm), the symmetry group
(``sym_R``, ``sym_t``, sampled as the official label code does,
:func:`mrcnet.train.targets.symmetry_tensors`) and the diameter. :func:`collate_samples` pads vertices and symmetries of different objects with masks.

Without ``augment`` (validation) the crop is the plain MODEL.md §1 crop (no zoom-in, k = 0, no colour or
background change). Randomness is a pure function of ``(seed, epoch, index)``: the same sample comes
out in any worker, process or resumed run (``set_epoch`` before each epoch).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mrcnet.data import bop
from mrcnet.data.backgrounds import FolderBackgrounds
from mrcnet.data.layout import jitter_box  # the synthetic detections' jitter rule (mrcnet-synth --box-jitter)
from mrcnet.runtime.datasets import render_models_dir
from mrcnet.runtime.geometry import TTA_GROUP, BinSpec, translation_to_persp, tta_rotations
from mrcnet.runtime.preprocess import (CROP_SIZE, PAD_SCALE, box_map, check_camera, check_image, crop_box_location,
                                      crop_fov, crop_transform, warp_crop)
from mrcnet.runtime.render import load_mesh
from mrcnet.train import targets as T

log = logging.getLogger(__name__)

MIN_BOX_PX = 10  # boxes with w or h <= this are skipped
MIN_VISIB_FRACT = 0.1
DZI_SHIFT = 0.25  # centre shift, fraction of the box w / h
DZI_SCALE = (0.75, 1.25)  # side scale range
COLOR_AUG_PROB = 0.8
N_ROT = TTA_GROUP  # in-plane rotations k * 360/N_ROT deg, the runtime's TTA group
BG_PROB = 0.8
BG_RULES = ("official", "every")  # which instances may get a new background (module docstring)
BG_MIN_SAME_OBJECT = 3  # official rule on PBR splits: the object appears at least this often in the image
BOX_MAP_MODES = ("centred", "exact")
MASK_MORPH_KERNEL = 3  # close then open, px


# ------------------------------------------------------------------------------------ crops
def crop_at(image: np.ndarray, K: np.ndarray, center: Sequence[float], side: float, k: int = 0,
            n_rot: int = N_ROT, size: int = CROP_SIZE, interpolation: int = cv2.INTER_LINEAR
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The k-th in-plane-rotated square crop of ``side`` pixels centred on ``center`` (docs/MODEL.md §1):
    :func:`mrcnet.runtime.preprocess.crop_transform` with the runtime's k-th TTA rotation, for an
    explicit centre and side (``prepare_detection`` derives them from a box).
    image (H, W[, C]) any dtype; K (3, 3); center (2,) px; k in 0..n_rot-1.
    Returns crop (size, size[, C]) (image dtype, zero outside), K_roi (3, 3), M (2, 3) the image ->
    crop warp, c_rot (2,) the rotated centre (px).
    """
    M, K_roi, c_rot = crop_transform(K, center, side, tta_rotations(n_rot)[k], size)
    return warp_crop(image, M, size, interpolation), K_roi, M, c_rot


def box_location(box_xyxy: Sequence[float], center: Sequence[float], side: float, k: int = 0,
                 n_rot: int = N_ROT) -> np.ndarray:
    """Box (x1, y1, x2, y2) px in the crop of (center, side), crop units, its corners rotated by
    k * 360/n_rot deg about the crop centre (min / max): (4,) float64 (docs/MODEL.md §1 ``box_loc``)."""
    return crop_box_location(box_xyxy, center, side, tta_rotations(n_rot)[k])


def dynamic_zoom_in(box_xyxy: Sequence[float], rng: np.random.Generator, shift: float = DZI_SHIFT,
                    scale: tuple[float, float] = DZI_SCALE, pad: float = PAD_SCALE,
                    max_side: float | None = None) -> tuple[np.ndarray, float]:
    """Random crop centre (2,) px and side (px) around a box: centre + U(-shift, shift) * (w, h),
    side = pad * max(w, h) * U(scale), capped at ``max_side`` (the longer image side)."""
    x1, y1, x2, y2 = box_xyxy
    w, h = x2 - x1, y2 - y1
    c = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + rng.uniform(-shift, shift, 2) * (w, h)
    side = pad * max(w, h) * rng.uniform(*scale)
    return c, (min(side, float(max_side)) if max_side is not None else side)


def centred_box(box_xyxy: Sequence[float], center: Sequence[float]) -> np.ndarray:
    """The box of ``box_xyxy``'s size moved to be centred on ``center`` (px): (4,) float64 - the
    official training box map's box (a stand-in for a noisy detection)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    hw, hh = (x2 - x1) / 2, (y2 - y1) / 2
    return np.array([center[0] - hw, center[1] - hh, center[0] + hw, center[1] + hh])


def clean_mask(mask: np.ndarray, kernel: int = MASK_MORPH_KERNEL) -> np.ndarray:
    """A binary mask (H, W) cleaned by a ``kernel`` x ``kernel`` close (fills holes) then open
    (removes specks): (H, W) uint8 {0, 1}."""
    k = np.ones((kernel, kernel), np.uint8)
    m = cv2.morphologyEx((np.asarray(mask) > 0).astype(np.uint8), cv2.MORPH_CLOSE, k)
    return cv2.morphologyEx(m, cv2.MORPH_OPEN, k)


def jittered_box(bbox_xywh, width: int, height: int, key: Sequence[int], box_jitter: float = 0.0,
                 seed: int = 0) -> list[float]:
    """The detection box (x1, y1, x2, y2) px that validation uses for an instance: its ``bbox_visib``
    (x, y, w, h), or with ``box_jitter`` > 0 that box with each side moved by up to ``box_jitter``
    of the box size and clipped to the ``width`` x ``height`` image (the rule of
    ``mrcnet-synth --box-jitter``), seeded by (seed, *key) with key = (scene, image, instance): the
    same boxes in every epoch and run."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    if box_jitter > 0:
        rng = np.random.default_rng([int(seed), *(int(k) for k in key)])
        x, y, w, h = jitter_box(rng, [x, y, w, h], float(box_jitter), width, height)
    return [x, y, x + w, y + h]


# ------------------------------------------------------------------------------ augmentation
def color_augmenter(p: float = COLOR_AUG_PROB):
    """The official imgaug recipe with albumentations, applied as a whole with probability p to
    uint8 BGR crops (``mask`` follows the coarse dropout)."""
    import albumentations as A  # albumentations: slow to import (about 1.5 s), only with colour augmentation on

    return A.Compose(
        [
            A.Sequential(
                [
                    A.GaussNoise(std_range=(0.0, 0.01), per_channel=True, p=0.5),
                    A.CoarseDropout(num_holes_range=(20, 80), hole_height_range=(0.03, 0.06),
                                    hole_width_range=(0.03, 0.06), fill=0, fill_mask=0, p=0.5),
                    A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 1.2), p=0.5),
                    A.RandomBrightnessContrast(brightness_limit=(-0.1, 0.1), contrast_limit=0.0, p=0.5),
                    A.InvertImg(p=0.3 * 0.2),
                    A.MultiplicativeNoise(multiplier=(0.6, 1.4), per_channel=True, p=0.5),
                    A.MultiplicativeNoise(multiplier=(0.6, 1.4), per_channel=False, p=0.5),
                    A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.5, 1.2), p=0.5),
                ],
                p=p,
            )
        ],
        seed=0,
    )


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


def find_split(root) -> str:
    """The split folder of a dataset root: the only ``train*``/``test*``/``val*`` folder holding
    scenes, else the first of train_pbr, train, val, test that exists."""
    root = Path(root)
    cands = [n for n in bop.split_folders(root) if n.split("_")[0] in ("train", "val", "test")]
    if len(cands) == 1:
        return cands[0]
    for name in ("train_pbr", "train", "val", "test"):
        if name in cands:
            return name
    raise bop.BopFormatError(f"{root}: no BOP split folder (train*/val*/test* with scene folders)")


# ------------------------------------------------------------------------------------ dataset
class TrainingSamples(Dataset):
    """Object crops and targets from a BOP split.

    root: dataset folder (``models/`` + split folders); split: split folder name (default
    :func:`find_split`); obj_ids: the model's objects, in class-index order (default: all of
    models_info); bins, depth_range: the output discretisation; augment: training (zoom-in,
    rotation, colour, background) or validation crops; seed: randomness; n_vertices: model points
    (on the surface) for the labels and losses; label_cache: entries of the rotation-label LRU cache (0 = off);
    backgrounds: optional folder of background images (default: images of the split); bg_prob,
    bg_rule (:data:`BG_RULES`), box_map_mode (:data:`BOX_MAP_MODES`), symmetry_sampling
    (:data:`mrcnet.train.targets.SYMMETRY_SAMPLINGS`): see the module docstring.

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
                 models=None, dataset: str | None = None):
        if bg_rule not in BG_RULES:
            raise ValueError(f"bg_rule {bg_rule!r} is not one of {BG_RULES}")
        if box_map_mode not in BOX_MAP_MODES:
            raise ValueError(f"box_map_mode {box_map_mode!r} is not one of {BOX_MAP_MODES}")
        if not 0.0 <= float(bg_prob) <= 1.0:
            raise ValueError(f"bg_prob {bg_prob} is not a probability in [0, 1]")
        self.root = Path(root)
        self.split = split or find_split(self.root)
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
        self.is_pbr = "pbr" in self.split
        self._backgrounds = FolderBackgrounds(backgrounds) if backgrounds else None
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
        if self.bg_rule == "every" or not self.is_pbr:
            return True
        return self.same_object.get((scene_id, im_id, obj_id), 0) >= BG_MIN_SAME_OBJECT

    def _background(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """A (H, W, 3) uint8 BGR background for a whole image: a random window of an image of the
        ``backgrounds`` folder, else of the split."""
        if self._backgrounds is None:
            keys = sorted({it[0] for it in self.items})
            self._backgrounds = FolderBackgrounds(self.ds.split_dir,
                                                  files=[self.ds.image(*k).image_path for k in keys])
        return self._backgrounds(rng, width, height)

    def __getitem__(self, index: int) -> dict:
        epoch, index = self.split_index(index)
        (scene_id, im_id), gt_id = self.items[index]
        rng = np.random.default_rng([self.seed, epoch, index])
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

"""Training-sample rules (docs/MODEL.md §5), torch-free: how one annotated instance becomes a crop.

The torch Dataset that applies them, with the targets, is :class:`mrcnet.train.dataset.TrainingSamples`.

One sample = one annotated instance of a BOP split (box = ``bbox_visib``; instances with box width
or height <= 10 px or ``visib_fract`` < 0.1 are skipped), cropped the MODEL.md §1 way with

- dynamic zoom-in (training): box centre shifted by up to +-25 % of the box w / h, side
  ``1.5 * max(w, h) * U(0.75, 1.25)``, capped at the longer image side (:func:`dynamic_zoom_in`);
- one random in-plane rotation ``k * 90 deg`` (k uniform in 0..3): the crop is warped through
  ``K Rz K^-1`` exactly as :func:`mrcnet.runtime.preprocess.prepare_detection` does for its k-th TTA
  crop, and the pose is rotated with it: ``R_k = Rz R``, ``t_k = Rz t``; ``K_roi`` is not rotated
  (:func:`crop_at`);
- colour augmentation (albumentations) with probability 0.8: Gaussian noise, coarse dropout (the
  dropped pixels leave the visible mask too), blur, brightness, invert, per-channel and global
  multiply, contrast - the official imgaug recipe, each with its official probability; applied to
  the whole image before cropping, as the official code does (:func:`color_augmenter`);
- background replacement (after the colour augmentation, so the new background is not augmented):
  the pixels of the whole image outside the instance's visible mask are replaced by a random
  window of a background image (a ``backgrounds`` folder, any folder of images such as VOC2012
  ``JPEGImages``, :class:`mrcnet.data.backgrounds.FolderBackgrounds`; default: images of the split
  itself), with probability ``bg_prob`` (0.8) for the instances ``bg_rule`` selects
  (:func:`background_applies`). ``"official"``: on a PBR split (folder name with ``pbr``) only an
  instance whose object appears at least 3 times in the image (usable instances), on any other
  split (real images) every instance; ``"every"``: every instance;
- box map (4th channel), ``box_map_mode``: ``"centred"`` (the official training rule) is the box of
  the instance's size ``(w, h)`` centred in the zoomed crop - the location computed from the
  unshifted centre, whatever the zoom-in shift (:func:`centred_box`) - so the map stands for a noisy
  detection and the network does not learn to read the object's position off it; ``"exact"`` is the
  ground-truth box inside the shifted crop (the rule of this project before; a model then trusts the
  box as an exact locator and loses accuracy with a real detector's boxes).

The visible-mask target: ``mask_visib`` cleaned by a 3x3 morphological close then open
(:func:`clean_mask`), warped straight to the network's 1/4 map (bilinear, > 0.5).

Without augmentation (validation) the crop is the plain MODEL.md §1 crop (no zoom-in, k = 0, no
colour or background change).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mrcnet.data import bop
from mrcnet.data.layout import jitter_box  # the synthetic detections' jitter rule (mrcnet-synth --box-jitter)
from mrcnet.runtime.geometry import TTA_GROUP, tta_rotations
from mrcnet.runtime.preprocess import CROP_SIZE, PAD_SCALE, crop_box_location, crop_transform, warp_crop

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


# ------------------------------------------------------------------------------ background rule
def is_pbr_split(split: str) -> bool:
    """Whether a split folder holds PBR (synthetic) images: its name contains ``pbr``."""
    return "pbr" in str(split)


def background_applies(bg_rule: str, pbr: bool, same_object: int) -> bool:
    """Whether an instance may get a new background (before ``bg_prob``): ``bg_rule`` of
    :data:`BG_RULES`; ``pbr``: the split is PBR (:func:`is_pbr_split`); ``same_object``: usable
    instances of the instance's object in its image (itself included)."""
    if bg_rule not in BG_RULES:
        raise ValueError(f"bg_rule {bg_rule!r} is not one of {BG_RULES}")
    return bg_rule == "every" or not pbr or same_object >= BG_MIN_SAME_OBJECT


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



#: names that lived here before the torch Dataset moved to :mod:`mrcnet.train.dataset`
MOVED_TO_TRAIN = ("TrainingSamples", "collate_samples", "ObjectData", "load_object_data", "PADDED")


def __getattr__(name):
    """The torch names that moved to :mod:`mrcnet.train.dataset`, still importable from here (with a
    DeprecationWarning), loaded only when asked for, so this module stays torch-free."""
    if name in MOVED_TO_TRAIN:
        from mrcnet.train import dataset  # deprecated alias only: the data package never needs torch

        warnings.warn(f"mrcnet.data.samples.{name} moved to mrcnet.train.dataset.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

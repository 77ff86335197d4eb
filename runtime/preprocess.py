"""From an image, a camera and a detection box to the network input (docs/MODEL.md §1). No torch.

Every detection becomes a TTA group of ``n_rot`` crops (in-plane rotations by k * 360/n_rot deg),
each ``CROP_SIZE`` x ``CROP_SIZE`` with 4 channels: BGR / 255 and the box map.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import TTA_GROUP, tta_rotations

CROP_SIZE = 256  # pixels, the network's input size
PAD_SCALE = 1.5  # square crop side = PAD_SCALE * max(box w, box h)
BOX_MAP_GROW = (0.25 + 0.25) * 0.25  # each side of the box map grows by this share of w / h
FOV_VARIANTS = ("inference", "training")
# How a detection box becomes the crop square (see detection_square):
# "clip" (this project's): float box clipped to the image; "official" (the official inference).
BOX_RULES = ("clip", "official")


class InputError(ValueError):
    """Bad user input (image, camera or box); the message names the input."""


@dataclass
class CropBatch:
    """The network input for D detections x T in-plane rotations (N = D * T rows, detection-major).

    crops (N, 4, S, S) float32: BGR in [0, 1] and the box map; K_roi (N, 3, 3) float64 crop cameras;
    box_loc (N, 4) float64 box in the crop (x1, y1, x2, y2) in [0, 1] crop units; fov (N, 3) float64;
    Rz (N, 3, 3) float64 the in-plane rotation of each crop; M (N, 2, 3) float64 the affine warp
    image -> crop; n_rot = T.
    """

    crops: np.ndarray
    K_roi: np.ndarray
    box_loc: np.ndarray
    fov: np.ndarray
    Rz: np.ndarray
    M: np.ndarray
    n_rot: int

    @property
    def n_detections(self) -> int:
        return len(self.crops) // self.n_rot

    @staticmethod
    def concat(batches: list["CropBatch"]) -> "CropBatch":
        if not batches:
            raise InputError("no detections to batch")
        fields = ("crops", "K_roi", "box_loc", "fov", "Rz", "M")
        return CropBatch(**{f: np.concatenate([getattr(b, f) for b in batches]) for f in fields},
                         n_rot=batches[0].n_rot)


def box_map(box_loc: np.ndarray, size: int = CROP_SIZE, out: np.ndarray | None = None) -> np.ndarray:
    """Box maps: (N, 4) boxes (x1, y1, x2, y2) in [0, 1] crop units -> (N, size, size) float32.

    1 inside the box grown on each side by ``BOX_MAP_GROW`` of its width / height, the bounds
    rounded to pixels (``[round(x1 * size), round(x2 * size))``) and clipped; 0 elsewhere.
    out: an (N, size, size) float32 array (or view) to write into instead of a new one.
    """
    box_loc = np.asarray(box_loc, np.float64).reshape(-1, 4)
    w = box_loc[:, 2] - box_loc[:, 0]
    h = box_loc[:, 3] - box_loc[:, 1]
    grown = np.stack([box_loc[:, 0] - BOX_MAP_GROW * w, box_loc[:, 1] - BOX_MAP_GROW * h,
                      box_loc[:, 2] + BOX_MAP_GROW * w, box_loc[:, 3] + BOX_MAP_GROW * h], 1)
    px = np.clip(np.round(grown * size), 0, size).astype(np.int64)
    if out is None:
        out = np.zeros((len(box_loc), size, size), np.float32)
    else:
        out[...] = 0.0
    for i, (x1, y1, x2, y2) in enumerate(px):
        out[i, y1:y2, x1:x2] = 1.0
    return out


def mask_extent(masks: np.ndarray) -> np.ndarray:
    """The one mask-to-box rule: (..., H, W) masks -> (..., 4) int64 ``(x_min, y_min, x_max, y_max)``,
    the first and last covered column / row, pixel indices, both ends INCLUSIVE (a one-pixel mask at
    column 3, row 2 gives (3, 2, 3, 2)); an empty mask gives (-1, -1, -1, -1).

    The box formats derive from it: BOP ``[x, y, w, h]`` with ``w = x_max - x_min``
    (``mrcnet.data.bop.bbox_from_mask``), COCO ``[x, y, w, h]`` with ``w = x_max - x_min + 1``
    (``mrcnet.data.layout.coco_box``), pixel-edge ``(x1, y1, x2, y2) = (x_min, y_min, x_max + 1,
    y_max + 1)`` (:func:`mask_box_xyxy`) and the crop-unit ``box_loc`` (:func:`box_loc_from_masks`).
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim < 2:
        raise ValueError(f"masks: expected (..., H, W), got shape {masks.shape}")
    h, w = masks.shape[-2:]
    cols, rows = masks.any(-2), masks.any(-1)  # (..., W), (..., H)
    ext = np.stack([cols.argmax(-1), rows.argmax(-1),
                    w - 1 - cols[..., ::-1].argmax(-1), h - 1 - rows[..., ::-1].argmax(-1)], -1).astype(np.int64)
    ext[~cols.any(-1)] = -1
    return ext


def mask_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """Pixel-edge box (x1, y1, x2, y2) float64 of (..., H, W) masks: (x_min, y_min, x_max + 1, y_max + 1)
    of :func:`mask_extent` (the detection-box convention: a one-pixel mask is 1 px wide); an empty mask
    gives (-1, -1, 0, 0)."""
    e = mask_extent(mask).astype(np.float64)
    return e + np.array([0.0, 0.0, 1.0, 1.0])


def box_loc_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of (N, H, W) masks in crop units: x1 = x_min / W, x2 = x_max / W with x_max the
    last covered pixel index (:func:`mask_extent`; docs/MODEL.md §4). Empty masks give (0, 0, 0, 0).
    -> (N, 4) float64."""
    masks = np.asarray(masks)
    h, w = masks.shape[-2:]
    ext = mask_extent(masks)
    return np.where(ext[..., :1] < 0, 0.0, ext / np.array([w, h, w, h], np.float64))


def check_image(image: np.ndarray, name: str = "image", size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate an image (H, W, 3) BGR or (H, W) grey, uint8 or float in 0..255 -> (H, W, 3) float32.

    ``size`` = (width, height) expected, if given.
    """
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise InputError(f"{name}: not an image (got {type(image).__name__})")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise InputError(f"{name}: expected an HxWx3 BGR or HxW grey image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        raise InputError(f"{name}: image is {image.shape[1]}x{image.shape[0]}, expected {size[0]}x{size[1]}")
    return image.astype(np.float32, copy=False)


#: smallest focal length (px) and detection box side (px) accepted: below them the geometry is noise
MIN_FOCAL_PX = 1.0
MIN_BOX_PX = 2.0


def check_camera(K: np.ndarray, name: str = "camera K", size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a 3x3 pinhole camera matrix -> (3, 3) float64.

    Finite, last row (0, 0, 1), K[1, 0] = 0, fx and fy >= ``MIN_FOCAL_PX``; with ``size`` =
    (width, height) of the image, the principal point within one image size of the image
    (``-W <= cx <= 2 W``, same for cy). Anything else raises InputError naming ``name``."""
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise InputError(f"{name}: expected a finite 3x3 camera matrix, got {K.tolist()}")
    if not np.array_equal(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
        raise InputError(f"{name}: not a pinhole camera matrix (last row must be 0 0 1, K[1][0] 0), got {K.tolist()}")
    if K[0, 0] < MIN_FOCAL_PX or K[1, 1] < MIN_FOCAL_PX:
        raise InputError(f"{name}: focal lengths fx {K[0, 0]:g}, fy {K[1, 1]:g} px must be >= {MIN_FOCAL_PX:g} px")
    if size is not None:
        w, h = size
        if not (-w <= K[0, 2] <= 2 * w and -h <= K[1, 2] <= 2 * h):
            raise InputError(f"{name}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) px is far outside the "
                             f"{w}x{h} image")
    return K


def clip_box(box_xyxy: np.ndarray, width: int, height: int, name: str = "box") -> np.ndarray:
    """Clamp a box (x1, y1, x2, y2) in pixels to the image; empty, outside or smaller than
    ``MIN_BOX_PX`` on a side -> InputError."""
    b = np.asarray(box_xyxy, np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise InputError(f"{name}: expected 4 finite numbers (x1, y1, x2, y2), got {np.asarray(box_xyxy).tolist()}")
    c = np.array([np.clip(b[0], 0, width), np.clip(b[1], 0, height), np.clip(b[2], 0, width), np.clip(b[3], 0, height)])
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        raise InputError(f"{name}: box {b.tolist()} is empty or outside the {width}x{height} image")
    if c[2] - c[0] < MIN_BOX_PX or c[3] - c[1] < MIN_BOX_PX:
        raise InputError(f"{name}: box {b.tolist()} is smaller than {MIN_BOX_PX:g} px inside the image")
    return c


def detection_square(box_xyxy, width: int, height: int, rule: str = "clip", name: str = "box"
                     ) -> tuple[np.ndarray, tuple[float, float], float]:
    """The crop square of a detection box (x1, y1, x2, y2) px in a ``width`` x ``height`` image.

    ``rule``:

    - ``"clip"``: the box clipped to the image (:func:`clip_box`), centre = its centre, side =
      ``PAD_SCALE`` x its longer side; the box location is that box.
    - ``"official"`` (the official inference, needed for bit-parity with official results): the
      corners are first *truncated* to integers (``int(x1), int(y1), int(x2), int(y2)``; toward
      zero, as Python's ``int``); centre ``(min((x1 + x2) / 2, W), min((y1 + y2) / 2, H))`` (capped
      from above only); ``w = int(max(0, min(x2 - x1, W)))``, ``h`` likewise - the box is *not*
      clipped first, so a box crossing the border keeps its full size up to W / H; side =
      ``PAD_SCALE * max(w, h)``; the box location is the (w, h) box centred on that centre.

    Returns (box (4,) float64 px: the box whose location the box map shows, centre (cx, cy) px,
    side px). An empty box (or, for "clip", one outside the image) is an :class:`InputError`.
    """
    if rule not in BOX_RULES:
        raise InputError(f"box rule: {rule!r} is not one of {BOX_RULES}")
    if rule == "clip":
        box = clip_box(box_xyxy, width, height, name)
        x1, y1, x2, y2 = box
        return box, ((x1 + x2) / 2.0, (y1 + y2) / 2.0), PAD_SCALE * max(x2 - x1, y2 - y1)
    b = np.asarray(box_xyxy, np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise InputError(f"{name}: expected 4 finite numbers (x1, y1, x2, y2), got {np.asarray(box_xyxy).tolist()}")
    x1, y1, x2, y2 = (float(v) for v in np.trunc(b))
    cx, cy = min((x1 + x2) / 2.0, float(width)), min((y1 + y2) / 2.0, float(height))
    w, h = float(int(max(0.0, min(x2 - x1, width)))), float(int(max(0.0, min(y2 - y1, height))))
    if w <= 0 or h <= 0:
        raise InputError(f"{name}: box {b.tolist()} is empty after truncation to integers")
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), (cx, cy), PAD_SCALE * max(w, h)


def crop_transform(K: np.ndarray, centre, side: float, Rz: np.ndarray, size: int = CROP_SIZE
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The warp of one in-plane-rotated square crop (docs/MODEL.md §1).

    K (3, 3) camera; centre (2,) px the crop centre before rotation; side (px) the crop side;
    Rz (3, 3) the in-plane rotation (about the camera z axis); size the crop size (px).
    The image is rotated through ``T_rot = K Rz K^-1``, then the square of ``side`` around the
    rotated centre ``c' = T_rot c`` is scaled to ``size``: ``T_img2roi = [[r, 0, -r (c'x - side/2)],
    [0, r, -r (c'y - side/2)], [0, 0, 1]]``, ``r = size / side``.
    Returns M (2, 3) the affine image -> crop warp (``cv2.warpAffine``), K_roi (3, 3) =
    ``T_img2roi K`` the crop camera (not rotated), centre_rot (2,) ``c'`` px.
    """
    K = np.asarray(K, np.float64)
    T_rot = K @ np.asarray(Rz, np.float64) @ np.linalg.inv(K)
    c = T_rot @ np.array([centre[0], centre[1], 1.0])
    c = c[:2] / c[2]
    r = size / side
    T_img2roi = np.array([[r, 0.0, -r * (c[0] - side / 2)], [0.0, r, -r * (c[1] - side / 2)], [0.0, 0.0, 1.0]])
    A = T_img2roi @ T_rot
    return (A / A[2, 2])[:2], T_img2roi @ K, c


def warp_crop(image: np.ndarray, M: np.ndarray, size: int = CROP_SIZE, interpolation: int = cv2.INTER_LINEAR
              ) -> np.ndarray:
    """``image`` (H, W[, C]) warped by M (2, 3) into a (size, size[, C]) crop, zero outside."""
    return cv2.warpAffine(image, M, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def crop_box_location(box_xyxy, centre, side: float, Rz: np.ndarray) -> np.ndarray:
    """docs/MODEL.md §1 ``box_loc``: the box (x1, y1, x2, y2) px in the crop of (centre, side), in crop units,
    its corners rotated by Rz (3, 3) about the crop centre, then min / max -> (4,) float64."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    corners = (np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) - (centre[0], centre[1])) / side
    rc = corners @ np.asarray(Rz, np.float64)[:2, :2].T + 0.5
    return np.array([*rc.min(0), *rc.max(0)])


def crop_fov(K: np.ndarray, centre, centre_rot, side: float, fov_variant: str = "inference") -> np.ndarray:
    """docs/MODEL.md §1 ``fov`` (3,) of a crop: the rotated centre's offset divided by the focal lengths,
    then ``side / fx``. ``"inference"`` (the official inference) offsets ``centre_rot`` from the
    crop centre ``centre``, ``"training"`` from the principal point."""
    if fov_variant not in FOV_VARIANTS:
        raise InputError(f"fov_variant: {fov_variant!r} is not one of {FOV_VARIANTS}")
    origin = (centre[0], centre[1]) if fov_variant == "inference" else (K[0, 2], K[1, 2])
    return np.array([(centre_rot[0] - origin[0]) / K[0, 0], (centre_rot[1] - origin[1]) / K[1, 1], side / K[0, 0]])


def prepare_detection(
    image: np.ndarray,
    K: np.ndarray,
    box_xyxy: np.ndarray,
    n_rot: int = TTA_GROUP,
    fov_variant: str = "inference",
    size: int = CROP_SIZE,
    scale: float = 1.0 / 255.0,
    box_rule: str = "clip",
) -> CropBatch:
    """The TTA group of one detection (docs/MODEL.md §1).

    image (H, W, 3) BGR, values 0..255 (uint8 or float); K (3, 3); box_xyxy (4,) pixels.
    fov_variant: "inference" (the official inference: offsets from the box centre) or "training"
    (offsets from the principal point). box_rule (:data:`BOX_RULES`): how the box becomes the crop
    square (:func:`detection_square`; "official" for official checkpoints). The k-th crop is
    :func:`crop_transform` with Rz(k * 360/n_rot deg).
    Returns a CropBatch of n_rot rows.
    """
    if fov_variant not in FOV_VARIANTS:
        raise InputError(f"fov_variant: {fov_variant!r} is not one of {FOV_VARIANTS}")
    img = check_image(image)
    K = check_camera(K)
    H, W = img.shape[:2]
    box, centre, side = detection_square(box_xyxy, W, H, box_rule)
    Rz = tta_rotations(n_rot)

    crops = np.empty((n_rot, 4, size, size), np.float32)
    K_roi = np.empty((n_rot, 3, 3))
    box_loc = np.empty((n_rot, 4))
    fov = np.empty((n_rot, 3))
    M = np.empty((n_rot, 2, 3))
    for k in range(n_rot):
        M[k], K_roi[k], c_rot = crop_transform(K, centre, side, Rz[k], size)
        crops[k, :3] = np.moveaxis(warp_crop(img, M[k], size), 2, 0) * scale
        box_loc[k] = crop_box_location(box, centre, side, Rz[k])
        fov[k] = crop_fov(K, centre, c_rot, side, fov_variant)
    crops[:, 3] = box_map(box_loc, size)
    return CropBatch(crops, K_roi, box_loc, fov, Rz.copy(), M, n_rot)


def prepare_detections(image, K, boxes_xyxy, n_rot: int = 4, fov_variant: str = "inference",
                       size: int = CROP_SIZE, box_rule: str = "clip") -> CropBatch:
    """All detections of one image, detection-major: (D, 4) boxes -> CropBatch of D * n_rot rows."""
    img = check_image(image)
    return CropBatch.concat([prepare_detection(img, K, b, n_rot, fov_variant, size, box_rule=box_rule)
                             for b in boxes_xyxy])

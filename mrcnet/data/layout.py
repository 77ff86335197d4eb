"""Scene layout helpers shared by the synthetic generators (:mod:`mrcnet.data.scenes` images and
:mod:`mrcnet.data.video` clips): renderer ids, camera look-at, objects resting on a table, and the
BOP/COCO boxes of the rendered instances. Poses in mm, rotations (3, 3), OpenCV camera frames.
"""
from __future__ import annotations

import numpy as np

from mrcnet.runtime.preprocess import mask_box_xyxy

from . import bop

#: id offset of distractor meshes in the renderer (never a dataset object id)
DISTRACTOR_ID0 = 1_000_000
#: renderer id of the table mesh (the ``"table"`` layout and the demo clips)
TABLE_ID = DISTRACTOR_ID0 - 1


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera pose of an OpenCV camera at ``eye`` looking at ``target`` (mm).

    :return: ``R_w2c`` (3, 3), ``t_w2c`` (3,) with ``X_cam = R_w2c X_world + t_w2c``; image x
        to the right and y down, relative to ``up``.
    """
    eye, target, up = (np.asarray(v, float) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking straight along up
        x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


def _axis_rotations() -> list[np.ndarray]:
    """The 24 rotations that map coordinate axes onto coordinate axes (resting faces x yaw)."""
    out = []
    for perm in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [1, 0, 2], [0, 2, 1], [2, 1, 0]):
        for signs in np.array(np.meshgrid([1, -1], [1, -1], [1, -1])).T.reshape(-1, 3):
            R = np.zeros((3, 3))
            R[np.arange(3), perm] = signs
            if np.linalg.det(R) > 0:
                out.append(R)
    return out


def place_on_table(rng, meshes: list, spread: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Resting poses (model -> world) for ``meshes`` (renderer Meshes) on the plane z = 0.

    Each object lies on a face of its bounding box (the lowest, most stable ones 80 % of the
    time), with a random yaw, inside a disc of radius
    ``spread`` mm, footprints (circles) not overlapping.
    """
    rots = _axis_rotations()
    placed: list = []
    out = []
    for mesh in meshes:
        v = mesh.vertices.astype(np.float64)
        heights = np.array([np.ptp(v @ R[2]) for R in rots])
        stable = [R for R, h in zip(rots, heights) if h <= heights.min() * 1.05]  # lying flat
        for attempt in range(200):
            yaw = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(yaw), np.sin(yaw)
            pool = stable if rng.random() < 0.8 else rots
            R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ pool[int(rng.integers(len(pool)))]
            w = v @ R.T
            lo, hi = w.min(0), w.max(0)
            r = 0.5 * float(np.hypot(*(hi[:2] - lo[:2])))
            grow = 1.0 + attempt / 50  # widen the disc when it is crowded
            ang, rad = rng.uniform(0, 2 * np.pi), spread * grow * np.sqrt(rng.random())
            xy = np.array([rad * np.cos(ang), rad * np.sin(ang)])
            if all(np.linalg.norm(xy - q) >= r + qr + 5.0 for q, qr in placed):
                break
        centre_xy = (lo[:2] + hi[:2]) / 2
        t = np.array([xy[0] - centre_xy[0], xy[1] - centre_xy[1], -lo[2]])
        placed.append((xy, r))
        out.append((R, t))
    return out


def full_silhouette(renderer, obj_id, R, t, K, width, height, mask_in_image):
    """Silhouette pixel count and BOP box of an object, including the part outside the image.

    When the in-image mask touches the border, the object is rendered again on a canvas that
    covers its projected vertices (at most 3x the image on each side, as BOP's calc_gt_info).
    """
    m = mask_in_image
    touches = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
    if not touches:
        return int(m.sum()), bop.bbox_from_mask(m)
    verts = renderer.mesh(obj_id).vertices.astype(np.float64)
    pc = verts @ R.T + t
    pc = pc[pc[:, 2] > 1e-6]
    uv = (pc @ K.T)[:, :2] / pc[:, 2:3]
    x0 = int(np.clip(np.floor(uv[:, 0].min()) - 2, -width, 0))
    y0 = int(np.clip(np.floor(uv[:, 1].min()) - 2, -height, 0))
    x1 = int(np.clip(np.ceil(uv[:, 0].max()) + 2, width, 2 * width))
    y1 = int(np.clip(np.ceil(uv[:, 1].max()) + 2, height, 2 * height))
    Kc = K.copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    big = renderer.render([obj_id], R[None], t[None], Kc, width=x1 - x0, height=y1 - y0).mask[0]
    return int(big.sum()), bop.bbox_from_mask(big, offset=(-x0, -y0))


def coco_box(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, w, h] (px; ``w = x_max - x_min + 1`` of
    :func:`mrcnet.runtime.preprocess.mask_extent`) of a non-empty boolean mask (H, W)."""
    x0, y0, x1, y1 = mask_box_xyxy(mask).tolist()
    if x0 < 0:
        raise ValueError("mask: empty, it has no COCO box")
    return [x0, y0, x1 - x0, y1 - y0]


def jitter_box(rng, box, frac, width, height) -> list[float]:
    """``box`` [x, y, w, h] (px) with each edge moved by up to ``frac`` of the box size, clipped to
    the ``width`` x ``height`` image (at least 1 px wide and high): the synthetic detections' jitter."""
    x, y, w, h = box
    x0 = x + rng.uniform(-frac, frac) * w
    y0 = y + rng.uniform(-frac, frac) * h
    x1 = x + w + rng.uniform(-frac, frac) * w
    y1 = y + h + rng.uniform(-frac, frac) * h
    x0, x1 = np.clip([x0, x1], 0, width)
    y0, y1 = np.clip([y0, y1], 0, height)
    return [float(x0), float(y0), float(max(1.0, x1 - x0)), float(max(1.0, y1 - y0))]

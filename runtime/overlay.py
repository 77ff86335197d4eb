"""Overlay drawing (no torch, no renderer): model contours, axes and labels at estimated poses.

The contour is the outline of the model's mask at the pose: the renderer's full-frame mask when
the caller passes one (fast on a GPU), else the projected silhouette (every face filled, then the
outer contour; exact for any mesh, no GPU, cost linear in the face count).
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from .tracking import project_points

PALETTE = [(0, 255, 0), (255, 128, 0), (0, 200, 255), (255, 0, 255), (0, 128, 255), (255, 255, 0),
           (128, 0, 255), (0, 255, 255)]  # BGR, by object id


def colour(obj_id: int) -> tuple[int, int, int]:
    return PALETTE[int(obj_id) % len(PALETTE)]


def silhouette(mesh, R, t, K, width: int, height: int) -> Optional[tuple[np.ndarray, tuple[int, int]]]:
    """Projected silhouette of ``mesh`` (vertices (V,3) mm, faces (F,3)) at pose (R, t) with K,
    restricted to its bounding rectangle inside the (width x height) image.
    Returns (mask (h, w) uint8 {0,1}, (x0, y0) offset of the mask in the image) or None when the
    model is behind the camera or outside the image."""
    uv, z = project_points(mesh.vertices, R, t, K)
    if np.any(z <= 0):
        return None
    x0, y0 = max(int(np.floor(uv[:, 0].min())), 0), max(int(np.floor(uv[:, 1].min())), 0)
    x1, y1 = min(int(np.ceil(uv[:, 0].max())) + 1, width), min(int(np.ceil(uv[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((uv - (x0, y0)) * 16).astype(np.int32)  # 4 fractional bits
    # One fill per triangle: a single fillPoly over all faces would use the even-odd rule and
    # cancel where faces overlap.
    for tri in pts[np.asarray(mesh.faces)]:
        cv2.fillConvexPoly(mask, tri, 1, lineType=cv2.LINE_8, shift=4)
    return mask, (x0, y0)


def draw_pose(image: np.ndarray, pose, K: np.ndarray, mesh=None, label: Optional[str] = None,
              axis_length: Optional[float] = None, thickness: int = 2, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Draw one pose in place on ``image`` (H, W, 3) uint8 BGR and return it: the model's contour
    (of ``mask`` (H, W) if given, else of the projected silhouette of ``mesh``), the model axes
    (x red, y green, z blue; length ``axis_length`` mm, default half the model's radius or 50 mm),
    the detection box (thin) and a label ``obj N score``."""
    H, W = image.shape[:2]
    col = colour(pose.obj_id)
    if mask is not None:
        contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, col, thickness, cv2.LINE_AA)
    elif mesh is not None:
        sil = silhouette(mesh, pose.R, pose.t, K, W, H)
        if sil is not None:
            mask, off = sil
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=off)
            cv2.drawContours(image, contours, -1, col, thickness, cv2.LINE_AA)
    if axis_length is None:
        axis_length = 0.5 * float(np.linalg.norm(mesh.vertices, axis=1).max()) if mesh is not None else 50.0
    pts = np.vstack([np.zeros(3), np.eye(3) * axis_length])
    uv, z = project_points(pts, pose.R, pose.t, K)
    if np.all(z > 0) and np.all(np.isfinite(uv)) and np.abs(uv).max() < 1e5:
        o = tuple(int(round(v)) for v in uv[0])
        for i, c in enumerate(((0, 0, 255), (0, 255, 0), (255, 0, 0))):
            cv2.arrowedLine(image, o, tuple(int(round(v)) for v in uv[i + 1]), c, thickness, cv2.LINE_AA, tipLength=0.15)
    if pose.box is not None and len(pose.box) == 4 and np.all(np.isfinite(pose.box)):
        b = np.round(pose.box).astype(int)
        cv2.rectangle(image, (b[0], b[1]), (b[2], b[3]), col, 1)
        text = label if label is not None else f"obj {pose.obj_id} {pose.score:.2f}"
        org = (int(b[0]), max(int(b[1]) - 5, 12))
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, col, 1, cv2.LINE_AA)
    return image


def draw_frame(image: np.ndarray, poses: Sequence, K: np.ndarray, meshes: Optional[dict] = None,
               fps: Optional[float] = None, text: Optional[str] = None, masks: Optional[np.ndarray] = None) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 BGR with every pose drawn and, top left, the FPS and
    an optional status text. masks: optional (len(poses), H, W) full-frame masks of the poses
    (e.g. :func:`render_masks`), else projected silhouettes of ``meshes``."""
    out = np.ascontiguousarray(image, np.uint8).copy()
    meshes = meshes or {}
    for i, p in enumerate(poses):
        draw_pose(out, p, K, meshes.get(p.obj_id), mask=None if masks is None else masks[i])
    lines = ([f"{fps:5.1f} FPS"] if fps is not None else []) + ([text] if text else [])
    for i, line in enumerate(lines):
        org = (8, 22 + 22 * i)
        cv2.putText(out, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def render_masks(renderer, poses: Sequence, K: np.ndarray, width: int, height: int) -> Optional[np.ndarray]:
    """Full-frame masks (len(poses), H, W) bool of the poses from the renderer in one call;
    None when there are no poses."""
    if not poses:
        return None
    n = len(poses)
    res = renderer.render(np.array([p.obj_id for p in poses]), np.stack([p.R for p in poses]),
                          np.stack([p.t for p in poses]), np.broadcast_to(np.asarray(K, np.float64), (n, 3, 3)),
                          width=width, height=height)
    return np.asarray(res.mask, bool)

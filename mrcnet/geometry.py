"""Batched torch geometry used inside the network (and so exported with it).

The facts (bin definitions, prototypes order, cell order, the perspective formula) live in the
numpy module :mod:`mrcnet.runtime.geometry`; this module holds their torch twins for
batched, differentiable, ONNX-exportable use, and the one place where the network decodes
bins + residuals into poses (:func:`decode_bins`, :func:`decode_final`).

Conventions: OpenCV camera (x right, y down, z forward), millimetres, ``X_cam = R X_model + t``,
quaternions ``(w, x, y, z)``, crop offsets ``(dx, dy)`` in crop units ([-0.5, 0.5]),
normalised depth ``d = t_z / fx_roi`` (of a 256-px crop, :data:`REF_CROP`). Everything here is
plain tensor arithmetic (no Python control flow on values), so it traces into ONNX opset 17.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mrcnet.runtime.geometry import (  # noqa: F401  (re-exported facts)
    BinSpec,
    PAPER_BINS,
    REF_CROP,
    TTA_GROUP,
    cell_centers,
    depth_bin_centers,
    rotation_prototypes,
)

__all__ = [
    "BinSpec",
    "PAPER_BINS",
    "quat_to_matrix",
    "rot6d_to_matrix",
    "persp_to_translation",
    "translation_to_persp",
    "argmax_bins",
    "decode_bins",
    "decode_final",
    "tta_select",
    "rotz",
]


# --------------------------------------------------------------------------------- rotations
def quat_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product over the last axis (explicit: exports to ONNX without a Cross op)."""
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=-1)


def rot6d_to_matrix(x: Tensor, eps: float = 1e-8) -> Tensor:
    """6D rotation ``(a, b) = (x[..., :3], x[..., 3:6])`` -> (..., 3, 3) with columns [x y z]:
    ``x = a/|a|, z = (x cross b)/|x cross b|, y = z cross x`` (docs/MODEL.md §3)."""
    a, b = x[..., 0:3], x[..., 3:6]
    c0 = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    c2 = _cross(c0, b)
    c2 = c2 / c2.norm(dim=-1, keepdim=True).clamp_min(eps)
    c1 = _cross(c2, c0)
    return torch.stack([c0, c1, c2], dim=-1)


def rotz(theta: Tensor) -> Tensor:
    """Rotation about the camera z axis by theta (radians): (...) -> (..., 3, 3)."""
    c, s = torch.cos(theta), torch.sin(theta)
    o, z = torch.ones_like(theta), torch.zeros_like(theta)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(theta.shape + (3, 3))


# ------------------------------------------------------------------------------- translation
def persp_to_translation(dxy: Tensor, d: Tensor, K_roi: Tensor, size: int = 256) -> Tensor:
    """Crop offsets (..., 2), normalised depth (...) and crop cameras (..., 3, 3) -> t (..., 3) mm.

    ``t_z = d fx 256/size; t_x = t_z/fx (w dx + w/2 - cx); t_y = t_z/fy (h dy + h/2 - cy)``, w = h = size
    (the formula of :func:`mrcnet.runtime.geometry.persp_to_translation`).
    """
    fx, fy = K_roi[..., 0, 0], K_roi[..., 1, 1]
    cx, cy = K_roi[..., 0, 2], K_roi[..., 1, 2]
    tz = d * fx * (REF_CROP / size)
    tx = tz / fx * (size * dxy[..., 0] + size / 2.0 - cx)
    ty = tz / fy * (size * dxy[..., 1] + size / 2.0 - cy)
    return torch.stack([tx, ty, tz], dim=-1)


def translation_to_persp(t: Tensor, K_roi: Tensor, size: int = 256) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`persp_to_translation`: (..., 3) mm -> ((..., 2) offsets, (...) depth)."""
    fx, fy = K_roi[..., 0, 0], K_roi[..., 1, 1]
    cx, cy = K_roi[..., 0, 2], K_roi[..., 1, 2]
    d = t[..., 2] / fx * (size / REF_CROP)
    dx = (fx * t[..., 0] / t[..., 2] + cx - size / 2.0) / size
    dy = (fy * t[..., 1] / t[..., 2] + cy - size / 2.0) / size
    return torch.stack([dx, dy], dim=-1), d


# ------------------------------------------------------------------------------------ decoding
class BinTables(torch.nn.Module):
    """The bin centres as (non-persistent) buffers, so they follow ``.to(device)`` and are
    exported as constants: ``prototypes`` (n_rot, 4) wxyz, ``depth_centers`` (n_depth,)
    normalised depth, ``cell_centers`` (n_cells,) crop units. Built from
    :mod:`mrcnet.runtime.geometry`; never saved in checkpoints."""

    def __init__(self, bins: BinSpec, depth_range: tuple[float, float]):
        super().__init__()
        self.bins = bins
        self.depth_range = (float(depth_range[0]), float(depth_range[1]))
        self.register_buffer(
            "prototypes", torch.from_numpy(rotation_prototypes(bins.n_side).astype(np.float32)), persistent=False
        )
        self.register_buffer(
            "depth_centers",
            torch.from_numpy(depth_bin_centers(*self.depth_range, bins.n_depth).astype(np.float32)),
            persistent=False,
        )
        self.register_buffer(
            "cell_centers", torch.from_numpy(cell_centers(bins.n_cells).astype(np.float32)), persistent=False
        )


def argmax_bins(pose_logits: Tensor, depth_logits: Tensor, trans_logits: Tensor) -> dict[str, Tensor]:
    """Argmax bin of each head: ``pose_id``, ``depth_id``, ``cell_id`` (N,) int64, and the TTA
    scores ``rot_score``, ``depth_score`` (N,) = the maximum rotation / depth logit."""
    rot_score, pose_id = pose_logits.max(dim=1)
    depth_score, depth_id = depth_logits.max(dim=1)
    cell_id = trans_logits.argmax(dim=1)
    return {
        "pose_id": pose_id,
        "depth_id": depth_id,
        "cell_id": cell_id,
        "rot_score": rot_score,
        "depth_score": depth_score,
    }


def decode_bins(
    tables: BinTables, pose_logits: Tensor, depth_logits: Tensor, trans_logits: Tensor, K_roi: Tensor,
    size: int = 256,
) -> dict[str, Tensor]:
    """Stage-1 decoding: argmax bins -> initial pose.

    Returns the :func:`argmax_bins` entries plus ``quat_init`` (N, 4) wxyz prototype,
    ``R_init`` (N, 3, 3), ``persp_init`` (N, 3) = (dx, dy, d) of the argmax cell (row-major
    ``iy * n + ix``) and depth bin, ``t_init`` (N, 3) mm (with ``K_roi``).
    """
    out = argmax_bins(pose_logits, depth_logits, trans_logits)
    n = tables.bins.n_cells
    quat = tables.prototypes.index_select(0, out["pose_id"])
    d = tables.depth_centers.index_select(0, out["depth_id"])
    cell = out["cell_id"]
    dx = tables.cell_centers.index_select(0, torch.remainder(cell, n))
    dy = tables.cell_centers.index_select(0, torch.div(cell, n, rounding_mode="floor"))
    dxy = torch.stack([dx, dy], dim=-1)
    out["quat_init"] = quat
    out["R_init"] = quat_to_matrix(quat)
    out["persp_init"] = torch.cat([dxy, d[:, None]], dim=1)
    out["t_init"] = persp_to_translation(dxy, d, K_roi, size)
    return out


def decode_final(
    R_init: Tensor, persp_init: Tensor, pose_res: Tensor, depth_res: Tensor, trans_res: Tensor, K_roi: Tensor,
    size: int = 256,
) -> dict[str, Tensor]:
    """Stage-2 decoding: ``R = R6D(pose_res) @ R_init``; ``(dx, dy, d) = persp_init +
    (trans_res, depth_res)``; ``t`` from those with ``K_roi``.

    pose_res (N, 6), depth_res (N, 1), trans_res (N, 2). Returns ``R`` (N, 3, 3),
    ``persp`` (N, 3), ``t`` (N, 3) mm.
    """
    R = rot6d_to_matrix(pose_res) @ R_init
    persp = persp_init + torch.cat([trans_res, depth_res], dim=1)
    t = persp_to_translation(persp[:, 0:2], persp[:, 2], K_roi, size)
    return {"R": R, "persp": persp, "t": t}


def tta_select(R: Tensor, t: Tensor, rot_score: Tensor, depth_score: Tensor, Rz: Tensor, group: int = TTA_GROUP):
    """Torch twin of :func:`mrcnet.runtime.geometry.tta_select` on flat crops.

    R (N, 3, 3), t (N, 3), rot_score/depth_score (N,), Rz (N, 3, 3), N = G x group (crops of a
    detection consecutive). Rotation from the crop with the largest rot_score, translation from
    the one with the largest depth_score, both mapped back by Rz^T.
    Returns R (G, 3, 3), t (G, 3), score (G,).
    """
    R = R.reshape(-1, group, 3, 3)
    t = t.reshape(-1, group, 3)
    Rz = Rz.reshape(-1, group, 3, 3)
    score, kr = rot_score.reshape(-1, group).max(dim=1)
    kt = depth_score.reshape(-1, group).argmax(dim=1)
    take = lambda x, k: torch.gather(x, 1, k.view(-1, 1, *([1] * (x.dim() - 2))).expand(-1, 1, *x.shape[2:]))[:, 0]
    R_out = take(Rz, kr).transpose(-1, -2) @ take(R, kr)
    t_out = (take(Rz, kt).transpose(-1, -2) @ take(t, kt)[..., None])[..., 0]
    return R_out, t_out, score

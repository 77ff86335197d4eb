"""Pose error functions of the BOP benchmark, in numpy (no torch, no renderer).

Definitions follow ``bop_toolkit_lib`` (``pose_error.py``, ``visibility.py``, ``misc.py``) exactly:
VSD (Hodan et al., ECCVW'16 / BOP'19 "step" cost with the "bop19" visibility rule), MSSD and MSPD
(BOP'19, symmetry-aware), ADD / ADI (Hinterstoisser et al.), rotation and translation errors.
VSD takes *rendered depth images* rather than a renderer, so this module stays pure numpy; the
caller (``mrcnet.eval.bop_eval``) renders them with ``mrcnet.runtime.render.Renderer``.

Conventions: OpenCV camera (x right, y down, z forward), millimetres, pixels,
``X_cam = R @ X_model + t``. ``R`` is (3, 3), ``t`` (3,) or (3, 1) mm, ``K`` (3, 3) px, model
points ``pts`` (V, 3) mm. Symmetries ``syms``: the list of ``{"R": (3, 3), "t": (3, 1) mm}`` returned
by ``mrcnet.data.bop.symmetry_transforms`` (identity first), or a pair of arrays
``(R (S, 3, 3), t (S, 3))``; None means "no symmetry" (identity only).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: VSD misalignment tolerances tau of BOP'19, as fractions of the object diameter (0.05..0.5).
VSD_TAUS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
#: VSD visibility tolerance delta of BOP'19 in mm (every dataset but ITODD, which uses 5 mm).
VSD_DELTA_MM = 15.0

# Working-set bound (floats) of the chunked symmetry loops of mssd/mspd.
_CHUNK_FLOATS = 4_000_000


# ------------------------------------------------------------------------------------ basics
def transform_pts(pts, R, t) -> np.ndarray:
    """Rigid transform of points: (V, 3) mm -> (V, 3) float64 mm, ``R @ p + t``."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ np.asarray(R, np.float64).T + np.asarray(t, np.float64).reshape(1, 3)


def project_pts(pts, K, R, t) -> np.ndarray:
    """Pinhole projection of model points: (V, 3) mm -> (V, 2) float64 pixel coordinates (u, v)."""
    x = transform_pts(pts, R, t) @ np.asarray(K, np.float64).T
    return x[:, :2] / x[:, 2:3]


def depth_to_dist(depth, K) -> np.ndarray:
    """Depth image (z, mm; 0 = none) -> distance-to-camera-centre image, as bop_toolkit's
    ``misc.depth_im_to_dist_im_fast`` (pixel (x, y) at integer coordinates).

    Args:
        depth: (H, W) depth in mm. K: (3, 3).
    Returns:
        (H, W) float64 distances in mm (0 where depth is 0).
    """
    depth = np.asarray(depth)
    K = np.asarray(K, np.float64)
    h, w = depth.shape
    px = (np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]
    py = (np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]
    d = depth.astype(np.float64)
    return np.sqrt((px[None, :] * d) ** 2 + (py[:, None] * d) ** 2 + d**2)


def _visib_mask(dist_test: np.ndarray, dist_model: np.ndarray, delta: float) -> np.ndarray:
    """bop19 visibility: model surface in front of (or within delta of) the scene, or no
    measurement in the test image; only where the model is rendered."""
    diff = dist_model.astype(np.float32) - dist_test.astype(np.float32)
    return np.logical_and(np.logical_or(diff <= delta, dist_test == 0), dist_model > 0)


def visib_mask_gt(dist_test, dist_gt, delta: float) -> np.ndarray:
    """(H, W) bool visible surface of the model at the ground-truth pose (bop19 mode)."""
    return _visib_mask(np.asarray(dist_test), np.asarray(dist_gt), delta)


def visib_mask_est(dist_test, dist_est, visib_gt, delta: float) -> np.ndarray:
    """(H, W) bool visible surface at the estimated pose: the bop19 test, plus every pixel of the
    estimate's render that is visible at the ground truth (Hodan et al. ECCVW'16, eq. 14)."""
    dist_est = np.asarray(dist_est)
    v = _visib_mask(np.asarray(dist_test), dist_est, delta)
    return np.logical_or(v, np.logical_and(visib_gt, dist_est > 0))


# ---------------------------------------------------------------------------------------- VSD
def vsd(depth_est, depth_gt, depth_test, K, delta: float = VSD_DELTA_MM,
        taus: Sequence[float] = VSD_TAUS, diameter: float | None = None,
        normalized_by_diameter: bool = True, cost_type: str = "step") -> np.ndarray:
    """Visible Surface Discrepancy for several tolerances tau (bop_toolkit ``pose_error.vsd``).

    Args:
        depth_est, depth_gt: (H, W) depth (mm, 0 = background) of the model rendered alone at the
            estimated / ground-truth pose with the full-image camera ``K``.
        depth_test: (H, W) depth of the test image in mm (0 = no measurement).
        K: (3, 3) camera matrix of the test image.
        delta: visibility tolerance in mm (BOP'19: 15).
        taus: misalignment tolerances; fractions of ``diameter`` when ``normalized_by_diameter``
            (BOP'19: 0.05..0.5), else mm.
        diameter: object diameter in mm (required when ``normalized_by_diameter``).
        cost_type: ``"step"`` (BOP) or ``"tlinear"`` (ECCVW'16).
    Returns:
        (len(taus),) float64 errors in [0, 1]; all 1 when neither pose has a visible pixel.
    """
    depth_test = np.asarray(depth_test)
    if not (np.shape(depth_est) == np.shape(depth_gt) == depth_test.shape):
        raise ValueError(f"vsd: depth images differ in shape: est {np.shape(depth_est)}, "
                         f"gt {np.shape(depth_gt)}, test {depth_test.shape}")
    if normalized_by_diameter and not (diameter and diameter > 0):
        raise ValueError(f"vsd: normalized_by_diameter needs a positive diameter, got {diameter}")
    dist_test = depth_to_dist(depth_test, K)
    dist_gt = depth_to_dist(depth_gt, K)
    dist_est = depth_to_dist(depth_est, K)
    v_gt = visib_mask_gt(dist_test, dist_gt, delta)
    v_est = visib_mask_est(dist_test, dist_est, v_gt, delta)
    inter = np.logical_and(v_gt, v_est)
    union_count = int(np.logical_or(v_gt, v_est).sum())
    if union_count == 0:
        return np.ones(len(taus))
    comp_count = union_count - int(inter.sum())
    dists = np.abs(dist_gt[inter] - dist_est[inter])
    if normalized_by_diameter:
        dists = dists / diameter
    errors = np.empty(len(taus))
    for i, tau in enumerate(taus):
        if cost_type == "step":
            costs = np.count_nonzero(dists >= tau)
        elif cost_type == "tlinear":
            costs = np.minimum(dists / tau, 1.0).sum()
        else:
            raise ValueError(f"vsd: unknown cost_type {cost_type!r} (step, tlinear)")
        errors[i] = (costs + comp_count) / float(union_count)
    return errors


def overlapping_sphere_projections(radius: float, p1, p2) -> bool:
    """bop_toolkit's quick test: may the image projections of two spheres of ``radius`` (mm)
    centred at ``p1``, ``p2`` (3,) mm overlap? When not, VSD is 1 without rendering."""
    p1 = np.asarray(p1, np.float64).reshape(3)
    p2 = np.asarray(p2, np.float64).reshape(3)
    if p1[2] == 0 or p2[2] == 0:
        return False
    dist = np.linalg.norm((p1 / p1[2])[:2] - (p2 / p2[2])[:2])
    return bool(dist < radius * (1.0 / p1[2] + 1.0 / p2[2]))


# ------------------------------------------------------------------------ symmetric errors
def symmetry_arrays(syms) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a symmetry set to arrays ``(R (S, 3, 3), t (S, 3) mm)``.

    Accepts None (identity only), a list of ``{"R", "t"}`` dicts (bop_toolkit / bop.py layout), or
    an ``(R, t)`` pair of arrays.
    """
    if syms is None:
        return np.eye(3)[None], np.zeros((1, 3))
    if isinstance(syms, tuple) and len(syms) == 2 and not isinstance(syms[0], dict):
        R = np.asarray(syms[0], np.float64).reshape(-1, 3, 3)
        t = np.asarray(syms[1], np.float64).reshape(-1, 3)
    else:
        syms = list(syms)
        if not syms:
            raise ValueError("symmetry set is empty (it must at least hold the identity)")
        R = np.stack([np.asarray(s["R"], np.float64).reshape(3, 3) for s in syms])
        t = np.stack([np.asarray(s["t"], np.float64).reshape(3) for s in syms])
    if len(R) != len(t):
        raise ValueError(f"symmetry set: {len(R)} rotations but {len(t)} translations")
    return R, t


def _sym_gt_poses(R_gt, t_gt, syms):
    """Ground-truth pose composed with each symmetry: ``R_gt S_R``, ``R_gt S_t + t_gt``."""
    Rs, ts = symmetry_arrays(syms)
    R_gt = np.asarray(R_gt, np.float64).reshape(3, 3)
    t_gt = np.asarray(t_gt, np.float64).reshape(3)
    return R_gt @ Rs, ts @ R_gt.T + t_gt  # (S, 3, 3), (S, 3)


def _chunks(n_sym: int, n_pts: int):
    step = max(1, _CHUNK_FLOATS // max(1, 3 * n_pts))
    for s in range(0, n_sym, step):
        yield slice(s, min(n_sym, s + step))


def mssd(R_est, t_est, R_gt, t_gt, pts, syms=None) -> float:
    """Maximum Symmetry-aware Surface Distance (BOP'19), mm.

    ``min over symmetries S of max over vertices |(R_e p + t_e) - (R_g S)(p)|``.
    """
    pts = np.asarray(pts, np.float64)
    est = transform_pts(pts, R_est, t_est)
    Rg, tg = _sym_gt_poses(R_gt, t_gt, syms)
    best = np.inf
    for c in _chunks(len(Rg), len(pts)):
        gt = np.einsum("sij,vj->svi", Rg[c], pts) + tg[c][:, None, :]
        e = np.sqrt(((gt - est[None]) ** 2).sum(-1)).max(axis=1).min()
        best = min(best, float(e))
    return best


def mspd(R_est, t_est, R_gt, t_gt, K, pts, syms=None) -> float:
    """Maximum Symmetry-aware Projection Distance (BOP'19), px (before the 640/width scaling).

    ``min over symmetries S of max over vertices |proj(R_e p + t_e) - proj((R_g S)(p))|``.
    """
    pts = np.asarray(pts, np.float64)
    K = np.asarray(K, np.float64)
    Rg, tg = _sym_gt_poses(R_gt, t_gt, syms)
    best = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):  # points on the camera plane: inf/NaN
        est = project_pts(pts, K, R_est, t_est)
        for c in _chunks(len(Rg), len(pts)):
            x = (np.einsum("sij,vj->svi", Rg[c], pts) + tg[c][:, None, :]) @ K.T
            gt = x[..., :2] / x[..., 2:3]
            e = np.sqrt(((gt - est[None]) ** 2).sum(-1)).max(axis=1).min()
            best = min(best, float(e))
    return best


# ------------------------------------------------------------------ classical (validation)
def add(R_est, t_est, R_gt, t_gt, pts) -> float:
    """ADD: mean distance between corresponding model points at the two poses, mm."""
    d = transform_pts(pts, R_est, t_est) - transform_pts(pts, R_gt, t_gt)
    return float(np.sqrt((d**2).sum(-1)).mean())


def adi(R_est, t_est, R_gt, t_gt, pts) -> float:
    """ADI (ADD-S): mean over GT-posed points of the distance to the nearest estimate-posed
    point, mm (for objects with indistinguishable views)."""
    est = transform_pts(pts, R_est, t_est)
    gt = transform_pts(pts, R_gt, t_gt)
    try:
        # scipy: the train extra, slow to import; only ADI needs it (optional: brute force below)
        from scipy.spatial import cKDTree
    except ImportError:  # brute force in chunks
        nn = np.empty(len(gt))
        step = max(1, _CHUNK_FLOATS // max(1, len(est)))
        for s in range(0, len(gt), step):
            d2 = ((gt[s:s + step, None, :] - est[None]) ** 2).sum(-1)
            nn[s:s + step] = np.sqrt(d2.min(axis=1))
        return float(nn.mean())
    return float(cKDTree(est).query(gt, k=1)[0].mean())


def re(R_est, R_gt) -> float:
    """Rotation error: angle of ``R_est R_gt^T`` in degrees, [0, 180]."""
    R_est = np.asarray(R_est, np.float64)
    R_gt = np.asarray(R_gt, np.float64)
    if R_est.shape != (3, 3) or R_gt.shape != (3, 3):
        raise ValueError(f"re: rotations must be (3, 3), got {R_est.shape} and {R_gt.shape}")
    c = 0.5 * (np.trace(R_est @ np.linalg.inv(R_gt)) - 1.0)
    return math.degrees(math.acos(min(1.0, max(-1.0, float(c)))))


def te(t_est, t_gt) -> float:
    """Translation error: Euclidean distance, mm."""
    t_est = np.asarray(t_est, np.float64)
    t_gt = np.asarray(t_gt, np.float64)
    if t_est.size != 3 or t_gt.size != 3:
        raise ValueError(f"te: translations must have 3 numbers, got {t_est.size} and {t_gt.size}")
    return float(np.linalg.norm(t_est.reshape(3) - t_gt.reshape(3)))


ROT_OK_DEG, TRANS_OK_MM = 5.0, 50.0  # the (5 deg, 5 cm) success rule


def within_5deg_5cm(rot_deg, trans_mm) -> np.ndarray:
    """The (5 deg, 5 cm) rule on errors of any shape: ``rot < 5 deg and trans < 50 mm`` (bool)."""
    return (np.asarray(rot_deg) < ROT_OK_DEG) & (np.asarray(trans_mm) < TRANS_OK_MM)


def re_sym(R_est, R_gt, sym_R) -> float:
    """Symmetry-aware rotation error: the smallest angle (degrees) between ``R_est`` (3, 3) and
    the symmetric copies ``R_gt S`` of the ground truth, ``sym_R`` (S, 3, 3) (identity included)."""
    R_gt = np.asarray(R_gt, np.float64)
    cand = R_gt[None] @ np.asarray(sym_R, np.float64).reshape(-1, 3, 3)
    tr = np.einsum("ij,nij->n", np.asarray(R_est, np.float64), cand)
    return float(np.degrees(np.arccos(np.clip((tr.max() - 1.0) / 2.0, -1.0, 1.0))))


def _np(x) -> np.ndarray:
    """numpy float64 view of an array-like (torch tensors on any device included, duck-typed)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def pose_accuracy(R_est, t_est, R_gt, t_gt) -> dict:
    """Rotation/translation errors of a batch of poses, for training validation.

    Args:
        R_est, R_gt: (N, 3, 3) (or (3, 3)) rotations. t_est, t_gt: (N, 3) (or (3,)) mm.
            numpy arrays or torch tensors (any device).
    Returns:
        dict of (N,) numpy arrays: ``rot_err_deg`` (angle of ``R_est R_gt^T``, degrees),
        ``trans_err_mm`` (Euclidean, mm), ``within_5deg_5cm`` (bool: rot < 5 deg and trans < 50 mm).
    """
    R_est = _np(R_est).reshape(-1, 3, 3)
    R_gt = _np(R_gt).reshape(-1, 3, 3)
    t_est = _np(t_est).reshape(-1, 3)
    t_gt = _np(t_gt).reshape(-1, 3)
    n = len(R_est)
    if not (len(R_gt) == len(t_est) == len(t_gt) == n):
        raise ValueError(f"pose_accuracy: batch sizes differ: R_est {n}, t_est {len(t_est)}, "
                         f"R_gt {len(R_gt)}, t_gt {len(t_gt)}")
    # trace(R_est R_gt^T) = sum_ij R_est[i,j] R_gt[i,j]
    cos = 0.5 * (np.einsum("nij,nij->n", R_est, R_gt) - 1.0)
    rot = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    trans = np.linalg.norm(t_est - t_gt, axis=1)
    return {"rot_err_deg": rot, "trans_err_mm": trans, "within_5deg_5cm": within_5deg_5cm(rot, trans)}

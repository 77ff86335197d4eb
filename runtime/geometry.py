"""Pose geometry in numpy: rotation bins, depth bins, 2D cells, translations, the TTA group.

Torch-free (the runtime imports it); ``mrcnet/geometry.py`` holds the batched torch versions used
inside the network and builds on the constants defined here. Conventions (one place):
OpenCV camera (x right, y down, z forward), millimetres, ``X_cam = R @ X_model + t``,
quaternions ``(w, x, y, z)``. Rotation conversions: :mod:`mrcnet.runtime.rotations`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# the rotation conversions live in .rotations; re-exported here, where callers have long found them
from .rotations import matrix_to_quat, quat_to_matrix, rot6d_to_matrix, rotation_angle_deg, rotz  # noqa: F401


# --------------------------------------------------------------------------------------- bins
@dataclass(frozen=True)
class BinSpec:
    """Output discretisation of the classifier.

    n_side: HEALPix resolution of the rotation bins (12 n_side^2 sphere points x n_psi in-plane).
    n_depth: number of uniform normalised-depth bins over the dataset's depth range.
    n_cells: the 2D offset grid is n_cells x n_cells over the crop.
    """

    n_side: int = 4
    n_depth: int = 1000
    n_cells: int = 64

    @property
    def n_sphere(self) -> int:
        return 12 * self.n_side**2

    @property
    def n_psi(self) -> int:
        return int(np.floor(np.sqrt(np.pi * self.n_sphere)))

    @property
    def n_rot(self) -> int:
        return self.n_sphere * self.n_psi

    @property
    def n_cell_bins(self) -> int:
        return self.n_cells**2


PAPER_BINS = BinSpec(4, 1000, 64)  # 4608 rotation bins, 1000 depth bins, 64x64 cells


def healpix_ring_angles(n_side: int) -> tuple[np.ndarray, np.ndarray]:
    """HEALPix sphere points in the official order.

    Returns theta, phi (12 n_side^2,) in radians. Order: north polar-cap rings, south polar-cap
    rings (from the pole outwards), northern equatorial rings, southern ones (mirrored), the
    equator; within a ring phi increases. This is the order of the official rotation bins.
    """
    n = int(n_side)
    theta: list[float] = []
    phi: list[float] = []

    def ring(z: float, count: int, shift: float) -> None:
        j = np.arange(1, count + 1)
        theta.extend([np.arccos(z)] * count)
        phi.extend((j - shift) * 2.0 * np.pi / count)

    for sign in (1.0, -1.0):
        for i in range(1, n):
            ring(sign * (1.0 - i * i / (3.0 * n * n)), 4 * i, 0.5)
    for sign in (1.0, -1.0):
        for i in range(n, 2 * n):
            ring(sign * (2 * n - i) * 2.0 / (3.0 * n), 4 * n, 0.5 * (1 - (i + n) % 2))
    ring(0.0, 4 * n, 0.5 * (1 - (3 * n) % 2))
    return np.asarray(theta), np.asarray(phi)


@lru_cache(maxsize=8)
def _rotation_prototypes(n_side: int) -> np.ndarray:
    theta, phi = healpix_ring_angles(n_side)
    n_psi = BinSpec(n_side).n_psi
    psi = np.arange(n_psi) * 2.0 * np.pi / n_psi
    th, ps = np.meshgrid(theta, psi)  # (n_psi, n_sphere): psi-major
    ph, _ = np.meshgrid(phi, psi)
    q = np.stack(
        [
            np.cos(th / 2) * np.cos(ps / 2),
            np.sin(th / 2) * np.sin(ph - ps / 2),
            np.sin(th / 2) * np.cos(ph - ps / 2),
            np.cos(th / 2) * np.sin(ps / 2),
        ],
        axis=-1,
    ).reshape(-1, 4)
    q.setflags(write=False)
    return q


def rotation_prototypes(n_side: int = 4) -> np.ndarray:
    """Rotation bin centres (HEALPix x in-plane angle via the Hopf fibration).

    Returns (n_psi * 12 n_side^2, 4) float64 unit quaternions (w, x, y, z), psi-major;
    for n_side = 4: 4608 bins, equal to the official prototypes.
    """
    return _rotation_prototypes(int(n_side)).copy()


def depth_bin_centers(near: float, far: float, n: int) -> np.ndarray:
    """Centres of n uniform bins on [near, far] (normalised depth): (n,) float64."""
    return near + (np.arange(n) + 0.5) * (far - near) / n


def cell_centers(n: int) -> np.ndarray:
    """Centres of n uniform cells on [-0.5, 0.5] (crop units): (n,) float64."""
    return (np.arange(n) + 0.5) / n - 0.5


def cell_index_to_xy(index: np.ndarray, n: int) -> np.ndarray:
    """Cell index (row-major, ``iy * n + ix``) -> (..., 2) offsets (dx, dy) in crop units."""
    index = np.asarray(index)
    c = cell_centers(n)
    return np.stack([c[index % n], c[index // n]], axis=-1)


# ------------------------------------------------------------------------- TTA group, rotation checks
#: crops per detection: the test-time (TTA) group of in-plane rotations Rz(k * 360/TTA_GROUP deg), also the
#: BatchNorm group at inference (manifest ``n_rot`` = ``bn_group``); every layer reads it from here
TTA_GROUP = 4


def tta_rotations(n: int = TTA_GROUP) -> np.ndarray:
    """In-plane test-time rotations Rz(k * 360/n deg), k = 0..n-1: (n, 3, 3) float64."""
    return rotz(np.arange(n) * 2.0 * np.pi / n)


def check_rotation(R: np.ndarray, what: str = "R", atol: float = 1e-3) -> np.ndarray:
    """Validate (..., 3, 3) rotations: finite, orthonormal, det +1, else ValueError naming ``what``."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"{what}: expected (..., 3, 3) rotation matrices, got shape {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ValueError(f"{what}: rotation contains NaN or inf")
    eye = np.einsum("...ji,...jk->...ik", R, R)
    if np.abs(eye - np.eye(3)).max(initial=0.0) > atol or np.any(np.linalg.det(R) < 0):
        raise ValueError(f"{what}: rotation is not orthonormal with det +1 (tolerance {atol})")
    return R


# -------------------------------------------------------------------------------- translation
#: Crop side the normalised depth refers to: ``d = t_z / fx_256`` with ``fx_256 = fx_roi * 256 / size``
#: the focal length of the same crop at 256 px (256-px crops, docs/MODEL.md §3: ``d = t_z / fx_roi``). So a
#: dataset preset's depth range means the same distances for every crop size.
REF_CROP = 256


def persp_to_translation(dxy: np.ndarray, d: np.ndarray, K_roi: np.ndarray, size: int = 256) -> np.ndarray:
    """(dx, dy) crop offsets (..., 2) and normalised depth (...) with crop cameras (..., 3, 3)
    -> translations (..., 3) in mm.

    ``t_z = d fx 256/size; t_x = t_z/fx (w dx + w/2 - cx); t_y = t_z/fy (h dy + h/2 - cy)``,
    w = h = size (:data:`REF_CROP`).
    """
    dxy = np.asarray(dxy, np.float64)
    d = np.asarray(d, np.float64)
    K = np.asarray(K_roi, np.float64)
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    tz = d * fx * (REF_CROP / size)
    tx = tz / fx * (size * dxy[..., 0] + size / 2.0 - cx)
    ty = tz / fy * (size * dxy[..., 1] + size / 2.0 - cy)
    return np.stack([tx, ty, tz], axis=-1)


def translation_to_persp(t: np.ndarray, K_roi: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`persp_to_translation`: (..., 3) mm -> ((..., 2) offsets, (...) depth)."""
    t = np.asarray(t, np.float64)
    K = np.asarray(K_roi, np.float64)
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    d = t[..., 2] / fx * (size / REF_CROP)
    dx = (fx * t[..., 0] / t[..., 2] + cx - size / 2.0) / size
    dy = (fy * t[..., 1] / t[..., 2] + cy - size / 2.0) / size
    return np.stack([dx, dy], axis=-1), d


# ----------------------------------------------------------------------------------------- TTA
#: how the rotation of a TTA group is chosen: "score" (the official rule: the crop with the largest
#: rotation score) or "agreement" (this project's option: the crop whose turned-back rotation the most
#: other crops agree with, within :data:`TTA_AGREE_DEG`; ties and no agreement: the largest score)
TTA_SELECT_MODES = ("score", "agreement")
#: two crops agree when their turned-back rotations are less than this apart (deg)
TTA_AGREE_DEG = 30.0


def tta_select(
    R: np.ndarray, t: np.ndarray, rot_score: np.ndarray, depth_score: np.ndarray, Rz: np.ndarray,
    mode: str = "score",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select and un-rotate the TTA group of each detection (docs/MODEL.md §3).

    R (G, T, 3, 3), t (G, T, 3) mm: per-crop poses in the rotated frames; rot_score, depth_score
    (G, T): max rotation / depth logit of each crop; Rz (T, 3, 3) or (G, T, 3, 3): the in-plane
    rotations. Rotation from the crop with the largest rot_score (``mode="score"``, official) or from
    the crop most others agree with (``mode="agreement"``, :data:`TTA_SELECT_MODES`), translation from
    the crop with the largest depth_score, both mapped back by Rz^T.
    Returns R (G, 3, 3), t (G, 3), score (G,) (the chosen crop's rotation score).
    """
    if mode not in TTA_SELECT_MODES:
        raise ValueError(f"TTA selection {mode!r} is not one of {TTA_SELECT_MODES}")
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64)
    G, T = R.shape[:2]
    Rz = np.broadcast_to(np.asarray(Rz, np.float64), (G, T, 3, 3))
    g = np.arange(G)
    rs = np.asarray(rot_score, np.float64)
    if mode == "score":
        kr = rs.argmax(1)
    else:
        Ru = np.einsum("gkji,gkjl->gkil", Rz, R)  # every crop's rotation turned back: (G, T, 3, 3)
        ang = rotation_angle_deg(Ru[:, :, None], Ru[:, None, :])  # (G, T, T)
        votes = (ang < TTA_AGREE_DEG).sum(2) - 1  # agreeing other crops
        # most votes first, then the larger score (scores rank within a vote count)
        kr = np.lexsort((rs, votes), axis=-1)[:, -1]
    kt = np.asarray(depth_score).argmax(1)
    R_out = np.einsum("gji,gjk->gik", Rz[g, kr], R[g, kr])
    t_out = np.einsum("gji,gj->gi", Rz[g, kt], t[g, kt])
    return R_out, t_out, rs[g, kr]

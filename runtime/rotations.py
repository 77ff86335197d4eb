"""Rotation conversions in numpy, batched over any leading dimensions (the one place for them).

Torch-free (the runtime imports it). Conventions: a rotation matrix R (..., 3, 3) maps model to camera
coordinates (``X_cam = R @ X_model + t``); quaternions are ``(w, x, y, z)``; an axis-angle rotation is
a rotation vector (..., 3) whose direction is the axis and whose length is the angle in radians
(right-hand rule); angles in radians unless a name says ``deg``. Every function is pure and accepts
any leading shape ``...``. ``mrcnet/geometry.py`` holds the torch twins used inside the network.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "quat_to_matrix", "matrix_to_quat", "axis_angle_to_matrix", "matrix_to_axis_angle",
    "rotation_about_axis", "rot6d_to_matrix", "rotz", "random_rotation", "rotation_angle_deg",
]


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z), any non-zero norm -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    r = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    tr = np.trace(m, axis1=1, axis2=2)
    # Four candidates; pick the numerically largest denominator per matrix.
    cand = np.stack(
        [
            np.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                      m[:, 0, 2] + m[:, 2, 0]], -1),
            np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                      m[:, 1, 2] + m[:, 2, 1]], -1),
            np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                      1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
        ],
        axis=1,
    )  # (B, 4, 4)
    diag = np.stack([1 + tr, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    q = cand[np.arange(len(m)), diag.argmax(1)]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = q * np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(R.shape[:-2] + (4,))


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors (axis * angle, radians) -> (..., 3, 3) (Rodrigues; exact near 0)."""
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    zero = np.zeros(v.shape[:-1])
    K = np.stack([zero, -v[..., 2], v[..., 1], v[..., 2], zero, -v[..., 0], -v[..., 1], v[..., 0], zero],
                 axis=-1).reshape(v.shape[:-1] + (3, 3))
    a = np.sinc(theta / np.pi)  # sin(theta) / theta
    b = 0.5 * np.sinc(theta / (2 * np.pi)) ** 2  # (1 - cos(theta)) / theta^2
    return np.eye(3) + a * K + b * (K @ K)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors, angle in [0, pi] (through the quaternion)."""
    q = matrix_to_quat(R)
    w, xyz = q[..., :1], q[..., 1:]
    n = np.linalg.norm(xyz, axis=-1, keepdims=True)
    small = n < 1e-8
    # angle / sin(angle / 2) -> 2 / w as the angle goes to 0 (w ~ 1 there)
    scale = np.where(small, 2.0 / np.where(small, w, 1.0), 2.0 * np.arctan2(n, w) / np.where(small, 1.0, n))
    return xyz * scale


def rotation_about_axis(angle, axis) -> np.ndarray:
    """Rotation by ``angle`` (...) radians about ``axis`` (..., 3) (any non-zero length), right-hand
    rule -> (..., 3, 3); a scalar angle and one axis give (3, 3)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    return axis_angle_to_matrix(a * np.asarray(angle, dtype=np.float64)[..., None])


def rot6d_to_matrix(x: np.ndarray) -> np.ndarray:
    """6D rotation ``(a, b)`` (..., 6) -> (..., 3, 3) with columns [x y z]: x = a/|a|,
    z = (x cross b)/|x cross b|, y = z cross x."""
    x = np.asarray(x, dtype=np.float64)
    a, b = x[..., :3], x[..., 3:6]
    c0 = a / np.linalg.norm(a, axis=-1, keepdims=True)
    c2 = np.cross(c0, b)
    c2 = c2 / np.linalg.norm(c2, axis=-1, keepdims=True)
    c1 = np.cross(c2, c0)
    return np.stack([c0, c1, c2], axis=-1)


def rotz(theta: np.ndarray) -> np.ndarray:
    """Rotation about the camera z axis by theta (radians): (...) -> (..., 3, 3)."""
    theta = np.asarray(theta, dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    o, z = np.ones_like(theta), np.zeros_like(theta)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(theta.shape + (3, 3))


def random_rotation(rng: np.random.Generator, size=()) -> np.ndarray:
    """Rotations uniformly distributed on SO(3) (normalised Gaussian quaternions): (*size, 3, 3).

    Draws ``rng.normal(size=(*size, 4))``, so a given generator state gives the same rotations."""
    size = (size,) if np.isscalar(size) else tuple(size)
    return quat_to_matrix(rng.normal(size=size + (4,)))


def rotation_angle_deg(R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations (..., 3, 3) x (..., 3, 3) -> (...) degrees."""
    tr = np.einsum("...ij,...ij->...", np.asarray(R1, np.float64), np.asarray(R2, np.float64))
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))

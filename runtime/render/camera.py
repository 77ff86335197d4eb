"""Camera maths for the renderer: input checks, the OpenGL projection of an OpenCV camera, depth range.

Convention: OpenCV (x right, y down, z forward), millimetres, ``X_cam = R X_model + t``; the pixel
``(u, v) = (i, j)`` spans ``[i, i+1) x [j, j+1)`` and is covered when its centre ``(i+0.5, j+0.5)``
lies inside a projected triangle.

The projection maps the image point ``(u, v)`` to OpenGL *window* coordinates ``(u, v)`` exactly
(window y is the image row, so the framebuffer's first row in memory is the image's top row and no
flip is needed). Depth-test precision comes from a per-view near/far tight around the object's
bounding sphere; the depth values returned to the user are the interpolated camera-space z, not
decoded from the depth buffer, so they do not depend on near/far.
"""
from __future__ import annotations

import numpy as np

#: nearest depth (mm) ever rendered: geometry closer than this to the camera plane is clipped
NEAR_MM = 1.0
#: tolerance of the orthonormality check of rotations (max |R R^T - I|)
ORTHO_TOL = 1e-3


def check_poses(R, t, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch of poses.

    Args:
        R: (N, 3, 3) or (3, 3) rotations (model -> camera). t: (N, 3) or (3,) translations, mm.
        n: expected N, or None.
    Returns:
        (R (N,3,3) float64, t (N,3) float64).
    Raises:
        ValueError: wrong shape, NaN/inf, or a non-rotation, naming the view.
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if R.shape == (3, 3):
        R = R[None]
    if t.shape == (3,):
        t = t[None]
    if R.ndim != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"R must be (N, 3, 3), got shape {R.shape}")
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"t must be (N, 3) mm, got shape {t.shape}")
    if n is not None and (len(R) != n or len(t) != n):
        raise ValueError(f"expected {n} poses, got R {R.shape} and t {t.shape}")
    if len(R) != len(t):
        raise ValueError(f"R and t disagree on the number of views: {R.shape} vs {t.shape}")
    bad = ~np.isfinite(R).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"R[{int(np.argmax(bad))}] contains NaN or inf")
    bad = ~np.isfinite(t).all(axis=1)
    if bad.any():
        raise ValueError(f"t[{int(np.argmax(bad))}] contains NaN or inf")
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    if (err > ORTHO_TOL).any():
        i = int(np.argmax(err > ORTHO_TOL))
        raise ValueError(f"R[{i}] is not orthonormal (max |R R^T - I| = {err[i]:.3g} > {ORTHO_TOL:g})")
    det = np.linalg.det(R)
    if (det < 0).any():
        i = int(np.argmax(det < 0))
        raise ValueError(f"R[{i}] is a reflection (det = {det[i]:.3g}), not a rotation")
    return R, t


def check_intrinsics(K, n: int) -> np.ndarray:
    """Validate camera matrices: (N, 3, 3) or one (3, 3) shared by all N views.

    Returns:
        (N, 3, 3) float64.
    Raises:
        ValueError: wrong shape, NaN/inf, non-positive focal length or a last row other than (0,0,1).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (n, 3, 3))
    if K.shape != (n, 3, 3):
        raise ValueError(f"K must be (3, 3) or ({n}, 3, 3), got shape {K.shape}")
    bad = ~np.isfinite(K).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"K[{int(np.argmax(bad))}] contains NaN or inf")
    bad = (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"K[{i}] has a non-positive focal length (fx={K[i, 0, 0]:g}, fy={K[i, 1, 1]:g})")
    bad = (np.abs(K[:, 1, 0]) > 1e-6 * K[:, 1, 1]) | (np.abs(K[:, 2] - [0.0, 0.0, 1.0]).max(axis=1) > 1e-6)
    if bad.any():
        raise ValueError(f"K[{int(np.argmax(bad))}] is not an upper-triangular camera matrix with K[2,2] = 1")
    return K


def check_size(width, height) -> tuple[int, int]:
    """(width, height) as positive ints, or ValueError."""
    w, h = int(width), int(height)
    if w != width or h != height or w < 1 or h < 1:
        raise ValueError(f"image size must be positive integers, got width={width!r}, height={height!r}")
    return w, h


def projection(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """OpenGL clip matrix of an OpenCV camera: camera coordinates (mm) -> clip coordinates.

    ``ndc_x = 2u/W - 1`` and ``ndc_y = 2v/H - 1`` with ``(u, v)`` the OpenCV pixel coordinates
    (skew included), so the viewport maps ``(u, v)`` to window ``(u, v)``; ``ndc_z`` maps
    ``z = near -> -1`` and ``z = far -> +1``; ``clip_w = z``.

    Returns:
        (4, 4) float64, row-major (transpose before uploading as a GLSL mat4).
    """
    fx, s, cx = K[0]
    fy, cy = K[1, 1], K[1, 2]
    P = np.zeros((4, 4))
    P[0] = [2 * fx / width, 2 * s / width, 2 * cx / width - 1, 0]
    P[1] = [0, 2 * fy / height, 2 * cy / height - 1, 0]
    P[2] = [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)]
    P[3] = [0, 0, 1, 0]
    return P


def depth_range(z_centre, radius) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near/far planes (mm) around bounding spheres at camera depths ``z_centre`` with ``radius``.

    Nothing of the sphere in front of :data:`NEAR_MM` is clipped.

    Args:
        z_centre: (N,) camera-space z of the sphere centres, mm. radius: (N,) or scalar, mm.
    Returns:
        (near (N,), far (N,), visible (N,) bool): ``visible`` False when the sphere lies wholly
        behind ``NEAR_MM`` (nothing to draw).
    """
    z = np.asarray(z_centre, dtype=np.float64)
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), z.shape)
    lo, hi = z - r, z + r
    near = np.maximum(NEAR_MM, 0.99 * lo - 1e-3)
    far = np.maximum(1.01 * hi + 1.0, 2.0 * near)
    return near, far, hi > NEAR_MM

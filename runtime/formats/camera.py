"""Camera files for ``mrcnet-run`` (no torch): one K for a sequence, or one per frame.

Accepted JSON layouts (K in pixels, OpenCV convention):

- ``{"cam_K": [9 numbers]}`` (a BOP camera), ``{"K": [[3x3]]}`` or ``{"fx", "fy", "cx", "cy"}``,
  each optionally with ``"width"`` and ``"height"`` (the frames must then have that size);
- a BOP ``scene_camera.json`` ``{"<im_id>": {"cam_K": [9], ...}, ...}`` keyed by frame id.

Lens distortion (one K for the sequence only), OpenCV's model and order ``k1, k2, p1, p2[, k3[, k4,
k5, k6[, s1..s4[, tx, ty]]]]`` (4, 5, 8, 12 or 14 numbers):

- the project's JSON: ``"dist_coeffs": [...]`` (or ``"D"``) next to the K;
- ROS ``CameraInfo``-style ``{"K": [9], "D": [...], "width", "height", "distortion_model"}`` as
  JSON or YAML (``.yaml`` / ``.yml``); ``distortion_model`` must be ``plumb_bob`` or
  ``rational_polynomial`` (fisheye / equidistant is not supported);
- the YAML of ROS ``camera_calibration``: ``image_width``, ``image_height``, ``camera_matrix:
  {rows, cols, data}``, ``distortion_coefficients: {rows, cols, data}``, ``distortion_model``.

All-zero coefficients mean no distortion. ``Camera.dist`` holds them (float64, None when none);
``mrcnet-run`` undistorts every frame before the pipeline (see :class:`mrcnet.runtime.video_io.Undistorter`).

Every K is checked with :func:`mrcnet.runtime.preprocess.check_camera` (finite, last row 0 0 1,
focal lengths >= 1 px, principal point near the image). A bad fixed K is an error at load; a bad
per-frame K only fails its own frame (``Camera.K`` raises ``InputError`` naming the file and frame).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..preprocess import InputError, check_camera
from .bop import BopFormatError, load_json
from .files import InputFileError, load_yaml


class CameraFileError(ValueError):
    """A camera file that cannot be used; the message names the file."""


def camera_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(3, 3) pinhole matrix from intrinsics in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)


#: lengths of OpenCV's distortion vector
DIST_LENGTHS = (4, 5, 8, 12, 14)
#: ROS distortion models that are OpenCV's k1, k2, p1, p2[, k3...] vector
DIST_MODELS = ("plumb_bob", "rational_polynomial")
_DIST_KEYS = ("dist_coeffs", "D", "distortion_coefficients")


def _matrix_data(v):
    """The ``data`` of a camera_calibration YAML matrix ``{rows, cols, data}``, else v itself."""
    return v["data"] if isinstance(v, dict) and "data" in v else v


def _dist_from_record(r) -> Optional[np.ndarray]:
    """(N,) float64 distortion coefficients of a camera record (None when absent or all zero);
    ValueError naming the problem for a bad length, a non-finite value or an unsupported model."""
    if not isinstance(r, dict):
        return None
    key = next((k for k in _DIST_KEYS if k in r), None)
    model = r.get("distortion_model")
    if model is not None and str(model) not in DIST_MODELS:
        raise ValueError(f"distortion_model {model!r} is not supported (use one of {', '.join(DIST_MODELS)})")
    if key is None:
        return None
    D = np.asarray(_matrix_data(r[key]), np.float64).reshape(-1)
    if D.size == 0:
        return None
    if D.size not in DIST_LENGTHS:
        raise ValueError(f"{key} has {D.size} numbers; OpenCV distortion needs 4, 5, 8, 12 or 14 "
                         "(k1, k2, p1, p2[, k3[, k4, k5, k6[, s1..s4[, tx, ty]]]])")
    if not np.all(np.isfinite(D)):
        raise ValueError(f"{key} is not finite: {D.tolist()}")
    return None if not D.any() else D


def _K_from_record(r) -> np.ndarray:
    """(3, 3) float64 K of one camera record; ValueError / TypeError / KeyError when malformed."""
    if isinstance(r, dict):
        if "camera_matrix" in r:
            return np.asarray(_matrix_data(r["camera_matrix"]), np.float64).reshape(3, 3)
        if "cam_K" in r:
            return np.asarray(r["cam_K"], np.float64).reshape(3, 3)
        if "K" in r:
            return np.asarray(r["K"], np.float64).reshape(3, 3)
        if all(k in r for k in ("fx", "fy", "cx", "cy")):
            return camera_matrix(*(float(r[k]) for k in ("fx", "fy", "cx", "cy")))
        raise ValueError("expected cam_K, K or fx/fy/cx/cy")
    return np.asarray(r, np.float64).reshape(3, 3)


def _size(r) -> Optional[tuple[int, int]]:
    if isinstance(r, dict) and "image_width" in r and "image_height" in r:  # camera_calibration YAML
        r = {"width": r["image_width"], "height": r["image_height"]}
    if isinstance(r, dict) and "width" in r and "height" in r:
        w, h = r["width"], r["height"]
        if isinstance(w, bool) or isinstance(h, bool) or not isinstance(w, int) or not isinstance(h, int) \
                or w <= 0 or h <= 0:
            raise ValueError(f"width/height must be positive integers, got {w!r}, {h!r}")
        return (w, h)
    return None


class Camera:
    """Camera intrinsics for a sequence: one K for all frames, or one per frame (keyed by frame
    id; a frame without its own K uses the nearest earlier one). ``K(frame_id) -> (3, 3)``.

    size: (width, height) the frames must have, when the camera file says so. source: the file
    (for messages). per_frame values are (3, 3) arrays or, for a frame whose K is unusable, the
    reason (str): ``K()`` of that frame raises ``InputError``. dist: (N,) OpenCV distortion
    coefficients of a fixed-K camera (None: no distortion).
    """

    def __init__(self, K=None, per_frame: Optional[dict] = None, size: Optional[tuple[int, int]] = None,
                 source: str = "camera", dist=None):
        self.fixed = None if K is None else np.asarray(K, np.float64)
        self.dist = None if dist is None else np.asarray(dist, np.float64).reshape(-1)
        self.per_frame = dict(sorted((per_frame or {}).items()))
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.source = source

    def K(self, frame_index: int) -> np.ndarray:
        if self.fixed is not None:
            return self.fixed
        keys = [k for k in self.per_frame if k <= frame_index]
        key = keys[-1] if keys else next(iter(self.per_frame))
        K = self.per_frame[key]
        if isinstance(K, str):
            raise InputError(f"camera file {self.source}: frame {key}: {K}")
        return K

    def check_frame(self, frame_index: int, width: int, height: int) -> np.ndarray:
        """K of the frame, checked against the frame's size (InputError naming the camera)."""
        if self.size is not None and self.size != (width, height):
            raise InputError(f"camera {self.source} is for {self.size[0]}x{self.size[1]} images, the frame is "
                             f"{width}x{height}")
        return check_camera(self.K(frame_index), f"camera {self.source} (frame {frame_index})", (width, height))

    @classmethod
    def load(cls, path) -> "Camera":
        """Read a camera JSON or YAML (see the module docstring); :class:`CameraFileError` naming the file."""
        path = os.fspath(path)
        if path.lower().endswith((".yaml", ".yml")):
            try:
                d = load_yaml(path)
            except InputFileError as e:
                raise CameraFileError(f"camera file {e}") from None
        else:
            try:
                d = load_json(path)
            except BopFormatError as e:
                raise CameraFileError(f"camera file {e}") from None
        try:
            if isinstance(d, dict) and d and all(str(k).lstrip("-").isdigit() for k in d):
                if any(isinstance(v, dict) and any(key in v for key in _DIST_KEYS) for v in d.values()):
                    raise ValueError("distortion coefficients need one K for the whole sequence, not one per frame")
                per_frame = {}
                for k, v in d.items():
                    try:
                        per_frame[int(k)] = check_camera(_K_from_record(v), "cam_K")
                    except (InputError, ValueError, TypeError, KeyError) as e:
                        per_frame[int(k)] = str(e)
                if all(isinstance(v, str) for v in per_frame.values()):
                    raise ValueError(f"no usable K (first: {next(iter(per_frame.values()))})")
                return cls(per_frame=per_frame, source=path)
            size = _size(d)
            return cls(check_camera(_K_from_record(d), "K", size), size=size, source=path, dist=_dist_from_record(d))
        except (InputError, ValueError, TypeError, KeyError) as e:
            raise CameraFileError(f"camera file {path}: {e}") from None

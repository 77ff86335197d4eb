"""Tracking by projection (no torch): after the first frame, each object's box is its model
projected at the previous pose; re-detect when a score drops or an object leaves the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .detections import Detection


def project_points(X: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model points (V, 3) mm at pose (R (3,3), t (3,) mm) through camera K (3,3)
    -> (pixels (V, 2) float64, depth z (V,) mm). Points with z <= 0 get NaN pixels."""
    Xc = np.asarray(X, np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64).reshape(1, 3)
    z = Xc[:, 2]
    p = Xc @ np.asarray(K, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[:, :2] / p[:, 2:3]
    uv[z <= 0] = np.nan
    return uv, z


def projected_box(vertices: np.ndarray, R, t, K) -> Optional[np.ndarray]:
    """Tight box (4,) xyxy in pixels (unclipped) of the projected model, or None if any vertex is
    at or behind the camera plane (the projection is then not a box)."""
    uv, z = project_points(vertices, R, t, K)
    if len(z) == 0 or np.any(z <= 0):
        return None
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])


def visible_fraction(box: np.ndarray, width: int, height: int) -> float:
    """Share of the box area inside the (width x height) image, in [0, 1]."""
    w, h = box[2] - box[0], box[3] - box[1]
    if w <= 0 or h <= 0:
        return 0.0
    iw = min(box[2], width) - max(box[0], 0)
    ih = min(box[3], height) - max(box[1], 0)
    return float(max(iw, 0) * max(ih, 0) / (w * h))


@dataclass
class Track:
    """One followed object: last pose, its score, the score at its (re-)detection, next box."""

    obj_id: int
    R: np.ndarray
    t: np.ndarray
    score: float
    ref_score: float
    box: np.ndarray
    low: int = 0  # frames in a row with a low score (below rel_drop x ref_score or min_score)


class Tracker:
    """Boxes for the next frame from the poses of the last one.

    vertices: {obj_id: (V, 3) mm model vertices}. detect: the re-detection source
    ``(frame_index, frame_bgr) -> list[Detection]`` (JSON file or ONNX detector).
    An object is lost (and the next frame re-detected) when its score falls below ``min_score``
    (absolute; None: not used) or below ``rel_drop`` x its score at detection (when that is
    positive) in ``patience`` frames in a row (one noisy frame does not drop a track), when its
    projected box is less than ``min_visible`` inside the image or narrower
    than ``min_size`` px, or when it is behind the camera. Scores are the pipeline's (max rotation logit of the chosen crop).
    """

    def __init__(self, vertices: dict, detect: Callable, min_score: Optional[float] = None,
                 rel_drop: float = 0.5, min_visible: float = 0.3, min_size: float = 8.0,
                 patience: int = 2):
        self.vertices = {int(k): np.asarray(v, np.float64) for k, v in vertices.items()}
        self.detect = detect
        self.min_score = min_score
        self.rel_drop = rel_drop
        self.min_visible = min_visible
        self.min_size = min_size
        self.patience = max(int(patience), 1)
        self.tracks: dict[int, Track] = {}
        self.need_detection = True
        self.lost: list[tuple[int, str]] = []  # (obj_id, why) of the last update
        self._detected: set[int] = set()  # objects whose box came from the detector this frame

    @property
    def detected(self) -> frozenset:
        """Object ids whose box came from the detector in the last :meth:`detections` call
        (empty when every box was a projected track): a re-detection happened when non-empty."""
        return frozenset(self._detected)

    def detections(self, frame_index: int, frame_bgr: np.ndarray) -> list[Detection]:
        """Detections for this frame: the detector's when (re-)detection is due, else the
        projected boxes of the live tracks. Returns Detection objects with source "json"/"onnx"
        (detected) or "track"."""
        if self.need_detection or not self.tracks:
            dets = self.detect(frame_index, frame_bgr)
            if dets:
                self._detected = {d.obj_id for d in dets}
                return dets
            # nothing detected here: keep following what we have
        self._detected = set()
        return [Detection(tr.obj_id, tr.box.copy(), tr.score, "track") for tr in self.tracks.values()]

    def update(self, poses, K: np.ndarray, image_size: tuple[int, int]) -> None:
        """Take the frame's poses (``pipeline.Pose``); image_size = (width, height). The tracks
        become exactly the frame's poses that are still good; a previous track without a pose
        this frame is lost too."""
        W, H = image_size
        self.lost = []
        new: dict[int, Track] = {}
        for p in sorted(poses, key=lambda p: -float(p.score)):
            if p.obj_id in new:  # one track per object id: the best-scored pose
                continue
            verts = self.vertices.get(p.obj_id)
            old = self.tracks.get(p.obj_id)
            fresh = old is None or p.obj_id in self._detected
            ref = float(p.score) if fresh else old.ref_score
            box = projected_box(verts, p.R, p.t, K) if verts is not None else None
            why, low = "", 0
            if box is None:
                why = "behind the camera" if verts is not None else "no model"
            elif visible_fraction(box, W, H) < self.min_visible:
                why = "left the image"
            elif min(box[2] - box[0], box[3] - box[1]) < self.min_size:
                why = "box smaller than %g px" % self.min_size
            elif self.min_score is not None and p.score < self.min_score:
                why, low = f"score {p.score:.3f} < {self.min_score}", 1
            elif ref > 0 and p.score < self.rel_drop * ref:
                why, low = f"score {p.score:.3f} < {self.rel_drop} x {ref:.3f}", 1
            if low:
                low += 0 if fresh else old.low
                if low < self.patience:  # fewer low-score frames in a row than allowed: keep it
                    why = ""
            if why:
                self.lost.append((p.obj_id, why))
                continue
            new[p.obj_id] = Track(p.obj_id, np.asarray(p.R), np.asarray(p.t), float(p.score), ref,
                                  np.clip(box, [0, 0, 0, 0], [W, H, W, H]), low)
        lost_ids = {k for k, _ in self.lost}
        self.lost += [(k, "not estimated") for k in self.tracks if k not in new and k not in lost_ids]
        self.tracks = new
        self.need_detection = bool(self.lost) or not self.tracks

    def reset(self) -> None:
        self.tracks.clear()
        self.need_detection = True

"""Frames in, results out (no torch): video files or image folders; poses.jsonl, BOP CSV, video.

Every writer flushes per frame, so an interrupted run keeps every finished frame.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class SourceError(ValueError):
    """An input that cannot be read (missing, not a video/image folder); names the input."""


@dataclass
class Frame:
    """One input frame: index (0-based, = BOP im_id / detections image_id), name (file or
    "frame N"), image (H, W, 3) uint8 BGR or None when unreadable, error (why it is None)."""

    index: int
    name: str
    image: Optional[np.ndarray]
    error: str = ""


class FrameSource:
    """Frames of a video file or of a folder of images (sorted by file name).

    fps: the video's frame rate (folders: ``fps`` argument, default 30). ``len()`` is the frame
    count (a video's may be an estimate). Iterating yields :class:`Frame`; an unreadable image or a
    corrupt video frame yields ``image=None`` with ``error`` set, and reading goes on.
    """

    def __init__(self, path, fps: float = 30.0):
        self.path = Path(os.fspath(path))
        if not self.path.exists():
            raise SourceError(f"input not found: {self.path}")
        self.fps = float(fps)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not self.files:
                raise SourceError(f"input {self.path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            self.count = len(self.files)
            self.is_video = False
        else:
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise SourceError(f"input {self.path}: not a readable video (or image folder)")
            self.count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or self.fps
            cap.release()
            self.files = []
            self.is_video = True

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Frame]:
        if not self.is_video:
            for i, p in enumerate(self.files):
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                yield Frame(i, p.name, img, "" if img is not None else f"cannot decode image {p}")
            return
        cap = cv2.VideoCapture(str(self.path))
        i, misses = 0, 0
        try:
            while True:
                ok, img = cap.read()
                if ok and img is not None:
                    misses = 0
                    yield Frame(i, f"frame {i}", img)
                else:
                    # A failed read before the announced end is a corrupt frame: report, go on.
                    if i >= self.count or misses >= 3:
                        return
                    misses += 1
                    yield Frame(i, f"frame {i}", None, f"{self.path}: cannot decode frame {i}")
                i += 1
        finally:
            cap.release()


class JsonlWriter:
    """``poses.jsonl``: one JSON object per line and frame, flushed (and fsynced) per frame."""

    def __init__(self, path, fsync: bool = False):
        self.path = Path(path)
        self.f = open(self.path, "w")
        self.fsync = fsync

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.f.flush()
        if self.fsync:
            os.fsync(self.f.fileno())

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path) -> list[dict]:
    """All complete lines of a ``poses.jsonl`` (a truncated last line is ignored)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


class BopCsvWriter:
    """BOP'19+ results CSV: ``scene_id,im_id,obj_id,score,R,t,time`` (R row-major 9 numbers, t mm,
    time = seconds for the whole image, the same for every object of it; -1 if unknown)."""

    HEADER = "scene_id,im_id,obj_id,score,R,t,time\n"

    def __init__(self, path, scene_id: int = 0):
        self.f = open(path, "w")
        self.f.write(self.HEADER)
        self.scene_id = int(scene_id)

    def write(self, im_id: int, poses, time_s: float = -1.0) -> None:
        for p in poses:
            R = " ".join(f"{v:.8f}" for v in np.asarray(p.R).reshape(-1))
            t = " ".join(f"{v:.6f}" for v in np.asarray(p.t).reshape(-1))
            self.f.write(f"{self.scene_id},{int(im_id)},{int(p.obj_id)},{float(p.score):.6f},{R},{t},{time_s:.6f}\n")
        self.f.flush()

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


class VideoWriter:
    """MP4 writer (OpenCV, ``mp4v``) opened on the first frame's size; frames of another size are
    resized. ``close()`` finalises the file (call it in ``finally`` so interrupts keep the video)."""

    def __init__(self, path, fps: float = 30.0, fourcc: str = "mp4v"):
        self.path = str(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.fourcc = fourcc
        self.writer = None
        self.size = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if self.writer is None:
            self.size = (image.shape[1], image.shape[0])
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
            if not self.writer.isOpened():
                raise SourceError(f"cannot write video {self.path} (OpenCV without an mp4 encoder?)")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size)
        self.writer.write(np.ascontiguousarray(image, np.uint8))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


# ------------------------------------------------------------------------------------ cameras
def _K_from_record(r, where: str) -> np.ndarray:
    if isinstance(r, dict):
        if "cam_K" in r:
            K = np.asarray(r["cam_K"], np.float64).reshape(3, 3)
        elif "K" in r:
            K = np.asarray(r["K"], np.float64).reshape(3, 3)
        elif all(k in r for k in ("fx", "fy", "cx", "cy")):
            K = camera_matrix(r["fx"], r["fy"], r["cx"], r["cy"])
        else:
            raise ValueError("expected cam_K, K or fx/fy/cx/cy")
    else:
        K = np.asarray(r, np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"not a camera matrix: {K.tolist()}")
    return K


def camera_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(3, 3) pinhole matrix from intrinsics in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)


class Camera:
    """Camera intrinsics for a sequence: one K for all frames, or one per frame (BOP
    ``scene_camera.json``, keyed by frame index; a frame without its own K uses the nearest
    earlier one). ``K(frame_index) -> (3, 3) float64``."""

    def __init__(self, K=None, per_frame: Optional[dict] = None):
        self.fixed = None if K is None else np.asarray(K, np.float64)
        self.per_frame = dict(sorted((per_frame or {}).items()))

    def K(self, frame_index: int) -> np.ndarray:
        if self.fixed is not None:
            return self.fixed
        keys = [k for k in self.per_frame if k <= frame_index]
        return self.per_frame[keys[-1] if keys else next(iter(self.per_frame))]

    @classmethod
    def load(cls, path) -> "Camera":
        """From JSON: ``{"cam_K": [9 numbers]}`` (BOP camera), ``{"K": [[3x3]]}``,
        ``{"fx", "fy", "cx", "cy"}``, or a BOP ``scene_camera.json`` ``{"0": {"cam_K": ...}, ...}``."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SourceError(f"camera file not found: {path}")
        try:
            with open(path) as f:
                d = json.load(f)
            if isinstance(d, dict) and d and all(str(k).isdigit() for k in d):
                return cls(per_frame={int(k): _K_from_record(v, path) for k, v in d.items()})
            return cls(_K_from_record(d, path))
        except (OSError, json.JSONDecodeError, ValueError, TypeError, KeyError) as e:
            raise SourceError(f"camera file {path}: {e}") from None

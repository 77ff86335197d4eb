"""Frames in, results out (no torch): video files or image folders; poses.jsonl, BOP CSV, video.

Every writer flushes per frame, so an interrupted run keeps every finished frame. The file
formats have one owner each in :mod:`mrcnet.runtime.formats` (``poses.jsonl``, the BOP CSV,
camera files); their names are re-exported here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from .formats.bop import BopResultsWriter
from .formats.camera import Camera, CameraFileError, camera_matrix  # noqa: F401  (re-exported)
from .formats.poses_jsonl import PosesJsonlWriter as JsonlWriter  # noqa: F401  (re-exported)
from .formats.poses_jsonl import read_poses_jsonl as read_jsonl  # noqa: F401  (re-exported)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class SourceError(ValueError):
    """An input that cannot be read (missing, not a video/image folder); names the input."""


@dataclass
class Frame:
    """One input frame: index (the frame id: BOP im_id / detections image_id / camera key; for an
    image folder the number in a numeric file name such as ``000042.png``, else the position),
    name (file or "frame N"), image (H, W, 3) uint8 BGR or None when unreadable, error (why)."""

    index: int
    name: str
    image: Optional[np.ndarray]
    error: str = ""


#: consecutive unreadable video frames after which reading skips ahead (seek), and gives up
VIDEO_SEEK_AFTER = 3
VIDEO_GIVE_UP_AFTER = 50


class FrameSource:
    """Frames of a video file or of a folder of images.

    Folders: when every image file name is a number (BOP ``000001.png``...), frames are sorted by
    it and that number is the frame id (1-based or sparse names keep their ids); otherwise frames
    are sorted by name and numbered by position. Two files with the same number raise SourceError.
    fps: the video's frame rate (folders: ``fps`` argument, default 30). ``len()`` is the frame
    count (a video's may be an estimate). Iterating yields :class:`Frame`; an unreadable image or a
    corrupt video frame yields ``image=None`` with ``error`` set, and reading goes on (a video is
    read up to its announced frame count, seeking past damage); ``stopped_early`` then says why
    reading ended before the announced count (None otherwise).
    """

    def __init__(self, path, fps: float = 30.0):
        self.path = Path(os.fspath(path))
        if not self.path.exists():
            raise SourceError(f"input not found: {self.path}")
        self.fps = float(fps)
        self.stopped_early: Optional[str] = None
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise SourceError(f"input {self.path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            if all(p.stem.isdigit() for p in files):
                ids = [int(p.stem) for p in files]
                dup = sorted({i for i in ids if ids.count(i) > 1})
                if dup:
                    raise SourceError(f"input {self.path}: several images with frame number {dup[0]}")
                order = sorted(range(len(files)), key=lambda k: ids[k])
                self.files = [files[k] for k in order]
                self.ids = [ids[k] for k in order]
            else:
                self.files = files
                self.ids = list(range(len(files)))
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
            self.ids = []
            self.is_video = True

    def __len__(self) -> int:
        return self.count

    def first_frame(self) -> Optional[Frame]:
        """The first readable frame (None when there is none), read once without consuming the
        source: what the caller checks the camera against before a run."""
        frames = iter(self)
        try:
            for frame in frames:
                if frame.image is not None:
                    return frame
            return None
        finally:
            frames.close()  # releases the video

    def __iter__(self) -> Iterator[Frame]:
        if not self.is_video:
            for i, p in zip(self.ids, self.files):
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
                    if i >= self.count:  # the end (the count may be an estimate)
                        return
                    misses += 1
                    if misses >= VIDEO_GIVE_UP_AFTER:
                        self.stopped_early = (f"{self.path}: cannot decode frames {i - misses + 1}..{i}; stopped "
                                              f"reading at frame {i} of {self.count} announced")
                        return
                    yield Frame(i, f"frame {i}", None, f"{self.path}: cannot decode frame {i}")
                    if misses >= VIDEO_SEEK_AFTER:  # a damaged stretch: skip ahead to the next frame
                        cap.set(cv2.CAP_PROP_POS_FRAMES, i + 1)
                i += 1
        finally:
            cap.release()


class Undistorter:
    """Removes lens distortion from frames of one camera: ``undistort(image) -> image``.

    K: (3, 3) pixels; dist: OpenCV coefficients k1, k2, p1, p2[, k3, ...]. The remap maps are
    computed once per frame size (``cv2.initUndistortRectifyMap``) with the same K as the new
    camera matrix, so the undistorted frame is a pinhole image with intrinsics K: the K the
    pipeline, detections and overlays use. Pixels that fall outside the distorted frame are black;
    nothing is cropped or rescaled. Interpolation: bilinear.
    """

    def __init__(self, K, dist):
        self.K = np.asarray(K, np.float64).reshape(3, 3)
        self.dist = np.asarray(dist, np.float64).reshape(-1)
        self._maps: dict = {}

    def maps(self, width: int, height: int):
        """(map1, map2) fixed-point remap maps for a width x height frame (computed once)."""
        key = (int(width), int(height))
        if key not in self._maps:
            self._maps[key] = cv2.initUndistortRectifyMap(self.K, self.dist, None, self.K, key, cv2.CV_16SC2)
        return self._maps[key]

    def undistort(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 distorted frame -> (H, W, C) uint8 undistorted frame."""
        m1, m2 = self.maps(image.shape[1], image.shape[0])
        return cv2.remap(image, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


class BopCsvWriter:
    """The BOP'19 results CSV of a run (:class:`~mrcnet.runtime.formats.bop.BopResultsWriter`):
    one flushed write per frame; ``score`` is the detection score (the BOP meaning, see
    :mod:`mrcnet.runtime.formats.bop`), time the seconds for the whole frame (-1 if unknown).
    rows: rows of an interrupted run being resumed, written first."""

    def __init__(self, path, scene_id: int = 0, rows=()):
        self.scene_id = int(scene_id)
        self._w = BopResultsWriter(path, rows)

    def write(self, im_id: int, poses, time_s: float = -1.0) -> None:
        self._w.write_rows([{"scene_id": self.scene_id, "im_id": int(im_id), "obj_id": int(p.obj_id),
                             "score": float(getattr(p, "det_score", p.score)), "R": p.R, "t": p.t,
                             "time": time_s} for p in poses])

    def close(self) -> None:
        self._w.close()


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

"""Frames in, results out (no torch): video files, image folders or globs, cameras, streams; poses.jsonl, BOP CSV, video.

Every writer flushes per frame, so an interrupted run keeps every finished frame. The file
formats have one owner each in :mod:`mrcnet.runtime.formats` (``poses.jsonl``, the BOP CSV,
camera files); their names are re-exported here.
"""
from __future__ import annotations

import glob
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


#: URL schemes read as network streams (OpenCV's FFmpeg back end)
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "rtp://", "rtmp://", "tcp://")
GLOB_CHARS = "*?["


def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build reads GStreamer pipelines (its build information says so)."""
    return any("GStreamer" in line and "YES" in line for line in cv2.getBuildInformation().splitlines())


def describe_source(spec) -> tuple[str, object]:
    """(kind, what to open) of an input: ``("camera", index)`` for an integer or a digit string,
    ``("stream", url)`` for rtsp/http(s)/udp/... URLs, ``("gstreamer", pipeline)`` for a string
    with ``!`` (GStreamer elements), ``("glob", pattern)`` for a pattern with ``*?[`` that is not
    a file, else ``("path", Path)`` (a video file or an image folder)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return "camera", spec
    text = os.fspath(spec) if not isinstance(spec, str) else spec
    if text.isdigit():
        return "camera", int(text)
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream", text
    if "!" in text and not os.path.exists(text):
        return "gstreamer", text
    if any(c in text for c in GLOB_CHARS) and not os.path.exists(text):
        return "glob", text
    return "path", Path(text)


def _numbered(files: list, what: str) -> tuple[list, list]:
    """(files, frame ids): by the number in the file name when every name is a number, else by
    name and position. SourceError naming ``what`` when two files have the same number."""
    files = sorted(files)
    if all(p.stem.isdigit() for p in files):
        ids = [int(p.stem) for p in files]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise SourceError(f"input {what}: several images with frame number {dup[0]}")
        order = sorted(range(len(files)), key=lambda k: ids[k])
        return [files[k] for k in order], [ids[k] for k in order]
    return files, list(range(len(files)))


class FrameSource:
    """Frames of one input: a video file, a folder of images, a glob of images, a camera (its
    index: ``0`` is ``/dev/video0``), a network stream (``rtsp://``, ``http(s)://``, ``udp://``...,
    through OpenCV's FFmpeg back end) or a GStreamer pipeline (a string with ``!``, where OpenCV was
    built with GStreamer; ending in ``appsink``).

    Folders and globs: when every image file name is a number (BOP ``000001.png``...), frames are
    sorted by it and that number is the frame id (1-based or sparse names keep their ids); otherwise
    frames are sorted by name and numbered by position. Two files with the same number raise
    SourceError. fps: the video's or stream's frame rate (folders: ``fps`` argument, default 30).
    ``len()`` is the frame count (a video's may be an estimate; 0 for live sources: unknown).
    ``live``: a camera, stream or pipeline (read once, in order, until it stops delivering frames).
    Iterating yields :class:`Frame`; an unreadable image or a corrupt video frame yields
    ``image=None`` with ``error`` set, and reading goes on (a video is read up to its announced frame
    count, seeking past damage); ``stopped_early`` then says why reading ended before the announced
    count (None otherwise). Every input that cannot be opened raises :class:`SourceError` (one line
    naming the input).
    """

    def __init__(self, path, fps: float = 30.0):
        self.kind, self.target = describe_source(path)
        self.name = str(path)
        self.path = self.target if self.kind == "path" else None
        self.fps = float(fps)
        self.stopped_early: Optional[str] = None
        self.live = self.kind in ("camera", "stream", "gstreamer")
        self.files, self.ids, self.count, self.is_video = [], [], 0, True
        if self.kind == "glob":
            files = [Path(p) for p in glob.glob(self.target) if Path(p).suffix.lower() in IMAGE_EXTS]
            if not files:
                raise SourceError(f"input {self.target}: the pattern matches no images ({', '.join(IMAGE_EXTS)})")
            self.files, self.ids = _numbered(files, self.target)
            self.count, self.is_video = len(self.files), False
        elif self.live:
            cap = self._open()  # fails here, with its reason, rather than in the run
            self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or self.fps
            if not (0 < self.fps < 1000):
                self.fps = float(fps)
            self._cap = cap  # kept open: a live source is not re-opened for the run
        elif not self.path.exists():
            raise SourceError(f"input not found: {self.path}")
        elif self.path.is_dir():
            files = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS]
            if not files:
                raise SourceError(f"input {self.path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            self.files, self.ids = _numbered(files, self.path)
            self.count, self.is_video = len(self.files), False
        else:
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise SourceError(f"input {self.path}: not a readable video (or image folder)")
            self.count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or self.fps
            cap.release()

    def _open(self) -> "cv2.VideoCapture":
        """The opened capture of a live source; SourceError naming it (and what is missing)."""
        if self.kind == "gstreamer":
            if not opencv_has_gstreamer():
                raise SourceError(f"input {self.target!r} is a GStreamer pipeline, but this OpenCV "
                                  f"({cv2.__version__}) was built without GStreamer: use an OpenCV built with "
                                  "GStreamer (on Jetson: JetPack's python3-opencv, with a venv made with "
                                  "--system-site-packages)")
            cap = cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)
            why = "GStreamer could not start the pipeline (does it end in appsink? are its plugins installed?)"
        elif self.kind == "camera":
            cap = cv2.VideoCapture(self.target)
            why = (f"cannot open camera {self.target} (/dev/video{self.target} on Linux): no such device, "
                   "busy, or no permission")
        else:
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG)
            why = "cannot open the stream (unreachable, wrong URL, or a codec this OpenCV's FFmpeg lacks)"
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"input {self.target}: {why}" if self.kind != "camera" else why)
        return cap

    def __len__(self) -> int:
        return self.count

    def first_frame(self) -> Optional[Frame]:
        """The first readable frame (None when there is none, and for a live source, whose frames
        are not read twice), read once without consuming the source: what the caller checks the
        camera against before a run."""
        if self.live:
            return None
        frames = iter(self)
        try:
            for frame in frames:
                if frame.image is not None:
                    return frame
            return None
        finally:
            frames.close()  # releases the video

    def close(self) -> None:
        """Releases a live source's capture (iterating to the end does it too)."""
        cap = getattr(self, "_cap", None)
        if cap is not None:
            cap.release()
            self._cap = None

    def _live_frames(self) -> Iterator[Frame]:
        cap = getattr(self, "_cap", None) or self._open()
        self._cap = None
        i = 0
        try:
            while True:
                ok, img = cap.read()
                if not ok or img is None:  # a live source that stops delivering frames has ended
                    if i == 0:
                        self.stopped_early = f"{self.name}: opened, but delivered no frame"
                    return
                yield Frame(i, f"frame {i}", img)
                i += 1
        finally:
            cap.release()

    def __iter__(self) -> Iterator[Frame]:
        if self.live:
            yield from self._live_frames()
            return
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

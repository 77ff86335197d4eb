"""The run loop of ``mrcnet-run`` as a library (no torch): frames -> pipeline -> poses.jsonl / BOP CSV
/ overlay.mp4 / summary.json (or poses as JSON lines on stdout).

:class:`RunConfig` holds a run's settings, :func:`run` does it and returns a
:class:`~mrcnet.runtime.run_summary.RunSummary` (counts, latencies; ``format()`` is the report
``mrcnet-run`` prints). ``runtime/cli.py`` is the click command over it.

Each frame goes through three stages: *prepare* (undistort, camera check, detection, crops of the
first chunk: :meth:`Pipeline.prepare`), *estimate* (networks and renderer: :meth:`Pipeline.finish`,
tracking, overlay masks) and *emit* (records, CSV, overlay drawing, video, preview). Pipelined
(default), the stages of consecutive frames overlap in threads (:mod:`mrcnet.runtime.stages`); the
poses are those of the sequential order, frame by frame. With ``track``, detection and crops run in
the estimate stage (the boxes come from the previous frame's poses).

Real time (default for live sources: camera, stream, GStreamer; optional for files, which are then
played at their frame rate): a reader thread keeps only the newest frame
(:class:`~mrcnet.runtime.realtime.LatestFrameReader`); frames the pipeline could not take are
dropped, counted (``summary.frames_dropped``) and noted in the next record (``"dropped"``). Records,
detections and tracking use the index of the frame actually processed.

``poses.jsonl`` record keys: ``frame`` (frame id), ``name``; then either ``error`` (not processed:
why) or ``objects`` (pose dicts: obj_id, R, t mm, score, det_score, box), ``skipped`` (detections
not run, with ``error``), ``timings_ms`` (per stage and total, ms), ``tracking`` (with ``track``:
``detected``, ``lost``); ``dropped`` (real-time runs: frames dropped just before this one).
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from .errors import ParameterError, error_line
from .formats.camera import Camera
from .formats.files import OutputError, atomic_write_text, prepare_out_dir
from .formats.poses_jsonl import PosesFormatError, PosesJsonlStream, PosesJsonlWriter, read_poses_jsonl
from .overlay import draw_frame, render_masks
from .pipeline import FrameResult, Pipeline, PreparedFrame
from .preprocess import InputError
from .preview import Preview, preview_problem
from .realtime import LatestFrameReader, RateMeter
from .render import Renderer
from .render.context import software_fallback_warning
from .run_summary import RunSummary
from .signals import Terminated, sigterm_as_interrupt, signals_set
from .stages import run_stages
from .tracking import Tracker
from .video_io import BopCsvWriter, Frame, FrameSource, Undistorter, VideoWriter

__all__ = ["RunConfig", "RunError", "RunSummary", "run", "make_renderer", "STDOUT"]

log = logging.getLogger("mrcnet.runtime")

#: frames in a row that fail with an unexpected error (not a bad input) before the run stops
MAX_CONSECUTIVE_ERRORS = 5
POSES_NAME, CSV_NAME, VIDEO_NAME, SUMMARY_NAME = "poses.jsonl", "results.csv", "overlay.mp4", "summary.json"
#: ``out_dir`` that sends the poses to stdout as JSON lines (and writes no files)
STDOUT = "-"


class RunError(RuntimeError):
    """A run that cannot start or go on (earlier results in the output folder, repeated backend
    failures); one line naming the input or folder."""


class RunParameterError(ParameterError, RunError):
    """A run refused because of a parameter's value (``out_dir``, ``resume``, ...): the message names
    parameters; the CLI writes them as its flags (:func:`mrcnet.runtime.cliopts.cli_message`)."""


@dataclass
class RunConfig:
    """Settings of one run (:func:`run`).

    track: after the first frame, boxes from the model projected at the previous pose
    (:class:`~mrcnet.runtime.tracking.Tracker` with ``track_min_score`` / ``track_rel_drop`` /
    ``track_patience``); bop_csv: also ``results.csv`` (BOP scene ``scene_id``); video: write
    ``overlay.mp4``; max_frames: stop after this many frames (None: all); progress: a tqdm bar
    (stderr); resume / overwrite: continue / replace the results of an earlier run in the
    folder; max_consecutive_errors: failures in a row (not bad inputs) that stop the run.
    realtime: keep only the newest frame, drop the others (None: for live sources only; a file
    is then played at its frame rate); pipelined: overlap the stages of consecutive frames
    (threads); show: a preview window (when possible, else a one-line note and the run goes on).
    """

    track: bool = False
    track_min_score: Optional[float] = None
    track_rel_drop: float = 0.5
    track_patience: int = 2
    bop_csv: bool = False
    scene_id: int = 0
    video: bool = True
    max_frames: Optional[int] = None
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    max_consecutive_errors: int = MAX_CONSECUTIVE_ERRORS
    realtime: Optional[bool] = None
    pipelined: bool = True
    show: bool = False


def _say(message: str) -> None:
    """A message of the run on stderr (above the progress bar; stdout may carry the poses)."""
    tqdm.write(message, file=sys.stderr)


def _csv_rows_of(records: list, scene_id: int) -> list:
    """BOP CSV rows of the poses of earlier ``poses.jsonl`` records (for a resumed CSV)."""
    rows = []
    for rec in records:
        t = rec.get("timings_ms", {}).get("total", -1000.0) / 1000.0
        for o in rec.get("objects", []):
            rows.append({"scene_id": scene_id, "im_id": rec["frame"], "obj_id": o["obj_id"],
                         "score": o.get("det_score", o["score"]), "R": o["R"], "t": o["t"], "time": t})
    return rows


def make_renderer(device=None):
    """The EGL renderer (``runtime.render.Renderer``) on ``device`` (None: the EGL device of CUDA
    device 0, the backends' GPU, else EGL device 0; an EGL index; "cuda:K"; "cpu"), its context
    created now; warns once (stderr) when it renders on the CPU of a GPU machine. RuntimeError
    with one line if unavailable."""
    try:
        device = int(device) if isinstance(device, str) and device.strip().isdigit() else device
        r = Renderer(device=device)
        warning = software_fallback_warning(r.description)  # creates the context: errors surface here
    except Exception as e:
        raise RuntimeError(f"cannot create the EGL renderer: {error_line(e)}") from None
    if warning:
        print(warning, file=sys.stderr)
    return r


@dataclass
class _Work:
    """One frame through the stages: frame, t_read (perf_counter s when read: latency start),
    dropped (real time: frames dropped before it), K (3, 3) once checked, prep (crops made),
    result, error ("" or why the frame has no result), failed (an unexpected failure, not a bad
    input), proc_ms (ms spent on it in prepare + estimate, no queue waits), masks (overlay:
    (P, H, W) bool or None), tracking (the record's ``tracking`` entry)."""

    frame: Frame
    t_read: float
    dropped: int = 0
    K: Optional[np.ndarray] = None
    prep: Optional[PreparedFrame] = None
    result: Optional[FrameResult] = None
    error: str = ""
    failed: bool = False
    proc_ms: float = 0.0
    masks: Optional[np.ndarray] = None
    tracking: Optional[dict] = None


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class _Outputs:
    """The writers of a run: poses (file or stdout), BOP CSV, overlay video, preview; the
    frames of an earlier run (``done``) when resuming. ``close()`` finalises all of them."""

    def __init__(self, out_dir, cfg: RunConfig, source: FrameSource):
        self.to_stdout = str(out_dir) == STDOUT
        self.out = None if self.to_stdout else prepare_out_dir(out_dir)
        self.done, records = self._earlier(cfg, source)
        self.jsonl = self.csv = self.video = self.preview = None
        if self.to_stdout:
            self.jsonl = PosesJsonlStream(sys.stdout)
        else:
            self.jsonl = PosesJsonlWriter(self.out / POSES_NAME, append=bool(self.done))
        self.records = records

    def _earlier(self, cfg: RunConfig, source: FrameSource) -> tuple[set, list]:
        """(frame ids, records) of an earlier run in the folder; RunError when there is one and
        neither ``resume`` nor ``overwrite`` is set, or when it cannot be resumed."""
        if self.to_stdout:
            if cfg.resume or cfg.bop_csv or cfg.video:
                raise RunParameterError("out_dir", "poses to stdout write no files: {resume}, {bop_csv} and "
                                        "the overlay video need an output folder", value=STDOUT)
            return set(), []
        if cfg.resume and getattr(source, "live", False):
            raise RunParameterError("resume", f"input {source.name} is a live source; a live stream cannot be "
                                    "resumed (its frames are not read again): use another {out_dir} or {overwrite}")
        poses_path = self.out / POSES_NAME
        if not (poses_path.is_file() and poses_path.stat().st_size > 0) or cfg.overwrite:
            return set(), []
        if not cfg.resume:
            raise RunParameterError("out_dir", f"holds {POSES_NAME} of an earlier run; use {{resume}} to continue "
                                    "it or {overwrite} to replace it", value=self.out)
        try:
            records = read_poses_jsonl(poses_path, repair=True)
        except PosesFormatError as e:
            raise RunParameterError("resume", f"{e}; use {{overwrite}} to start afresh") from None
        return {int(r["frame"]) for r in records if "frame" in r}, records

    def open_files(self, cfg: RunConfig, fps: float) -> None:
        """The CSV (with the resumed rows), the overlay video and the preview window."""
        if cfg.bop_csv:
            rows = _csv_rows_of([r for r in self.records if "objects" in r], cfg.scene_id)
            self.csv = BopCsvWriter(self.out / CSV_NAME, cfg.scene_id, rows=rows)
        if cfg.video:
            name = VIDEO_NAME if not self.done else f"overlay.from-{max(self.done) + 1}.mp4"
            self.video = VideoWriter(self.out / name, fps)
        if cfg.show:
            problem = preview_problem()
            if problem:
                _say(problem)
            else:
                self.preview = Preview()

    def close(self) -> None:
        for w in (self.jsonl, self.csv, self.video, self.preview):
            if w is not None:
                w.close()

    def write_summary(self, summary: RunSummary) -> Optional[OutputError]:
        """Write ``summary.json`` (not for stdout runs); the OutputError when it cannot be written."""
        if self.out is None:
            return None
        try:
            atomic_write_text(self.out / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
        except OSError as e:
            return OutputError(f"{self.out / SUMMARY_NAME}: cannot write ({e.strerror or e})")
        return None


class _Run:
    """The state of one run and its three stage functions (see the module docstring)."""

    def __init__(self, source, pipeline, camera, detect, cfg: RunConfig, outputs: _Outputs):
        self.source, self.pipeline, self.camera, self.detect, self.cfg, self.outs = (
            source, pipeline, camera, detect, cfg, outputs)
        self.realtime = bool(getattr(source, "live", False) if cfg.realtime is None else cfg.realtime)
        self.tracker = Tracker({k: m.vertices for k, m in pipeline.meshes.items()}, detect,
                               min_score=cfg.track_min_score, rel_drop=cfg.track_rel_drop,
                               patience=cfg.track_patience) if cfg.track else None
        dist = getattr(camera, "dist", None)
        self.undistorter = Undistorter(camera.fixed, dist) if dist is not None and camera.fixed is not None else None
        self.summary = RunSummary(backend=getattr(pipeline.backend, "name", "?"), resumed_frames=len(outputs.done),
                                  renderer=getattr(pipeline.renderer, "description", "?"), realtime=self.realtime,
                                  pipelined=cfg.pipelined, tta_select=pipeline.tta_mode)
        self.stop = threading.Event()
        self.meter = RateMeter(1.0)
        self.failures_in_row = 0
        self.taken = 0  # frames handed to the stages (max_frames counts them)
        self.bar = None

    # ------------------------------------------------------------------ frames in
    def frames(self):
        """The frames to process as _Work (frames of a resumed run skipped; at most max_frames;
        real time: the newest frame each time one is asked for)."""
        frames = (f for f in self.source if f.index not in self.outs.done)
        reader = None
        if self.realtime:  # a file plays at its frame rate; a live source at its own
            reader = LatestFrameReader(frames, pace_fps=None if getattr(self.source, "live", False) else self.source.fps)
        try:
            while not self.stop.is_set():
                if self.cfg.max_frames is not None and self.taken >= self.cfg.max_frames:
                    return
                if reader is not None:
                    taken = reader.take(self.stop)
                    if taken is None:
                        return
                    work = _Work(taken.frame, taken.t_read, taken.dropped)
                else:
                    frame = next(frames, None)
                    if frame is None:
                        return
                    work = _Work(frame, time.perf_counter())
                self.taken += 1
                yield work
        finally:
            if reader is not None:
                reader.close()  # the reader thread closes ``frames``
            else:
                frames.close()

    # ------------------------------------------------------------------ stages
    def prepare(self, w: _Work) -> _Work:
        """Undistort, check the camera, detect and make the first chunk's crops (detection and
        crops wait for the estimate stage when tracking)."""
        t0 = time.perf_counter()
        f = w.frame
        if f.image is None:
            w.error = f.error
            return w
        try:
            if self.undistorter is not None:  # the pipeline sees a pinhole image with the camera's K
                f.image = self.undistorter.undistort(f.image)
            w.K = self.camera.check_frame(f.index, f.image.shape[1], f.image.shape[0])
            if self.tracker is None:
                w.prep = self.pipeline.prepare(f.image, w.K, self.detect(f.index, f.image))
        except InputError as e:
            w.error = str(e)
        except Exception as e:  # one failing frame (detector, camera) must not end the run
            w.error, w.failed = error_line(e, with_type=True), True
        w.proc_ms += _ms_since(t0)
        return w

    def estimate(self, w: _Work) -> _Work:
        """Networks and renderer (the calling thread: it owns the GL context), tracking, and the
        overlay's masks."""
        self.poll_preview()
        if w.error:
            return w
        t0 = time.perf_counter()
        img = w.frame.image
        try:
            if w.prep is None:  # tracking: the boxes come from the previous frame's poses
                w.prep = self.pipeline.prepare(img, w.K, self.tracker.detections(w.frame.index, img))
            w.result = self.pipeline.finish(w.prep)
            if self.tracker is not None:
                detected = bool(self.tracker.detected)
                self.tracker.update(w.result.poses, w.K, (img.shape[1], img.shape[0]))
                w.tracking = {"detected": detected, "lost": [{"obj_id": o, "why": why} for o, why in self.tracker.lost]}
        except InputError as e:
            w.error = str(e)
        except Exception as e:  # one failing frame (backend, renderer, detector) must not end the run
            w.error, w.failed = error_line(e, with_type=True), True
        w.prep = None  # the crops are not needed any more
        w.proc_ms += _ms_since(t0)
        if w.result is not None and (self.outs.video or self.outs.preview):
            try:  # contours from the renderer's full-frame masks; projected silhouettes if it fails
                w.masks = render_masks(self.pipeline.renderer, w.result.poses, w.K, img.shape[1], img.shape[0])
            except Exception:
                w.masks = None
        return w

    def emit(self, w: _Work) -> None:
        """The frame's record, CSV rows, overlay (video, preview) and counts."""
        s, f = self.summary, w.frame
        if s.aborted:  # frames in flight when the run was stopped
            return
        s.frames += 1
        s.frames_dropped += w.dropped
        self.bar.update(1)
        rec = {"frame": f.index, "name": f.name}
        if self.realtime:
            rec["dropped"] = w.dropped
        if w.error:
            self._emit_failure(w, rec)
            return
        self.failures_in_row = 0
        res = w.result
        if w.tracking is not None:
            s.redetections += int(w.tracking["detected"] and f.index > 0)
            rec["tracking"] = w.tracking
        s.poses += len(res.poses)
        s.skipped_detections += len(res.skipped)
        for d, why in res.skipped:
            _say(f"frame {f.index}: skipped detection {d.to_dict() if hasattr(d, 'to_dict') else d}: {why}")
        if res.poses:
            for st in s.stage_ms:
                s.stage_ms[st].append(res.timings.get(st, 0.0))
        rec["objects"] = [p.to_dict() for p in res.poses]
        rec["skipped"] = [{**(d.to_dict() if hasattr(d, "to_dict") else {"detection": repr(d)}), "error": why}
                          for d, why in res.skipped]
        rec["timings_ms"] = {k: round(v, 3) for k, v in res.timings.items()}
        self.outs.jsonl.write(rec)
        if self.outs.csv:
            self.outs.csv.write(f.index, res.poses, w.proc_ms / 1000.0)
        self.meter.tick(time.perf_counter() - w.t_read)
        self._emit_overlay(w)
        self.bar.set_postfix(fps=f"{self.meter.fps:.1f}", poses=len(res.poses))

    def _emit_failure(self, w: _Work, rec: dict) -> None:
        """Record a frame without a result; stop the run after too many failures in a row."""
        s = self.summary
        s.frames_failed += 1
        rec["error"] = w.error
        self.outs.jsonl.write(rec)
        _say(f"frame {w.frame.index}: {'failed' if w.failed else 'skipped'} ({w.error})")
        if not w.failed:
            return
        self.failures_in_row += 1
        if self.failures_in_row >= self.cfg.max_consecutive_errors:
            s.aborted = f"{self.failures_in_row} frames in a row failed (last: frame {w.frame.index}: {w.error})"
            self.stop.set()

    def _emit_overlay(self, w: _Work) -> None:
        """Draw the frame's poses with the FPS and latency of the last second; to the video and
        the preview."""
        if not (self.outs.video or self.outs.preview):
            return
        text = f"{self.meter.latency_ms:.0f} ms  frame {w.frame.index}  {self.summary.backend}"
        image = draw_frame(w.frame.image, w.result.poses, w.K, self.pipeline.meshes, fps=self.meter.fps,
                           masks=w.masks, text=text)
        if self.outs.video:
            self.outs.video.write(image)
        if self.outs.preview:
            self.outs.preview.offer(image)

    def poll_preview(self) -> None:
        """Show the newest overlay (the window's thread); q / Esc in the window ends the run."""
        p = self.outs.preview
        if p is not None and not p.poll():
            if not self.stop.is_set():
                self.summary.input_stopped = "stopped from the preview window (q / Esc)"
            self.stop.set()

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        """All frames through the stages; the summary's interrupt / input fields set."""
        total = None if self.realtime else len(self.source) - len(self.outs.done)
        if self.cfg.max_frames is not None:
            total = min(max(total or 0, 0) or self.cfg.max_frames, self.cfg.max_frames)
        self.bar = tqdm(total=total or None, unit="frame", disable=not self.cfg.progress, dynamic_ncols=True,
                        file=sys.stderr)
        # pipelined: a signal stops the run after the frames in flight (a second one at once);
        # sequential: it interrupts the current frame
        signals = signals_set(self.stop) if self.cfg.pipelined else sigterm_as_interrupt()
        try:
            with signals as received:
                self.outs.open_files(self.cfg, self.source.fps)
                run_stages(self.frames(), self.prepare, self.estimate, self.emit, self.cfg.pipelined, self.stop)
                self.poll_preview()
                self.summary.input_stopped = (self.summary.input_stopped
                                              or getattr(self.source, "stopped_early", None) or "")
            if received:
                self.summary.interrupted, self.summary.signal = True, received[0]
        except KeyboardInterrupt as e:
            self.summary.interrupted = True
            self.summary.signal = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        finally:
            self.bar.close()


def run(source: FrameSource, pipeline: Pipeline, camera: Camera, detect: Callable, out_dir,
        config: Optional[RunConfig] = None, **options) -> RunSummary:
    """Estimate poses frame by frame and write ``out_dir/poses.jsonl`` (+ ``results.csv`` BOP
    CSV, + ``overlay.mp4``, + ``summary.json``); ``out_dir`` ``"-"`` (:data:`STDOUT`): the
    records go to stdout as JSON lines and no file is written. detect: ``(frame_index,
    frame_bgr) -> list[Detection]``; with ``track`` it is only called for the first frame and to
    re-detect. Settings: ``config`` (default :class:`RunConfig`), with ``options`` (RunConfig
    field names) overriding it.

    A camera with distortion coefficients (``camera.dist``): every frame is undistorted first
    (:class:`~mrcnet.runtime.video_io.Undistorter`, maps computed once, new camera matrix = K), so
    detection, the pipeline and the overlay all work on the undistorted frame with K.

    Every output is flushed per frame; Ctrl-C or SIGTERM stops the run and keeps every finished
    frame (videos finalised, ``summary.json`` written; pipelined, the frames already estimated are
    written too). An ``out_dir`` that already holds a ``poses.jsonl`` raises :class:`RunError`
    unless ``resume`` (continue it: frames already in it are skipped, a torn last line is dropped;
    the overlay of the new frames goes to ``overlay.from-<frame>.mp4``; a live source cannot be
    resumed: RunError) or ``overwrite``. A frame whose input is bad (camera, image) or whose
    processing fails is recorded with its reason and the run goes on; after
    ``max_consecutive_errors`` failures in a row that are not bad inputs (e.g. a backend that
    fails every call) the run stops with ``summary.aborted`` set.
    Raises :class:`~mrcnet.runtime.formats.files.OutputError` when an output cannot be written.
    """
    cfg = replace(config or RunConfig(), **options)
    outs = _Outputs(out_dir, cfg, source)
    r = _Run(source, pipeline, camera, detect, cfg, outs)
    t_start = time.perf_counter()
    try:
        r.loop()
    finally:
        r.summary.wall_s = time.perf_counter() - t_start
        outs.close()
        summary_error = outs.write_summary(r.summary)
    if summary_error is not None:
        raise summary_error
    return r.summary

"""The run loop of ``mrcnet-run`` as a library (no torch): frames -> pipeline -> poses.jsonl / BOP CSV
/ overlay.mp4 / summary.json.

:class:`RunConfig` holds a run's settings, :func:`run` does it and returns a :class:`RunSummary`
(counts, latencies; ``format()`` is the report ``mrcnet-run`` prints). ``runtime/cli.py`` is the
click command over it.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from .pipeline import STAGES, Pipeline
from .preprocess import InputError
from .formats.camera import Camera
from .formats.files import OutputError, atomic_write_text, prepare_out_dir
from .overlay import draw_frame, render_masks
from .formats.poses_jsonl import PosesFormatError, PosesJsonlWriter, read_poses_jsonl
from .signals import Terminated, sigterm_as_interrupt
from .tracking import Tracker
from .video_io import BopCsvWriter, FrameSource, Undistorter, VideoWriter

log = logging.getLogger("mrcnet.runtime")


#: frames in a row that fail with an unexpected error (not a bad input) before the run stops
MAX_CONSECUTIVE_ERRORS = 5
POSES_NAME, CSV_NAME, VIDEO_NAME, SUMMARY_NAME = "poses.jsonl", "results.csv", "overlay.mp4", "summary.json"


class RunError(RuntimeError):
    """A run that cannot start or go on (earlier results in --out, repeated backend failures);
    one line naming the input or folder."""


@dataclass
class RunSummary:
    """What a run did: frame counts, per-stage latencies (ms lists), wall time (s).

    frames: frames read in this run; frames_failed: of them, unreadable or failed (reason in
    poses.jsonl); resumed_frames: frames of an earlier run kept (``resume``); interrupted: stopped
    by SIGINT / SIGTERM (``signal`` names it); aborted: why the run stopped early (repeated
    failures), "" otherwise; input_stopped: why the input ended before its announced length.
    """

    frames: int = 0
    frames_failed: int = 0
    poses: int = 0
    skipped_detections: int = 0
    redetections: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    stage_ms: dict = field(default_factory=lambda: {s: [] for s in (*STAGES, "total")})
    backend: str = ""
    resumed_frames: int = 0
    signal: str = ""
    aborted: str = ""
    input_stopped: str = ""
    renderer: str = ""

    @property
    def fps(self) -> float:
        """End-to-end frames per second (reading, estimation, overlay and writing)."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def percentiles(self) -> dict:
        """{stage: (p50, p90) ms} over the frames that ran the network."""
        return {s: (float(np.percentile(v, 50)), float(np.percentile(v, 90)))
                for s, v in self.stage_ms.items() if v}

    def to_dict(self) -> dict:
        return {"frames": self.frames, "frames_failed": self.frames_failed, "poses": self.poses,
                "skipped_detections": self.skipped_detections, "redetections": self.redetections,
                "resumed_frames": self.resumed_frames, "interrupted": self.interrupted, "signal": self.signal,
                "aborted": self.aborted, "input_stopped": self.input_stopped,
                "wall_s": round(self.wall_s, 3), "fps": round(self.fps, 2), "backend": self.backend,
                "renderer": self.renderer,
                "latency_ms": {s: {"p50": round(a, 2), "p90": round(b, 2)} for s, (a, b) in self.percentiles().items()}}

    def format(self) -> str:
        lines = [f"{self.frames} frames ({self.frames_failed} unreadable or failed), {self.poses} poses, "
                 f"{self.skipped_detections} skipped detections, backend {self.backend}, renderer {self.renderer}"
                 + (f", {self.resumed_frames} frames resumed" if self.resumed_frames else "")
                 + (f" - INTERRUPTED ({self.signal})" if self.interrupted else ""),
                 f"end-to-end {self.fps:.2f} FPS ({self.wall_s:.1f} s)",
                 f"{'stage':<12} {'p50 ms':>9} {'p90 ms':>9}"]
        lines += [f"{s:<12} {a:9.2f} {b:9.2f}" for s, (a, b) in self.percentiles().items()]
        if self.input_stopped:
            lines.append(f"warning: {self.input_stopped}")
        if self.aborted:
            lines.append(f"STOPPED: {self.aborted}")
        return "\n".join(lines)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


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
        from .render import Renderer
        from .render.context import software_fallback_warning
    except ImportError as e:
        raise RuntimeError(f"renderer unavailable ({e})") from None
    try:
        device = int(device) if isinstance(device, str) and device.strip().isdigit() else device
        r = Renderer(device=device)
        warning = software_fallback_warning(r.description)  # creates the context: errors surface here
    except Exception as e:
        raise RuntimeError(f"cannot create the EGL renderer: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if warning:
        print(warning, file=sys.stderr)
    return r


@dataclass
class RunConfig:
    """Settings of one run (:func:`run`).

    track: after the first frame, boxes from the model projected at the previous pose
    (:class:`~mrcnet.runtime.tracking.Tracker` with ``track_min_score`` / ``track_rel_drop`` /
    ``track_patience``); bop_csv: also ``results.csv`` (BOP scene ``scene_id``); video: write
    ``overlay.mp4``; max_frames: stop after this many frames (None: all); progress: a tqdm bar
    (stderr); resume / overwrite: continue / replace the results of an earlier run in the
    folder; max_consecutive_errors: failures in a row (not bad inputs) that stop the run.
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


def run(source: FrameSource, pipeline: Pipeline, camera: Camera, detect: Callable, out_dir,
        config: Optional[RunConfig] = None, **options) -> RunSummary:
    """Estimate poses frame by frame and write ``out_dir/poses.jsonl`` (+ ``results.csv`` BOP
    CSV, + ``overlay.mp4``, + ``summary.json``). detect: ``(frame_index, frame_bgr) ->
    list[Detection]``; with ``track`` it is only called for the first frame and to re-detect.

    A camera with distortion coefficients (``camera.dist``): every frame is undistorted first
    (:class:`~mrcnet.runtime.video_io.Undistorter`, maps computed once, new camera matrix = K), so
    detection, the pipeline and the overlay all work on the undistorted frame with K.

    Every output is flushed per frame; Ctrl-C or SIGTERM stops after the current frame and keeps
    the rest (videos finalised, ``summary.json`` written). An ``out_dir`` that already holds a
    ``poses.jsonl`` raises :class:`RunError` unless ``resume`` (continue it: frames already in it
    are skipped, a torn last line is dropped; the overlay of the new frames goes to
    ``overlay.from-<frame>.mp4``) or ``overwrite``. A frame whose input is bad (camera, image) or
    whose processing fails is recorded with its reason and the run goes on; after
    ``max_consecutive_errors`` failures in a row that are not bad inputs (e.g. a backend that
    fails every call) the run stops with ``summary.aborted`` set.
    Settings: ``config`` (default :class:`RunConfig`), with ``options`` (RunConfig field names)
    overriding it. Raises :class:`~mrcnet.runtime.formats.files.OutputError` when an output
    cannot be written.
    """
    cfg = replace(config or RunConfig(), **options)
    track, track_min_score, track_rel_drop, track_patience = (cfg.track, cfg.track_min_score, cfg.track_rel_drop,
                                                              cfg.track_patience)
    bop_csv, scene_id, video, max_frames, progress = cfg.bop_csv, cfg.scene_id, cfg.video, cfg.max_frames, cfg.progress
    resume, overwrite, max_consecutive_errors = cfg.resume, cfg.overwrite, cfg.max_consecutive_errors
    out = prepare_out_dir(out_dir)
    poses_path = out / POSES_NAME
    done: set = set()
    records: list = []
    if poses_path.is_file() and poses_path.stat().st_size > 0 and not overwrite:
        if not resume:
            raise RunError(f"--out {out}: holds {POSES_NAME} of an earlier run; use --resume to continue it "
                           "or --overwrite to replace it")
        try:
            records = read_poses_jsonl(poses_path, repair=True)
        except PosesFormatError as e:
            raise RunError(f"--resume: {e}; use --overwrite to start afresh") from None
        done = {int(r["frame"]) for r in records if "frame" in r}
    meshes = pipeline.meshes
    tracker = Tracker({k: m.vertices for k, m in meshes.items()}, detect, min_score=track_min_score,
                      rel_drop=track_rel_drop, patience=track_patience) if track else None
    summary = RunSummary(backend=getattr(pipeline.backend, "name", "?"), resumed_frames=len(done),
                         renderer=getattr(pipeline.renderer, "description", "?"))
    jsonl = PosesJsonlWriter(poses_path, append=bool(done))
    csv = vw = None
    total = len(source) - len(done) if max_frames is None else min(max(len(source) - len(done), 0) or max_frames,
                                                                    max_frames)
    bar = tqdm(total=total or None, unit="frame", disable=not progress, dynamic_ncols=True)
    fps_ema = None
    failures_in_row = 0
    dist = getattr(camera, "dist", None)
    undistorter = Undistorter(camera.fixed, dist) if dist is not None and camera.fixed is not None else None
    t_start = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            csv = BopCsvWriter(out / CSV_NAME, scene_id,
                               rows=_csv_rows_of([r for r in records if "objects" in r], scene_id)) if bop_csv else None
            video_name = VIDEO_NAME if not done else f"overlay.from-{max(done) + 1}.mp4"
            vw = VideoWriter(out / video_name, source.fps) if video else None
            for frame in source:
                if frame.index in done:
                    continue
                if max_frames is not None and summary.frames >= max_frames:
                    break
                summary.frames += 1
                bar.update(1)
                rec = {"frame": frame.index, "name": frame.name}
                if frame.image is None:
                    summary.frames_failed += 1
                    rec["error"] = frame.error
                    jsonl.write(rec)
                    bar.write(f"frame {frame.index}: skipped ({frame.error})")
                    continue
                t0 = time.perf_counter()
                try:
                    if undistorter is not None:  # the pipeline sees a pinhole image with the camera's K
                        frame.image = undistorter.undistort(frame.image)
                    H, W = frame.image.shape[:2]
                    K = camera.check_frame(frame.index, W, H)
                    dets = tracker.detections(frame.index, frame.image) if tracker else detect(frame.index, frame.image)
                    res = pipeline.estimate_frame(frame.image, K, dets)
                    failures_in_row = 0
                except InputError as e:
                    summary.frames_failed += 1
                    rec["error"] = str(e)
                    jsonl.write(rec)
                    bar.write(f"frame {frame.index}: skipped ({e})")
                    continue
                except Exception as e:  # one failing frame (backend, renderer, detector) must not end the run
                    summary.frames_failed += 1
                    failures_in_row += 1
                    rec["error"] = _first_line(e)
                    jsonl.write(rec)
                    bar.write(f"frame {frame.index}: failed ({rec['error']})")
                    if failures_in_row >= max_consecutive_errors:
                        summary.aborted = (f"{failures_in_row} frames in a row failed (last: frame {frame.index}: "
                                           f"{rec['error']})")
                        break
                    continue
                frame_ms = (time.perf_counter() - t0) * 1000.0
                if tracker:
                    redetected = bool(tracker.detected)
                    summary.redetections += int(redetected and frame.index > 0)
                    tracker.update(res.poses, K, (W, H))
                    rec["tracking"] = {"detected": redetected, "lost": [{"obj_id": o, "why": w} for o, w in tracker.lost]}
                summary.poses += len(res.poses)
                summary.skipped_detections += len(res.skipped)
                for d, why in res.skipped:
                    bar.write(f"frame {frame.index}: skipped detection "
                              f"{d.to_dict() if hasattr(d, 'to_dict') else d}: {why}")
                if res.poses:
                    for s in summary.stage_ms:
                        summary.stage_ms[s].append(res.timings.get(s, 0.0))
                rec["objects"] = [p.to_dict() for p in res.poses]
                rec["skipped"] = [{**(d.to_dict() if hasattr(d, "to_dict") else {"detection": repr(d)}), "error": why}
                                  for d, why in res.skipped]
                rec["timings_ms"] = {k: round(v, 3) for k, v in res.timings.items()}
                jsonl.write(rec)
                if csv:
                    csv.write(frame.index, res.poses, frame_ms / 1000.0)
                fps_now = 1000.0 / frame_ms if frame_ms > 0 else 0.0
                fps_ema = fps_now if fps_ema is None else 0.9 * fps_ema + 0.1 * fps_now
                if vw:
                    try:  # contours from the renderer's full-frame masks; projected silhouettes if it fails
                        masks = render_masks(pipeline.renderer, res.poses, K, W, H)
                    except Exception:
                        masks = None
                    vw.write(draw_frame(frame.image, res.poses, K, meshes, fps=fps_ema, masks=masks,
                                        text=f"frame {frame.index}  {summary.backend}"))
                bar.set_postfix(fps=f"{fps_ema:.1f}", poses=len(res.poses))
            summary.input_stopped = getattr(source, "stopped_early", None) or ""
    except KeyboardInterrupt as e:
        summary.interrupted = True
        summary.signal = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
    finally:
        summary.wall_s = time.perf_counter() - t_start
        bar.close()
        jsonl.close()
        for w in (csv, vw):
            if w is not None:
                w.close()
        try:
            atomic_write_text(out / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
            summary_error = None
        except OSError as e:
            summary_error = OutputError(f"{out / SUMMARY_NAME}: cannot write ({e.strerror or e})")
    if summary_error is not None:
        raise summary_error
    return summary

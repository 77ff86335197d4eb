"""``mrcnet-run``: object poses in a video, image folder, camera or stream with an exported model (no torch).

The thin click command over :func:`mrcnet.runtime.runner.run` (the run loop, its settings and
summary live there): options -> source, camera, detections, backend, renderer -> ``run()``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import manifest as M
from .backends import BACKEND_CHOICES, BackendError, create_backend
from .cliopts import cli_message, tta_select_option
from .detectors import DETECTOR_MIN_SCORE, NMS_IOU, DetectionError, make_detector
from .errors import error_line
from .formats.camera import Camera, CameraFileError, camera_matrix
from .formats.files import OutputError, prepare_out_dir
from .pipeline import Pipeline
from .preprocess import InputError, check_camera
from .runner import CSV_NAME, POSES_NAME, STDOUT, SUMMARY_NAME, RunConfig, RunError, make_renderer, run
from .video_io import FrameSource, SourceError

#: run() parameters whose flag is not ``--`` + the name (cliopts.flag)
RUN_FLAGS = {"out_dir": "--out"}


def _camera(camera, intrinsics) -> Camera:
    """The Camera of ``--camera FILE`` or of ``--fx --fy --cx --cy`` (pixels); UsageError (one line)."""
    if camera is not None and any(v is not None for v in intrinsics):
        raise click.UsageError("give either --camera or --fx/--fy/--cx/--cy, not both")
    try:
        if camera is not None:
            return Camera.load(camera)
        if all(v is not None for v in intrinsics):
            return Camera(check_camera(camera_matrix(*intrinsics), "--fx/--fy/--cx/--cy"), source="--fx/--fy/--cx/--cy")
    except (CameraFileError, InputError) as e:
        raise click.UsageError(str(e))
    raise click.UsageError("missing camera: give --camera K.json or all of --fx --fy --cx --cy")


def _pipeline(model, backend, threads, precision, chunk_size, render_device, tta_select="score") -> tuple[Pipeline, object]:
    """(Pipeline, renderer) of the export ``model`` on ``backend``; UsageError / ClickException
    (one line) for a stale demo export, a bad manifest or a backend / renderer that cannot start."""
    if Path(model) == M.DEMO_EXPORT_DIR and M.DEMO_CHECKPOINT.is_file():
        problem = M.demo_export_problem(model)
        if problem is not None and (Path(model) / M.MANIFEST_NAME).is_file():
            raise click.UsageError(f"{problem}; re-export it: mrcnet-export --out {M.DEMO_EXPORT_DIR}")
    try:
        man = M.load_manifest(model)
    except M.ManifestError as e:
        hint = (f" (export the shipped demo model first: mrcnet-export --out {M.DEMO_EXPORT_DIR})"
                if Path(model) == M.DEMO_EXPORT_DIR else "")
        raise click.UsageError(str(e) + hint)
    try:
        be = create_backend(man, backend, threads=threads, precision=precision, max_detections=chunk_size)
    except BackendError as e:
        raise click.ClickException(str(e))
    problem = M.precision_problem(getattr(be, "name", ""), precision)
    if problem:
        be.close()
        raise click.UsageError(problem)
    try:
        renderer = make_renderer(render_device)
        return Pipeline(be, man, renderer, max_detections=chunk_size, tta_select=tta_select), renderer
    except (RuntimeError, ValueError) as e:
        be.close()
        raise click.ClickException(error_line(e))


# ------------------------------------------------------------------------------------- click
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input", required=False)
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"Export directory (mrcnet-export --out). Default: the demo model's export {M.DEMO_EXPORT_DIR}.")
@click.option("--camera", type=click.Path(path_type=Path), help="Camera JSON/YAML: cam_K / K / fx,fy,cx,cy (+ width, height, dist_coeffs), ROS CameraInfo "
                   "(K, D) or camera_calibration YAML, or BOP scene_camera.json.")
@click.option("--fx", type=float)
@click.option("--fy", type=float)
@click.option("--cx", type=float)
@click.option("--cy", type=float)
@click.option("--detections", type=click.Path(path_type=Path), help="BOP'22/COCO detections JSON keyed by frame (image_id = frame id).")
@click.option("--detector", type=click.Path(path_type=Path),
              help="ONNX detector: an Ultralytics export (raw (1, 4+classes, anchors) output, or nms=True) or "
                   "boxes/scores/classes outputs; runs on the pose networks' ONNX Runtime providers.")
@click.option("--class-map", help="Detector class -> object id: 0:1,1:5 or the data.yaml of mrcnet-synth yolo "
                                  "(default: obj_<id> class names in the detector, else class = object id).")
@click.option("--det-min-score", type=float, default=None, help=f"Drop weaker detections (JSON: 0, detector: {DETECTOR_MIN_SCORE}).")
@click.option("--det-iou", type=click.FloatRange(0, 1), default=None,
              help=f"NMS IoU threshold of a raw Ultralytics detector output (default {NMS_IOU}).")
@click.option("--scene-id", type=int, default=None, help="Use the JSON's detections of this BOP scene; also the CSV's scene_id.")
@click.option("--track", is_flag=True, help="After the first frame, boxes from the model projected at the previous pose.")
@click.option("--track-min-score", type=float, default=None, help="Re-detect when a pose score falls below this.")
@click.option("--track-patience", type=click.IntRange(1), default=2, show_default=True,
              help="Frames in a row a pose score may stay low (below --track-min-score, or half its score at detection) before re-detecting.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)
@click.option("--precision", default=None, help="TensorRT engine precision in the export (default: the first).")
@click.option("--threads", type=click.IntRange(0), default=0, help="ONNX Runtime intra-op threads (0: default).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, allow_dash=True), default=Path("out/run"),
              show_default=True, help="Output folder; '-': poses as JSON lines on stdout (no files; messages on stderr).")
@click.option("--resume", is_flag=True, help="Continue the run in --out: frames already in its poses.jsonl are skipped.")
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier run in --out.")
@click.option("--bop-csv", is_flag=True, help="Also write results.csv in the BOP format.")
@click.option("--no-video", is_flag=True, help="Do not write overlay.mp4.")
@click.option("--max-frames", type=click.IntRange(1), default=None)
@click.option("--render-device", default=None,
              help="Renderer device: cuda:K (the EGL device of CUDA device K), an EGL device index, or cpu. "
                   "Default: the backend's GPU, else EGL device 0.")
@click.option("--chunk-size", type=click.IntRange(1), default=None,
              help="Most detections per network call (default: the backend's capacity: the TensorRT "
                   "profile's maximum, 8 for ONNX Runtime); a frame with more runs in chunks.")
@click.option("--demo", is_flag=True, help="The shipped demo: demo model, clip, camera and detections.")
@click.option("--realtime/--no-realtime", default=None,
              help="Keep only the newest frame, drop (and count) those the pipeline cannot keep up with. "
                   "Default: on for cameras, streams and GStreamer, off for files (--realtime plays a file at its frame rate).")
@click.option("--pipeline/--no-pipeline", "pipelined", default=True, show_default=True,
              help="Overlap reading, detection and preprocessing of the next frame with the networks and rendering "
                   "of this one (threads); the poses are the same.")
@click.option("--show", is_flag=True, help="Preview window of the overlay (q / Esc ends the run); without a display or "
                                           "a GUI-capable OpenCV a one-line note, and the run goes on.")
@tta_select_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def main(input, model, camera, fx, fy, cx, cy, detections, detector, class_map, det_min_score, det_iou, scene_id, track,
         track_min_score, track_patience, backend, precision, threads, out_dir, resume, overwrite, bop_csv, no_video,
         max_frames, render_device, chunk_size, demo, realtime, pipelined, show, tta_select, quiet):
    """Estimate object poses in INPUT and write
    OUT/poses.jsonl, OUT/overlay.mp4, OUT/summary.json and (--bop-csv) OUT/results.csv
    (--out -: the poses as JSON lines on stdout, nothing else).

    INPUT: a video file, a folder of images, a quoted glob ('frames/*.png'), a camera index (0 is
    /dev/video0), a stream URL (rtsp://, http(s)://, udp://) or a GStreamer pipeline ending in
    appsink (where OpenCV has GStreamer).

    Exit status: 0 done, 1 stopped by repeated failures or an unwritable output, 2 bad input,
    130 / 143 interrupted by SIGINT / SIGTERM (finished frames are kept; --resume continues)."""
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # skips are reported by run()
    if demo:
        input = input or M.DEMO_DIR / M.DEMO_CLIP
        if camera is None and fx is None:
            camera = M.DEMO_DIR / M.DEMO_CAMERA
        if detections is None and detector is None:
            detections = M.DEMO_DIR / M.DEMO_DETECTIONS
    if input is None:
        raise click.UsageError("missing INPUT (a video file, image folder or glob, camera index, stream URL or "
                               "GStreamer pipeline), or use --demo")
    if resume and overwrite:
        raise click.UsageError("give either --resume or --overwrite, not both")
    to_stdout = str(out_dir) == STDOUT
    if to_stdout and (resume or overwrite or bop_csv):
        raise click.UsageError("--out - writes poses to stdout and no files: --resume, --overwrite and --bop-csv "
                               "need an output folder")
    model = model or M.DEMO_EXPORT_DIR
    try:
        source = FrameSource(input)
    except SourceError as e:
        raise click.UsageError(str(e))
    if resume and source.live:
        source.close()
        raise click.UsageError(f"--resume: input {input} is a live source; a live stream cannot be resumed "
                               "(its frames are not read again): use another --out or --overwrite")
    cam = _camera(camera, (fx, fy, cx, cy))
    if detections is not None and detector is not None:
        raise click.UsageError("give either --detections or --detector, not both")
    if detections is None and detector is None:
        raise click.UsageError("no detections: give --detections F or --detector F"
                               + (" (with --track: for the first frame and re-detection)" if track else ""))
    try:
        detect = make_detector(detections, detector, class_map=class_map, min_score=det_min_score, iou=det_iou,
                               scene_id=scene_id, backend=backend, threads=threads, export_dir=model)
    except DetectionError as e:
        raise click.UsageError(str(e))
    try:
        if not to_stdout:
            prepare_out_dir(out_dir)
    except OutputError as e:
        raise click.UsageError(str(e))
    earlier = Path(out_dir) / POSES_NAME
    if not to_stdout and earlier.is_file() and earlier.stat().st_size > 0 and not (resume or overwrite):
        raise click.UsageError(f"--out {out_dir}: holds {POSES_NAME} of an earlier run; use --resume to continue "
                               "it or --overwrite to replace it")
    if cam.fixed is not None:  # one K for all frames: check it against the frames before loading anything
        first = source.first_frame()
        if first is not None:
            try:
                cam.check_frame(first.index, first.image.shape[1], first.image.shape[0])
            except InputError as e:
                raise click.UsageError(str(e))
    pipe, renderer = _pipeline(model, backend, threads, precision, chunk_size, render_device, tta_select)
    try:
        config = RunConfig(track=track, track_min_score=track_min_score, track_patience=track_patience,
                           bop_csv=bop_csv, scene_id=scene_id or 0, video=not (no_video or to_stdout),
                           max_frames=max_frames,
                           progress=not quiet, resume=resume, overwrite=overwrite, realtime=realtime,
                           pipelined=pipelined, show=show)
        summary = run(source, pipe, cam, detect, out_dir, config)
    except (RunError, OutputError, SourceError) as e:  # SourceError: the overlay video cannot be written
        raise click.ClickException(cli_message(e, RUN_FLAGS)) from None
    finally:
        pipe.close()
        release = getattr(renderer, "release", None)
        if release:
            release()
    click.echo(summary.format(), err=to_stdout)  # stdout carries only the poses with --out -
    if not to_stdout:
        click.echo(f"wrote {out_dir}/{POSES_NAME}" + ("" if no_video else f", {out_dir}/overlay*.mp4")
                   + (f", {out_dir}/{CSV_NAME}" if bop_csv else "") + f", {out_dir}/{SUMMARY_NAME}")
    if summary.interrupted:
        sys.exit(143 if summary.signal == "SIGTERM" else 130)
    if summary.aborted:
        click.echo(f"mrcnet-run: error: {summary.aborted}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()

"""End-to-end FPS of ``mrcnet-run``'s pipelined stages against the sequential ones, in one process.

The shipped demo (its export, clip, camera and detections) runs through
:func:`mrcnet.runtime.runner.run` with everything a user run does (reading, preprocessing,
networks, rendering, overlay video, poses.jsonl), once with ``pipelined=False`` and once with
``pipelined=True``, alternating for ``--rounds`` rounds on the same backend and renderer (after a
warm-up of a few frames); per mode the best round's end-to-end FPS is kept (the least disturbed by
other load on the machine), and the ratio pipelined / sequential is printed. The two modes' poses
are compared too (they must be identical).

    .venv/bin/python benchmarks/pipeline.py                      # the demo export (mrcnet-export first)
    .venv/bin/python benchmarks/pipeline.py --frames 45 --rounds 3 --json out/pipeline.json
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from mrcnet.runtime import manifest as M
from mrcnet.runtime.backends import create_backend
from mrcnet.runtime.detections import JsonDetections
from mrcnet.runtime.formats.camera import Camera
from mrcnet.runtime.formats.poses_jsonl import read_poses_jsonl
from mrcnet.runtime.pipeline import Pipeline
from mrcnet.runtime.runner import RunConfig, make_renderer, run
from mrcnet.runtime.video_io import FrameSource

WARMUP_FRAMES = 3


def poses_of(path: Path) -> list:
    """(frame, [(obj_id, R, t)]) of a poses.jsonl: what must not depend on the mode."""
    return [(r["frame"], [(o["obj_id"], o["R"], o["t"]) for o in r.get("objects", [])]) for r in read_poses_jsonl(path)]


def measure(pipe: Pipeline, camera: Camera, detect, clip: Path, frames: int, rounds: int, work: Path) -> dict:
    """Alternating sequential / pipelined runs of ``frames`` frames of ``clip``; the best FPS per
    mode, every round's FPS, and whether the poses of the two modes are identical."""
    run(FrameSource(clip), pipe, camera, detect, work / "warmup", RunConfig(max_frames=WARMUP_FRAMES, progress=False))
    fps = {"sequential": [], "pipelined": []}
    poses = {}
    for k in range(rounds):
        for mode in ("sequential", "pipelined"):
            out = work / f"{mode}{k}"
            s = run(FrameSource(clip), pipe, camera, detect, out,
                    RunConfig(max_frames=frames, progress=False, pipelined=mode == "pipelined"))
            fps[mode].append(round(s.fps, 3))
            poses[mode] = poses_of(out / "poses.jsonl")
            click.echo(f"round {k + 1} {mode:<10} {s.frames} frames {s.fps:6.2f} FPS ({s.wall_s:.1f} s)", err=True)
    best = {m: max(v) for m, v in fps.items()}
    return {"frames": frames, "rounds": rounds, "fps_rounds": fps, "fps_best": best,
            "ratio": round(best["pipelined"] / best["sequential"], 3), "same_poses": poses["sequential"] == poses["pipelined"]}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Export directory (default: the demo's).")
@click.option("--frames", type=click.IntRange(WARMUP_FRAMES), default=90, show_default=True,
              help="Frames of the demo clip per run (it has 90).")
@click.option("--rounds", type=click.IntRange(1), default=2, show_default=True,
              help="Sequential + pipelined runs, alternating; the best of each is kept.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the figures here.")
def main(model, frames, rounds, json_out):
    """Pipelined vs sequential end-to-end FPS of mrcnet-run on the demo clip (ONNX Runtime CPU)."""
    model = model or M.DEMO_EXPORT_DIR
    try:
        man = M.load_manifest(model)
    except M.ManifestError as e:
        raise click.UsageError(f"{e} (export the demo first: mrcnet-export --out {M.DEMO_EXPORT_DIR})")
    pipe = Pipeline(create_backend(man, "onnxruntime-cpu"), man, make_renderer())
    camera = Camera.load(M.DEMO_DIR / M.DEMO_CAMERA)
    detect = JsonDetections(M.DEMO_DIR / M.DEMO_DETECTIONS)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res = measure(pipe, camera, detect, M.DEMO_DIR / M.DEMO_CLIP, frames, rounds, Path(tmp))
    finally:
        pipe.close()
    res.update(backend=pipe.backend.name, renderer=getattr(pipe.renderer, "description", "?"))
    click.echo(f"sequential {res['fps_best']['sequential']:.2f} FPS, pipelined {res['fps_best']['pipelined']:.2f} FPS, "
               f"ratio {res['ratio']:.2f}x ({frames} frames, best of {rounds}; identical poses: {res['same_poses']}; "
               f"{res['backend']}, renderer {res['renderer']})")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``mrcnet-synth``: procedural objects, synthetic BOP scenes, demo clips and YOLO detection datasets (thin wrappers)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mrcnet.runtime.cliopts import cli_message, deprecated_alias, object_ids
from mrcnet.runtime.formats.files import OutputError, prepare_out_dir
from mrcnet.runtime.preprocess import InputError, check_camera
from mrcnet.runtime.render import Renderer

from . import bop
from . import objects as objs
from .lookalike import write_lookalike
from .scenes import (LIGHTINGS, SceneConfig, default_image_size, default_K, generate_scenes, resolve_models_dir,
                     scene_objects)
from .video import generate_video
from .yolo import write_yolo_dataset


def _device(value):
    """``--device``: None, an EGL index (digits), ``cpu`` or ``cuda:K``."""
    if value is None:
        return None
    return int(value) if str(value).isdigit() else value


def _camera(width, height, fx, fy, cx, cy):
    """(width, height, K (3, 3)) from the options; defaults from the ``synth`` preset and
    ``scenes.default_K``."""
    if width is None or height is None:
        dw, dh = default_image_size()
        width, height = width or dw, height or dh
    K = default_K(width, height)
    for (r, c), v in (((0, 0), fx), ((1, 1), fy), ((0, 2), cx), ((1, 2), cy)):
        if v is not None:
            K[r, c] = v
    if fy is None and fx is not None:
        K[1, 1] = fx
    try:
        check_camera(K, "--fx/--fy/--cx/--cy", (width, height))
    except InputError as e:
        raise click.UsageError(str(e)) from None
    return width, height, K


def _out_dir(out) -> None:
    """Create --out or fail with one line (a file, read-only, not creatable)."""
    try:
        prepare_out_dir(out)
    except OutputError as e:
        raise click.UsageError(str(e)) from None


def _camera_options(f):
    for opt in reversed([
        click.option("--width", type=click.IntRange(min=16), default=None, help="Image width (default: synth preset)."),
        click.option("--height", type=click.IntRange(min=16), default=None, help="Image height (default: synth preset)."),
        click.option("--fx", type=float, default=None, help="Focal length x, px (default 0.9 * width)."),
        click.option("--fy", type=float, default=None, help="Focal length y, px (default: fx)."),
        click.option("--cx", type=float, default=None, help="Principal point x, px (default width/2)."),
        click.option("--cy", type=float, default=None, help="Principal point y, px (default height/2)."),
    ]):
        f = opt(f)
    return f


@click.group(help="Synthetic data for MRC-Net: procedural CAD objects, BOP scenes, demo clips, YOLO datasets.")
def main():
    pass


@main.command(help="Write N procedural T-LESS-like parts as BOP models/ (+ models_info.json).")
@click.option("--count", "-n", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Dataset folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--families", default=None, help="Comma-separated part families to cycle through.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Render each part at R and R*S for its declared symmetries S and compare masks.")
@click.option("--render-device", "device", default=None, help="Renderer device for --check: EGL index, cpu, cuda:K.")
@deprecated_alias("--device", "--render-device", "device")
def objects(count, out, seed, families, check, device):
    _out_dir(out)
    t0 = time.perf_counter()
    fams = [f.strip() for f in families.split(",")] if families else None
    try:
        parts = objs.write_objects(out, count, seed=seed, families=fams)
    except ValueError as e:
        raise click.ClickException(str(e))
    all_ious: list = []
    if check:
        r = Renderer(_device(device))
        for p in parts:
            r.add_object(p.obj_id, Path(out) / "models" / f"obj_{p.obj_id:06d}.ply")
            ious = objs.check_symmetries(r, p.obj_id, p.info, seed=seed)
            if ious and min(ious) < objs.SYMMETRY_IOU_MIN:
                raise click.ClickException(
                    f"object {p.obj_id} ({p.family}): a declared symmetry does not hold "
                    f"(mask IoU {min(ious):.4f} < {objs.SYMMETRY_IOU_MIN})")
            all_ious += ious
    dt = time.perf_counter() - t0
    for p in parts:
        click.echo(f"  obj {p.obj_id:3d} {p.family:14s} diameter {p.info.diameter:6.1f} mm  "
                   f"discrete {len(p.info.symmetries_discrete):2d}  continuous {len(p.info.symmetries_continuous)}")
    msg = f"wrote {len(parts)} objects to {out}/models in {dt:.1f} s"
    if all_ious:
        msg += f"; symmetry check: {len(all_ious)} renders, worst mask IoU {min(all_ious):.4f}"
    click.echo(msg)


@main.command(help="Render a synthetic BOP split (resumes an interrupted run).")
@click.option("--models", type=click.Path(exists=True, file_okay=False), required=True,
              help="Models folder (or a dataset folder with models/).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Dataset folder.")
@click.option("--count", "-n", "images", type=click.IntRange(min=1), default=None, help="Images to render.")
@deprecated_alias("--images", "--count", "images", type=click.IntRange(min=1))
@_camera_options
@click.option("--depth-range", type=(float, float), default=(300.0, 800.0), show_default=True,
              help="Camera z of object centres, mm.")
@click.option("--objects-per-image", type=(int, int), default=(3, 6), show_default=True)
@click.option("--distractors", type=(int, int), default=(0, 3), show_default=True)
@click.option("--images-per-scene", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--depth-scale", type=float, default=0.1, show_default=True, help="mm per depth unit.")
@click.option("--box-jitter", type=float, default=0.0, show_default=True,
              help="Detections: move box sides by up to this fraction of the box size.")
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of background images (default: procedural).")
@click.option("--layout", type=click.Choice(["random", "table"]), default="random", show_default=True,
              help="random: objects float at uniform rotations (BOP PBR-like); table: objects rest on a "
                   "table seen from above at 20-70 deg elevation (bin picking, the demo clip).")
@click.option("--object-ids", "obj_ids", callback=object_ids, default=None,
              help="Comma-separated object ids to place (default: all in models_info.json).")
@click.option("--lighting", type=click.Choice(LIGHTINGS), default="camera", show_default=True,
              help="camera: 1-3 lights from the camera side; room: a sun above the table and a dim head "
                   "light (the demo clip's light; --layout table); mixed: each image one of the two.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a split made with other settings.")
@click.option("--render-device", "device", default=None, help="Renderer device: EGL index, cpu, cuda:K.")
@deprecated_alias("--device", "--render-device", "device")
def scenes(models, out, images, width, height, fx, fy, cx, cy, depth_range, objects_per_image,
           distractors, images_per_scene, split, depth_scale, box_jitter, backgrounds, layout, obj_ids,
           lighting, seed, overwrite, device):
    if images is None:
        raise click.UsageError("Missing option '--count' / '-n' (images to render).")
    width, height, K = _camera(width, height, fx, fy, cx, cy)
    cfg = SceneConfig(width=width, height=height, K=K.reshape(-1).tolist(), depth_range=depth_range,
                      objects_per_image=objects_per_image, distractors_per_image=distractors,
                      images_per_scene=images_per_scene, split=split, depth_scale=depth_scale,
                      box_jitter=box_jitter, backgrounds=backgrounds, layout=layout,
                      obj_ids=obj_ids, lighting=lighting)
    try:  # settings and objects checked before --out is made: a refused run writes nothing
        cfg.validate()
        scene_objects(resolve_models_dir(models), obj_ids)
    except (ValueError, bop.BopFormatError) as e:
        raise click.ClickException(str(e))
    _out_dir(out)
    try:
        s = generate_scenes(models, out, images, cfg, seed=seed, renderer=Renderer(_device(device)),
                            overwrite=overwrite)
    except (ValueError, bop.BopFormatError, OutputError) as e:
        raise click.ClickException(str(e))
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished images and their JSONs are kept in {out}; run the same "
                   f"command again to resume", err=True)
        raise SystemExit(130)
    click.echo(f"{s['split_dir']}: {s['images']} images ({s['generated']} rendered, {s['resumed']} "
               f"resumed), {s['instances']} new instances, {width}x{height}, "
               f"{s['seconds']:.1f} s = {s['images_per_s']:.2f} images/s")
    click.echo(f"detections: {s['detections']}" + (f"; targets: {s['targets']}" if s["targets"] else ""))


@main.command(help="Render a demo clip (mp4) with per-frame GT poses, camera K and detections.")
@click.option("--models", type=click.Path(exists=True, file_okay=False), required=True,
              help="Models folder (or a dataset folder with models/).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--count", "-n", "frames", type=click.IntRange(min=1), default=90, show_default=True, help="Frames to render.")
@deprecated_alias("--frames", "--count", "frames", type=click.IntRange(min=1))
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True)
@_camera_options
@click.option("--instances", "n_objects", type=click.IntRange(min=1), default=None,
              help="Instances on the table (default: one of each object).")
@deprecated_alias("--objects", "--instances", "n_objects", type=click.IntRange(min=1))
@click.option("--box-jitter", type=float, default=0.0, show_default=True)
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--render-device", "device", default=None, help="Renderer device: EGL index, cpu, cuda:K.")
@deprecated_alias("--device", "--render-device", "device")
def video(models, out, frames, fps, width, height, fx, fy, cx, cy, n_objects, box_jitter,
          backgrounds, seed, device):
    width, height, K = _camera(width, height, fx, fy, cx, cy)
    _out_dir(out)
    try:
        s = generate_video(models, out, n_frames=frames, fps=fps, width=width, height=height, K=K,
                           n_objects=n_objects, seed=seed, box_jitter=box_jitter,
                           backgrounds=backgrounds, renderer=Renderer(_device(device)))
    except (ValueError, bop.BopFormatError, OutputError) as e:
        raise click.ClickException(str(e))
    click.echo(f"{s['video']}: {s['frames']} frames {width}x{height}, {s['instances']} objects, "
               f"{s['detections']} detections, {s['seconds']:.1f} s = {s['frames_per_s']:.2f} frames/s")


@main.command(help="Write a synthetic look-alike of an official BOP dataset (tless, lmo, ycbv, itodd): its "
                   "models folders, test split layout, targets and a BOP'22 detections file, under OUT (use it "
                   "as $BOP_PATH).")
@click.option("--dataset", type=click.Choice(["tless", "lmo", "ycbv", "itodd"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder playing $BOP_PATH.")
@click.option("--count", "-n", "images", type=click.IntRange(min=1), default=2, show_default=True, help="Test images.")
@deprecated_alias("--images", "--count", "images", type=click.IntRange(min=1))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--render-device", "device", default=None, help="Renderer device: EGL index, cpu, cuda:K.")
@deprecated_alias("--device", "--render-device", "device")
def lookalike(dataset, out, images, seed, device):
    _out_dir(out)
    try:
        r = write_lookalike(dataset, out, n_images=images, seed=seed, renderer=Renderer(_device(device)))
    except (ValueError, bop.BopFormatError, OutputError) as e:
        raise click.ClickException(str(e))
    click.echo(f"{r['root']}: split {r['split']}" + (f" (no ground truth; val: {r['val']})" if r["val"] else "")
               + f", targets {r['targets']}, detections {r['detections']}")


@main.command(help="Write a YOLO-format detection dataset (images/, labels/, data.yaml) from a BOP split, "
                    "for training a 2D detector with Ultralytics (docs/LIVE.md).")
@click.option("--scenes", type=click.Path(exists=True, file_okay=False), required=True,
              help="A BOP split folder (e.g. the --out of mrcnet-synth scenes + /test), or a dataset folder.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Dataset folder to write.")
@click.option("--split", default=None, help="Split folder name when --scenes is a dataset folder with several.")
@click.option("--models", default="models", show_default=True,
              help="Models folder holding models_info.json (name in the dataset folder, or a path).")
@click.option("--min-visib", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Label only instances with at least this visible fraction (scene_gt_info visib_fract).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of the images in val (0: val = train).")
@click.option("--object-ids", "obj_ids", callback=object_ids, default=None,
              help="Comma-separated object ids to label (default: all in models_info.json).")
@deprecated_alias("--obj-ids", "--object-ids", "obj_ids", callback=object_ids)
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --out.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def yolo(scenes, out, split, models, min_visib, val_fraction, obj_ids, overwrite, quiet):
    _out_dir(out)
    try:
        s = write_yolo_dataset(scenes, out, split=split, models=models, min_visib_fract=min_visib,
                               val_fraction=val_fraction, obj_ids=obj_ids, overwrite=overwrite, progress=not quiet)
    except (ValueError, bop.BopFormatError, OutputError) as e:
        raise click.ClickException(cli_message(e, {"obj_ids": "--object-ids", "min_visib_fract": "--min-visib"}).splitlines()[0])
    click.echo(f"{out}: {s['images']} images ({s['train']} train, {s['val']} val), {s['labels']} labels of "
               f"{len(s['classes'])} classes (objects {', '.join(map(str, s['classes']))}), "
               f"{s['skipped_instances']} instances not labelled, {s['seconds']:.1f} s")
    click.echo(f"train: yolo detect train data={s['data_yaml']} model=yolov8n.pt; then yolo export "
               f"model=.../best.pt format=onnx; run: mrcnet-run 0 --detector best.onnx")


if __name__ == "__main__":  # pragma: no cover
    main()

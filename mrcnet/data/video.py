"""Demo clips: objects resting on a table under a smoothly moving camera.

Written under ``out``::

    video.mp4            the clip (OpenCV VideoWriter, mp4v), BGR frames of W x H
    camera.json          {"fx", "fy", "cx", "cy", "width", "height", "cam_K": [9]}
    scene_camera.json    per frame (BOP keys = frame index): cam_K, cam_R_w2c, cam_t_w2c (mm)
    scene_gt.json        per frame: [{"cam_R_m2c", "cam_t_m2c" (mm), "obj_id"}] (BOP format)
    scene_gt_info.json   per frame: visib_fract, boxes, pixel counts (BOP format)
    detections.json      BOP'22 detections, scene_id 0, image_id = frame index (GT boxes of the
                         instances with visib_fract >= 0.1, optionally jittered, with their RLE)

World frame: the table top is the plane z = 0 (mm), z up; the camera looks at the objects from
an orbit whose azimuth, elevation, distance and look-at point vary smoothly (sinusoids), so
consecutive frames differ by a few pixels. Deterministic for a given seed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mrcnet.runtime.render import Light, Mesh, Renderer, SceneObject

from . import bop
from .backgrounds import background_source
from .layout import TABLE_ID, coco_box, full_silhouette, jitter_box, look_at, place_on_table
from .scenes import default_image_size, default_K, resolve_models_dir

@dataclass
class Orbit:
    """Smooth camera path: azimuth sweep, breathing elevation and distance, drifting target.

    All angles in radians, lengths in mm; ``u`` in [0, 1] is the clip time.
    """

    azimuth0: float
    sweep: float
    elevation: float
    elevation_amp: float
    distance: float
    distance_amp: float
    target_amp: float
    phase: float

    @classmethod
    def random(cls, rng, distance: float) -> "Orbit":
        return cls(azimuth0=rng.uniform(0, 2 * np.pi), sweep=rng.uniform(0.6, 1.4) * rng.choice([-1, 1]),
                   elevation=np.radians(rng.uniform(35, 55)), elevation_amp=np.radians(rng.uniform(5, 12)),
                   distance=distance, distance_amp=0.15 * distance, target_amp=0.08 * distance,
                   phase=rng.uniform(0, 2 * np.pi))

    def pose(self, u: float) -> tuple[np.ndarray, np.ndarray]:
        """World -> camera (R (3,3), t (3,)) at time ``u``."""
        az = self.azimuth0 + self.sweep * u
        el = self.elevation + self.elevation_amp * np.sin(2 * np.pi * u + self.phase)
        d = self.distance + self.distance_amp * np.sin(2 * np.pi * u * 0.5 + 2 * self.phase)
        target = self.target_amp * np.array([np.sin(2 * np.pi * u + self.phase),
                                             np.cos(2 * np.pi * u * 0.7), 0.0])
        eye = target + d * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        return look_at(eye, target)


def generate_video(models_dir, out, n_frames: int = 90, fps: float = 30.0, width: int | None = None,
                   height: int | None = None, K=None, n_objects: int | None = None, seed: int = 0,
                   box_jitter: float = 0.0, min_visib_fract: float = 0.1, backgrounds=None,
                   renderer=None, progress: bool = True) -> dict:
    """Render a demo clip with ground truth (see the module docstring).

    :param models_dir: BOP models folder (or a dataset folder with ``models/``).
    :param n_objects: instances on the table (default: one of each object).
    :param K: (3, 3) camera; default :func:`scenes.default_K` of the image size (``synth`` preset).
    :return: summary ``{"frames", "seconds", "frames_per_s", "video", "instances"}``.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    models_dir = resolve_models_dir(models_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if width is None or height is None:
        dw, dh = default_image_size()
        width, height = width or dw, height or dh
    K = default_K(width, height) if K is None else np.asarray(K, float).reshape(3, 3)
    renderer = renderer or Renderer()
    infos = bop.load_models_info(models_dir / "models_info.json")
    obj_ids = sorted(infos)
    for oid in obj_ids:
        renderer.add_object(oid, models_dir / f"obj_{oid:06d}.ply")

    rng = np.random.default_rng([int(seed), 0xC11B])
    ids = obj_ids if n_objects is None else [obj_ids[int(k)] for k in rng.integers(len(obj_ids), size=n_objects)]
    spread = 0.6 * max(infos[i].diameter for i in ids) * max(1.0, np.sqrt(len(ids)))
    poses_w = place_on_table(rng, [renderer.mesh(i) for i in ids], spread)
    colours = [tuple(float(c) for c in rng.uniform(0.35, 0.9) * (1 - rng.uniform(0, 0.3, 3))) for _ in ids]

    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built
    table_side = 4.0 * spread + 2 * max(infos[i].diameter for i in ids)
    table = trimesh.creation.box(extents=(table_side, table_side, 10.0))
    table.apply_translation((0, 0, -5.0))
    renderer.add_object(TABLE_ID, Mesh.from_arrays(table.vertices, table.faces, name="<table>"))
    table_colour = tuple(float(c) for c in rng.uniform(0.2, 0.6, 3))

    # the scene fits the view: distance so that the objects' disc spans about 80 % of the width
    distance = max(300.0, (2 * spread + max(infos[i].diameter for i in ids)) * K[0, 0] / (0.8 * width))
    orbit = Orbit.random(rng, distance)
    light_w = np.array([0.3, -0.4, 1.0])  # sun from above, world frame (towards the light)
    background = background_source(backgrounds)(rng, width, height)

    tmp = out / ".video.tmp.mp4"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{tmp}: OpenCV cannot write mp4v video (VideoWriter did not open)")
    scene_camera, scene_gt, scene_gt_info, dets = {}, {}, {}, []
    t0 = time.perf_counter()
    try:
        for f in tqdm(range(n_frames), desc="video", unit="frame", disable=not progress):
            u = f / max(1, n_frames - 1)
            Rw, tw = orbit.pose(u)
            objs = [SceneObject(TABLE_ID, Rw, tw, color=table_colour, specular=0.05)]
            for oid, (R, t), col in zip(ids, poses_w, colours):
                objs.append(SceneObject(oid, Rw @ R, Rw @ t + tw, color=col, specular=0.3, shininess=30))
            lights = [Light.directional(Rw @ light_w, (0.75, 0.75, 0.72)),
                      Light.directional((0.0, 0.0, -1.0), (0.25, 0.25, 0.25))]
            res = renderer.render_scene(objs, K, width, height, lights=lights, background=background,
                                        ambient=(0.25, 0.25, 0.25))
            writer.write(res.rgb)
            scene_camera[f] = {"cam_K": K, "cam_R_w2c": Rw, "cam_t_w2c": tw}
            scene_gt[f], scene_gt_info[f] = [], []
            for k in range(1, len(objs)):
                o = objs[k]
                full = res.masks_full[k]
                visib = (res.instance == k) & full
                px_all, bbox_obj = full_silhouette(renderer, o.obj_id, o.R, o.t, K, width, height, full)
                px_visib = int(visib.sum())
                vf = px_visib / px_all if px_all > 0 else 0.0
                scene_gt[f].append({"cam_R_m2c": o.R, "cam_t_m2c": o.t, "obj_id": int(o.obj_id)})
                scene_gt_info[f].append({
                    "bbox_obj": bbox_obj if px_visib > 0 else [-1, -1, -1, -1],
                    "bbox_visib": bop.bbox_from_mask(visib), "px_count_all": px_all,
                    "px_count_valid": int((res.depth[full] > 0).sum()), "px_count_visib": px_visib,
                    "visib_fract": float(vf)})
                if px_visib > 0 and vf >= min_visib_fract:
                    box = coco_box(visib)
                    if box_jitter > 0:
                        box = jitter_box(rng, box, box_jitter, width, height)
                    dets.append({"scene_id": 0, "image_id": f, "category_id": int(o.obj_id), "score": 1.0,
                                 "bbox": box, "segmentation": bop.encode_rle(visib), "time": -1.0})
        writer.release()
        os.replace(tmp, out / "video.mp4")
    finally:
        writer.release()
        if tmp.exists():
            tmp.unlink()
    seconds = time.perf_counter() - t0
    bop.save_json(out / "camera.json", bop.camera_dict(K, width, height))
    bop.save_scene_camera(out / "scene_camera.json", scene_camera)
    bop.save_scene_gt(out / "scene_gt.json", scene_gt)
    bop.save_scene_gt_info(out / "scene_gt_info.json", scene_gt_info)
    bop.save_detections(out / "detections.json", dets)
    return {"frames": n_frames, "seconds": seconds, "frames_per_s": n_frames / seconds,
            "video": str(out / "video.mp4"), "instances": len(ids), "detections": len(dets)}

"""Tiny synthetic BOP data for the training tests (procedural parts rendered with the project's
renderer), cached per test session. Uses ``mrcnet.data.scenes`` when it exists, else writes the few
BOP files the sample pipeline reads (rgb, mask_visib, scene_camera, scene_gt, scene_gt_info)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mrcnet.runtime.rotations import random_rotation

K_TINY = np.array([[500.0, 0.0, 160.0], [0.0, 500.0, 120.0], [0.0, 0.0, 1.0]])
SIZE = (320, 240)


def write_tiny_split(root, n_images: int = 4, n_objects: int = 3, seed: int = 0, split: str = "train_pbr",
                     per_image: int = 2, families=("block", "plate_holes", "bushing")) -> Path:
    """Write ``root/models`` (procedural parts, ``mrcnet.data.objects``) and a BOP split
    ``root/<split>`` with ``n_images`` 320x240 images of ``per_image`` objects at 350-600 mm
    (``mrcnet.data.scenes.generate_scenes`` when available). Returns root."""
    from mrcnet.data import objects

    root = Path(root)
    fams = [f for f in families if f in objects.FAMILIES] or None
    if not (root / "models" / "models_info.json").is_file():
        objects.write_objects(root, n_objects, seed=seed, families=fams, progress=False, eval_copy=False)
    try:
        from mrcnet.data.scenes import SceneConfig, generate_scenes
    except ImportError:
        return _write_split_directly(root, n_images, seed, split, per_image)
    W, H = SIZE
    cfg = SceneConfig(width=W, height=H, K=K_TINY.reshape(-1).tolist(), depth_range=(350.0, 600.0),
                      objects_per_image=(per_image, per_image), distractors_per_image=(0, 0), split=split)
    generate_scenes(root / "models", root, n_images, cfg, seed=seed, progress=False)
    return root


def _write_split_directly(root: Path, n_images: int, seed: int, split: str, per_image: int) -> Path:
    """Fallback writer of the BOP files the sample pipeline reads."""
    from mrcnet.data import bop
    from mrcnet.runtime.render import Renderer, SceneObject, load_mesh
    infos = bop.load_models_info(root / "models" / "models_info.json")
    r = Renderer()
    for oid in infos:
        r.add_object(oid, load_mesh(root / "models" / f"obj_{oid:06d}.ply"))
    rng = np.random.default_rng(seed)
    scene = root / split / "000000"
    for sub in ("rgb", "mask_visib"):
        (scene / sub).mkdir(parents=True, exist_ok=True)
    cams, gts, ginfo = {}, {}, {}
    W, H = SIZE
    for im in range(n_images):
        objs = []
        for j in range(per_image):
            oid = int(list(infos)[(im + j) % len(infos)])
            z = rng.uniform(350, 600)
            px = rng.uniform(0.3, 0.7) * W + (j - (per_image - 1) / 2) * 90
            py = rng.uniform(0.35, 0.65) * H
            t = np.array([(px - K_TINY[0, 2]) * z / K_TINY[0, 0], (py - K_TINY[1, 2]) * z / K_TINY[1, 1], z])
            objs.append(SceneObject(oid, random_rotation(rng), t, color=rng.uniform(0.3, 0.9, 3)))
        bg = (rng.uniform(20, 200, (H // 8, W // 8, 3))).astype(np.uint8)
        bg = np.ascontiguousarray(np.kron(bg, np.ones((8, 8, 1), np.uint8)))
        res = r.render_scene(objs, K_TINY, W, H, background=bg)
        bop.save_image(scene / "rgb" / f"{im:06d}.png", res.rgb)
        cams[im] = {"cam_K": K_TINY, "depth_scale": 1.0}
        gts[im], ginfo[im] = [], []
        for j, o in enumerate(objs):
            vis = res.instance == j
            full = res.masks_full[j]
            bop.save_mask(scene / "mask_visib" / f"{im:06d}_{j:06d}.png", vis)
            gts[im].append({"cam_R_m2c": o.R, "cam_t_m2c": o.t, "obj_id": o.obj_id})
            n_all, n_vis = int(full.sum()), int(vis.sum())
            ginfo[im].append({"bbox_obj": bop.bbox_from_mask(full), "bbox_visib": bop.bbox_from_mask(vis),
                              "px_count_all": n_all, "px_count_valid": n_all, "px_count_visib": n_vis,
                              "visib_fract": n_vis / max(n_all, 1)})
    bop.save_scene_camera(scene / "scene_camera.json", cams)
    bop.save_scene_gt(scene / "scene_gt.json", gts)
    bop.save_scene_gt_info(scene / "scene_gt_info.json", ginfo)
    r.release()
    return root

"""Synthetic BOP splits: several procedural (or any BOP) objects per image, rendered with
``mrcnet.runtime.render``.

Layout written under ``out`` (a BOP dataset folder)::

    models/                              copy of the models used (unless it is the source)
    <split>/<scene:06d>/rgb/<im:06d>.png                uint8 BGR
    <split>/<scene:06d>/depth/<im:06d>.png              uint16, x depth_scale = mm
    <split>/<scene:06d>/mask/<im:06d>_<gt:06d>.png      full silhouette (0/255)
    <split>/<scene:06d>/mask_visib/<im:06d>_<gt:06d>.png visible part (0/255)
    <split>/<scene:06d>/scene_camera.json, scene_gt.json, scene_gt_info.json
    test_targets_bop19.json              (split "test" only) instances with visib_fract >= 0.1
    detections_gt_<split>.json           BOP'22 detections from the GT (optionally jittered)
    <split>/.progress/                   per-image records (resume state) and the run settings

Image ``i`` (0-based) is scene ``i // images_per_scene``, image id ``i % images_per_scene``, and is
drawn from its own generator ``default_rng([seed, i])``: the same seed gives the same bytes, and
an interrupted run resumes where it stopped (images whose record exists are skipped; the JSONs
are rebuilt from the records).

``scene_gt_info`` follows ``bop_toolkit/scripts/calc_gt_info.py``: ``px_count_all`` and
``bbox_obj`` cover the whole silhouette, also outside the image (rendered on a larger canvas when
truncated); ``px_count_valid`` counts silhouette pixels with a non-zero stored depth;
``px_count_visib`` the visible pixels (from the instance buffer); boxes are ``[x, y, w, h]`` with
``w = x_max - x_min``, ``[-1, -1, -1, -1]`` when nothing is visible. Detections use COCO boxes
(``w = x_max - x_min + 1``) of the visible mask and its RLE.
"""

from __future__ import annotations

import colorsys
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from mrcnet.runtime.presets import get_dataset
from mrcnet.runtime.render import Light, Mesh, Renderer, SceneObject
from mrcnet.runtime.rotations import random_rotation

from . import bop
from .backgrounds import background_source, pixel_noise
from .layout import DISTRACTOR_ID0, TABLE_ID, coco_box, full_silhouette, jitter_box, look_at, place_on_table
from .objects import make_distractor

log = logging.getLogger(__name__)

#: default focal length as a fraction of the image width (572 px at 640, close to LM-O's camera)
FOCAL_PER_WIDTH = 0.9
#: BOP'22 detections file written next to the split
DETECTIONS_NAME = "detections_gt_{split}.json"
PROGRESS_DIR = ".progress"


def default_image_size() -> tuple[int, int]:
    """(width, height) of the ``synth`` dataset preset (runtime/presets.py)."""
    p = get_dataset("synth")
    return p.width, p.height


def default_K(width: int, height: int) -> np.ndarray:
    """(3, 3) camera: fx = fy = FOCAL_PER_WIDTH * width, principal point at the image centre."""
    f = FOCAL_PER_WIDTH * width
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


LIGHTINGS = ("camera", "room", "mixed")  # SceneConfig.lighting


@dataclass
class SceneConfig:
    """Settings of a synthetic split (lengths in mm, sizes in pixels).

    ``K`` None: :func:`default_K`. ``width``/``height`` None: the ``synth`` preset's image size.
    ``depth_range``: camera z of the object centres (``layout="table"``: the camera's distance to
    the table centre). ``layout``: ``"random"`` (uniform rotations, anywhere in view) or
    ``"table"`` (every object resting on a table, :func:`place_on_table_view`). ``box_jitter``:
    detections' box corners move by up to this fraction of the box size (0 = exact GT boxes).
    ``lighting``: ``"camera"`` (1-3 lights from the camera side, :func:`sample_lights`), ``"room"``
    (a sun from above the table plus a dim head light, :func:`sample_room_lights`: the demo clip's
    kind of light; ``layout="table"`` only) or ``"mixed"`` (each image one of the two, evenly).
    """

    width: int | None = None
    height: int | None = None
    K: list | None = None
    depth_range: tuple = (300.0, 800.0)
    objects_per_image: tuple = (3, 6)
    distractors_per_image: tuple = (0, 3)
    images_per_scene: int = 100
    split: str = "test"
    depth_scale: float = 0.1
    box_jitter: float = 0.0
    min_visib_fract: float = bop.TARGETS_MIN_VISIB
    backgrounds: str | None = None
    noise_std: tuple = (0.0, 3.0)
    obj_ids: list | None = None  # default: every object of models_info.json
    layout: str = "random"  # "random" | "table"
    lighting: str = "camera"  # "camera" | "room" | "mixed"

    def resolved(self) -> "SceneConfig":
        """A copy with width/height/K filled in and tuples normalised (JSON-comparable)."""
        w, h = self.width, self.height
        if w is None or h is None:
            dw, dh = default_image_size()
            w, h = w or dw, h or dh
        K = np.asarray(self.K if self.K is not None else default_K(w, h), float).reshape(3, 3)
        d = asdict(self)
        d.update(width=int(w), height=int(h), K=K.reshape(-1).tolist(),
                 depth_range=[float(v) for v in self.depth_range],
                 objects_per_image=[int(v) for v in self.objects_per_image],
                 distractors_per_image=[int(v) for v in self.distractors_per_image],
                 noise_std=[float(v) for v in self.noise_std],
                 backgrounds=None if self.backgrounds is None else str(Path(self.backgrounds).resolve()),
                 obj_ids=None if self.obj_ids is None else sorted(int(v) for v in self.obj_ids))
        return SceneConfig(**d)

    def validate(self) -> None:
        near, far = self.depth_range
        if not 0 < near <= far:
            raise ValueError(f"depth_range must satisfy 0 < near <= far (mm), got {self.depth_range}")
        lo, hi = self.objects_per_image
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_image must satisfy 1 <= min <= max, got {self.objects_per_image}")
        lo, hi = self.distractors_per_image
        if not 0 <= lo <= hi:
            raise ValueError(f"distractors_per_image must satisfy 0 <= min <= max, got {self.distractors_per_image}")
        if self.images_per_scene < 1:
            raise ValueError(f"images_per_scene must be >= 1, got {self.images_per_scene}")
        if self.depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0, got {self.depth_scale}")
        if self.layout not in ("random", "table"):
            raise ValueError(f"layout must be 'random' or 'table', got {self.layout!r}")
        if self.lighting not in LIGHTINGS:
            raise ValueError(f"lighting must be one of {', '.join(LIGHTINGS)}, got {self.lighting!r}")
        if self.lighting != "camera" and self.layout != "table":
            raise ValueError(f"lighting {self.lighting!r} needs layout 'table' (a sun above the table)")


# --------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------

def _hsv_colour(rng, sat=(0.0, 0.5), val=(0.35, 0.95)) -> tuple:
    """RGB in [0, 1] from a random hue, saturation and value."""
    return colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def sample_lights(rng):
    """1-3 lights (directional from the camera side, sometimes a point light) and an ambient term."""
    lights = []
    for i in range(int(rng.integers(1, 4))):
        d = rng.normal(size=3)
        d[2] = -abs(d[2]) - 0.3  # towards the camera side of the scene
        tint = np.asarray(_hsv_colour(rng, sat=(0.0, 0.25), val=(0.4, 1.0)))
        if i > 0 and rng.random() < 0.3:
            lights.append(Light.point(d / np.linalg.norm(d) * rng.uniform(500, 2000), tint / 1.5))
        else:
            lights.append(Light.directional(d, tint / (1 + 0.5 * i)))
    ambient = tuple(float(v) for v in np.full(3, rng.uniform(0.1, 0.4)))
    return lights, ambient


ROOM_SUN_ELEVATION_DEG = (35.0, 90.0)  # "room" lighting: the sun's elevation above the table


def sample_room_lights(rng, R_w2c: np.ndarray):
    """A sun above the table (elevation in :data:`ROOM_SUN_ELEVATION_DEG`, any azimuth, white with a
    slight random tint) and a dim grey head light, with an ambient term: a room or workshop light.

    :param R_w2c: (3, 3) table (world, z up) -> camera rotation.
    :return: ``(lights, ambient)`` as :func:`sample_lights`, directions in the camera frame.
    """
    az = rng.uniform(0, 2 * np.pi)
    el = np.radians(rng.uniform(*ROOM_SUN_ELEVATION_DEG))
    towards_w = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    sun = np.asarray(_hsv_colour(rng, sat=(0.0, 0.15), val=(0.6, 0.95)))
    head = rng.uniform(0.1, 0.35)
    lights = [Light.directional(np.asarray(R_w2c, float) @ towards_w, sun),
              Light.directional((0.0, 0.0, -1.0), (head, head, head))]
    ambient = tuple(float(v) for v in np.full(3, rng.uniform(0.15, 0.35)))
    return lights, ambient


def place_objects(rng, spheres: Sequence[tuple], K: np.ndarray, width: int, height: int,
                  depth_range: Sequence[float], tries: int = 50) -> list:
    """Random poses for objects with bounding spheres ``(centre (3,), radius)`` (model frame, mm).

    Rotations are uniform; the sphere centre's camera z is uniform in ``depth_range`` and its
    projection uniform in the central 80 % of the image; spheres of different objects do not
    intersect (no interpenetration) and stay 10 mm in front of the camera. An object that finds
    no free place in ``tries`` draws is left out (None in the returned list).

    :return: list of ``(R (3, 3), t (3,))`` or None, one per sphere.
    """
    Kinv = np.linalg.inv(K)
    placed: list = []
    out = []
    for centre, radius in spheres:
        pose = None
        for _ in range(tries):
            R = random_rotation(rng)
            z = rng.uniform(*depth_range)
            u, v = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
            p = Kinv @ np.array([u, v, 1.0]) * z  # where the sphere centre goes
            if z - radius < 10.0:
                continue
            if any(np.linalg.norm(p - q) < radius + r for q, r in placed):
                continue
            pose = (R, p - R @ np.asarray(centre, float))
            placed.append((p, radius))
            break
        out.append(pose)
    return out


# --------------------------------------------------------------------------------------------
# One image.
# --------------------------------------------------------------------------------------------

TABLE_ELEVATION_DEG = (20.0, 70.0)  # camera elevation above the table ("table" layout)


def place_on_table_view(rng, renderer, ids: Sequence[int], spheres: dict, distance_range: Sequence[float]):
    """The ``"table"`` layout: objects ``ids`` resting on a table (:func:`mrcnet.data.layout.place_on_table`:
    a face of the bounding box down, random yaw, no overlap) seen by a camera at a random azimuth,
    elevation in :data:`TABLE_ELEVATION_DEG` and distance to the table centre uniform in
    ``distance_range`` (mm), looking at a point near the centre.

    Registers the table mesh with ``renderer`` (id :data:`mrcnet.data.layout.TABLE_ID`). Returns the
    objects' camera poses ``[(R (3, 3), t (3,))]`` and the table's ``SceneObject`` (a random colour).
    """
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built

    radius = max(spheres[i][1] for i in ids)
    spread = 1.2 * radius * max(1.0, np.sqrt(len(ids)))
    poses_w = place_on_table(rng, [renderer.mesh(i) for i in ids], spread)
    side = 4.0 * spread + 4 * radius
    box = trimesh.creation.box(extents=(side, side, 10.0))
    box.apply_translation((0, 0, -5.0))
    renderer.add_object(TABLE_ID, Mesh.from_arrays(box.vertices, box.faces, name="<table>"))
    az = rng.uniform(0, 2 * np.pi)
    el = np.radians(rng.uniform(*TABLE_ELEVATION_DEG))
    dist = rng.uniform(*distance_range)
    target = np.append(rng.uniform(-0.3, 0.3, 2) * spread, 0.0)
    eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    Rw, tw = look_at(eye, target)
    table = SceneObject(TABLE_ID, Rw, tw, color=_hsv_colour(rng, sat=(0, 0.6), val=(0.2, 0.8)), specular=0.05)
    return [(Rw @ R, Rw @ t + tw) for R, t in poses_w], table


class SceneWriter:
    """Renders and writes images of one synthetic split (see the module docstring).

    :param renderer: a ``mrcnet.runtime.render.Renderer``; the dataset objects are added as their
        obj_id and distractors as ``DISTRACTOR_ID0 + k``.
    :param models_dir: BOP models folder (``models_info.json`` + ``obj_XXXXXX.ply``).
    :param out: dataset folder to write into.
    :param config: :class:`SceneConfig` (resolved here).
    :param seed: base seed.
    """

    def __init__(self, renderer, models_dir, out, config: SceneConfig, seed: int = 0,
                 n_distractor_meshes: int = 8):
        self.cfg = config.resolved()
        self.cfg.validate()
        self.seed = int(seed)
        self.renderer = renderer
        self.models_dir = Path(models_dir)
        self.out = Path(out)
        self.split_dir = self.out / self.cfg.split
        self.progress_dir = self.split_dir / PROGRESS_DIR
        self.K = np.asarray(self.cfg.K, float).reshape(3, 3)
        self.W, self.H = self.cfg.width, self.cfg.height
        self.infos, self.obj_ids = scene_objects(self.models_dir, self.cfg.obj_ids)
        self.spheres = {}
        for oid in self.obj_ids:
            path = self.models_dir / f"obj_{oid:06d}.ply"
            if not path.is_file():
                raise bop.BopFormatError(f"{path}: file not found (object {oid} of models_info.json)")
            renderer.add_object(oid, path)
            self.spheres[oid] = renderer.mesh(oid).bounding_sphere
        rng = np.random.default_rng([self.seed, 0x5EED])
        self.distractor_ids = []
        for k in range(n_distractor_meshes):
            m = make_distractor(rng)
            did = DISTRACTOR_ID0 + k
            renderer.add_object(did, Mesh.from_arrays(m.vertices, m.faces, name=f"<distractor {k}>"))
            self.spheres[did] = renderer.mesh(did).bounding_sphere
            self.distractor_ids.append(did)
        self.backgrounds = background_source(self.cfg.backgrounds)

    # -- bookkeeping ----------------------------------------------------------------------
    def location(self, index: int) -> tuple[int, int]:
        """(scene_id, im_id) of image ``index``."""
        return index // self.cfg.images_per_scene, index % self.cfg.images_per_scene

    def record_path(self, index: int) -> Path:
        s, i = self.location(index)
        return self.progress_dir / f"{s:06d}_{i:06d}.json"

    def settings(self) -> dict:
        """What must match for a resume: the config, the seed and the models."""
        return {"config": asdict(self.cfg), "seed": self.seed,
                "models": {str(k): round(v.diameter, 6) for k, v in sorted(self.infos.items())}}

    def check_or_write_settings(self, overwrite: bool = False) -> None:
        """Start a split or resume one made with the same settings (else a one-line error)."""
        path = self.progress_dir / "settings.json"
        mine = json.loads(json.dumps(self.settings()))
        if path.is_file():
            theirs = bop.load_json(path)
            theirs.get("config", {}).setdefault("layout", "random")  # splits made before layouts existed
            theirs.get("config", {}).setdefault("lighting", "camera")  # ... and before lightings
            if theirs != mine:
                if not overwrite:
                    diff = sorted(k for k in set(mine["config"]) | set(theirs.get("config", {}))
                                  if mine["config"].get(k) != theirs.get("config", {}).get(k))
                    what = ", ".join(diff) or ("seed" if theirs.get("seed") != mine["seed"] else "models")
                    raise ValueError(f"{self.split_dir} was generated with other settings ({what}); "
                                     f"use another --out or --overwrite")
                shutil.rmtree(self.split_dir)
        elif self.split_dir.is_dir() and any(self.split_dir.iterdir()) and not overwrite:
            raise ValueError(f"{self.split_dir} exists and was not made by mrcnet-synth; "
                             f"use another --out or --overwrite")
        elif self.split_dir.is_dir() and overwrite:
            shutil.rmtree(self.split_dir)
        self.progress_dir.mkdir(parents=True, exist_ok=True)
        bop.save_json(path, mine)

    # -- one image ------------------------------------------------------------------------
    def render_image(self, index: int) -> dict:
        """Render image ``index`` -> dict with ``rgb`` (H,W,3) u8 BGR, ``depth`` (H,W) f32 mm,
        ``masks`` (n,H,W) bool, ``masks_visib`` (n,H,W) bool and ``record`` (the JSON entries)."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, int(index)])
        scene_id, im_id = self.location(index)
        n_obj = int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))
        n_dis = int(rng.integers(cfg.distractors_per_image[0], cfg.distractors_per_image[1] + 1))
        ids = [self.obj_ids[int(k)] for k in rng.integers(len(self.obj_ids), size=n_obj)]
        ids += [self.distractor_ids[int(k)] for k in rng.integers(len(self.distractor_ids), size=n_dis)]
        objects, targets = [], []
        if cfg.layout == "table":
            poses, table = place_on_table_view(rng, self.renderer, ids, self.spheres, cfg.depth_range)
            objects.append(table)
        else:
            poses = place_objects(rng, [self.spheres[i] for i in ids], self.K, self.W, self.H, cfg.depth_range)
        for oid, pose in zip(ids, poses):
            colour = _hsv_colour(rng) if oid < DISTRACTOR_ID0 else _hsv_colour(rng, sat=(0, 1), val=(0.2, 1))
            spec, shin = float(rng.uniform(0, 0.5)), float(rng.uniform(5, 60))
            if pose is None:
                continue
            objects.append(SceneObject(oid, pose[0], pose[1], color=colour, specular=spec, shininess=shin))
            if oid < DISTRACTOR_ID0:
                targets.append(len(objects) - 1)
        room = cfg.lighting == "room" or (cfg.lighting == "mixed" and rng.random() < 0.5)
        lights, ambient = sample_room_lights(rng, table.R) if room else sample_lights(rng)
        background = self.backgrounds(rng, self.W, self.H)
        res = self.renderer.render_scene(objects, self.K, self.W, self.H, lights=lights,
                                         background=background, ambient=ambient)
        std = rng.uniform(*cfg.noise_std)
        rgb = res.rgb
        if std > 0:
            rgb = np.clip(rgb + pixel_noise(rng, std, rgb.shape), 0, 255).astype(np.uint8)

        # depth as stored (uint16 steps of depth_scale): px_count_valid counts what a reader sees
        q = np.where(res.depth > 0, np.rint(res.depth / cfg.depth_scale), 0)
        q = np.where(q <= 65535, q, 0)
        depth = (q * cfg.depth_scale).astype(np.float32)

        gts, infos, dets, masks, masks_visib = [], [], [], [], []
        for gt_id, k in enumerate(targets):
            o = objects[k]
            full = res.masks_full[k]
            visib = (res.instance == k) & full
            px_all, bbox_obj = full_silhouette(self.renderer, o.obj_id, np.asarray(o.R, float),
                                                np.asarray(o.t, float), self.K, self.W, self.H, full)
            px_visib = int(visib.sum())
            vf = px_visib / px_all if px_all > 0 else 0.0
            gts.append({"cam_R_m2c": np.asarray(o.R, float), "cam_t_m2c": np.asarray(o.t, float),
                        "obj_id": int(o.obj_id)})
            infos.append({"bbox_obj": bbox_obj if px_visib > 0 else [-1, -1, -1, -1],
                          "bbox_visib": bop.bbox_from_mask(visib),
                          "px_count_all": px_all, "px_count_valid": int((depth[full] > 0).sum()),
                          "px_count_visib": px_visib, "visib_fract": float(vf)})
            masks.append(full)
            masks_visib.append(visib)
            if px_visib > 0 and vf >= cfg.min_visib_fract:
                box = coco_box(visib)
                if cfg.box_jitter > 0:
                    box = jitter_box(rng, box, cfg.box_jitter, self.W, self.H)
                dets.append({"scene_id": scene_id, "image_id": im_id, "category_id": int(o.obj_id),
                             "score": 1.0, "bbox": box, "segmentation": bop.encode_rle(visib),
                             "time": -1.0})
        record = {"scene_id": scene_id, "im_id": im_id,
                  "camera": {"cam_K": self.K.reshape(-1).tolist(), "depth_scale": cfg.depth_scale},
                  "gt": bop._jsonable(gts), "gt_info": bop._jsonable(infos),
                  "detections": bop._jsonable(dets)}
        empty = np.zeros((0, self.H, self.W), bool)
        return {"rgb": rgb, "depth": depth, "masks": np.stack(masks) if masks else empty,
                "masks_visib": np.stack(masks_visib) if masks_visib else empty, "record": record}

    def write_image(self, index: int) -> dict:
        """Render image ``index`` and write its files, each atomically; the record goes last, so
        its presence means the image is complete. Returns the record."""
        r = self.render_image(index)
        scene_id, im_id = self.location(index)
        sd = self.split_dir / f"{scene_id:06d}"
        bop.save_image(sd / "rgb" / f"{im_id:06d}.png", r["rgb"])
        bop.save_depth(sd / "depth" / f"{im_id:06d}.png", r["depth"], self.cfg.depth_scale)
        for gt_id, (m, mv) in enumerate(zip(r["masks"], r["masks_visib"])):
            bop.save_mask(sd / "mask" / f"{im_id:06d}_{gt_id:06d}.png", m)
            bop.save_mask(sd / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png", mv)
        bop.save_json(self.record_path(index), r["record"])
        return r["record"]

    # -- JSONs from records ---------------------------------------------------------------
    def records(self, scene_id: int | None = None) -> list[dict]:
        """Every finished image's record (of one scene, or all), sorted by (scene_id, im_id)."""
        pattern = "[0-9]*_[0-9]*.json" if scene_id is None else f"{scene_id:06d}_[0-9]*.json"
        out = [bop.load_json(p) for p in sorted(self.progress_dir.glob(pattern))]
        return sorted(out, key=lambda r: (r["scene_id"], r["im_id"]))

    def write_scene_jsons(self, records: list[dict]) -> None:
        """(Re)write scene_camera/scene_gt/scene_gt_info of the scenes of ``records`` atomically."""
        by_scene: dict = {}
        for r in records:
            by_scene.setdefault(r["scene_id"], []).append(r)
        for s, recs in sorted(by_scene.items()):
            sd = self.split_dir / f"{s:06d}"
            bop.save_scene_camera(sd / "scene_camera.json", {r["im_id"]: r["camera"] for r in recs})
            bop.save_scene_gt(sd / "scene_gt.json", {r["im_id"]: r["gt"] for r in recs})
            bop.save_scene_gt_info(sd / "scene_gt_info.json", {r["im_id"]: r["gt_info"] for r in recs})

    def write_split_files(self, records=None) -> dict:
        """Write the test targets (split "test") and the detections file; return their paths."""
        records = self.records() if records is None else records
        rows = ((r["scene_id"], r["im_id"], g["obj_id"], i["visib_fract"])
                for r in records for g, i in zip(r["gt"], r["gt_info"]))
        out = {}
        if self.cfg.split == "test":
            out["targets"] = self.out / bop.TARGETS_FILENAME
            bop.save_test_targets(out["targets"], bop.targets_from_gt(rows, self.cfg.min_visib_fract))
        out["detections"] = self.out / DETECTIONS_NAME.format(split=self.cfg.split)
        bop.save_detections(out["detections"], [d for r in records for d in r["detections"]])
        return out


def _copy_models(models_dir: Path, out: Path) -> Path:
    """Make ``out/models`` hold the models (copied unless it is ``models_dir``); returns it."""
    dst = out / "models"
    if dst.resolve() == models_dir.resolve():
        return dst
    src_info = bop.load_json(models_dir / "models_info.json")
    if (dst / "models_info.json").is_file():
        if bop.load_json(dst / "models_info.json") != src_info:
            raise ValueError(f"{dst} holds other models than {models_dir}; use another --out")
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(models_dir.iterdir()):
        if p.is_file():
            shutil.copyfile(p, dst / p.name)
    return dst


def scene_objects(models_dir: Path, obj_ids=None) -> tuple[dict, list]:
    """The models' infos and the object ids a split places (``obj_ids``, default every object of
    ``models_dir/models_info.json``); an id not in it -> :class:`bop.BopFormatError` naming the file."""
    infos = bop.load_models_info(Path(models_dir) / "models_info.json")
    ids = list(obj_ids or sorted(infos))
    missing = [i for i in ids if i not in infos]
    if missing:
        raise bop.BopFormatError(f"{Path(models_dir) / 'models_info.json'}: unknown object id(s) {missing}")
    return infos, ids


def resolve_models_dir(path) -> Path:
    """A models folder, or a dataset folder holding ``models/``."""
    p = Path(path)
    if (p / "models_info.json").is_file():
        return p
    if (p / "models" / "models_info.json").is_file():
        return p / "models"
    raise bop.BopFormatError(f"{p}: no models_info.json (neither {p}/models_info.json nor "
                             f"{p}/models/models_info.json)")


def generate_scenes(models_dir, out, n_images: int, config: SceneConfig | None = None,
                    seed: int = 0, renderer=None, progress: bool = True, overwrite: bool = False,
                    stop_after: int | None = None) -> dict:
    """Write (or resume) a synthetic BOP split of ``n_images`` images under ``out``.

    :param models_dir: models folder (or a dataset folder with ``models/``).
    :param stop_after: render at most this many new images, then stop as if interrupted
        (JSONs still written); for tests and chunked runs.
    :return: summary ``{"images", "generated", "resumed", "instances", "seconds",
        "images_per_s", "split_dir", "detections", "targets"}``.
    """
    if renderer is None:
        renderer = Renderer()
    models_dir = resolve_models_dir(models_dir)
    out = Path(out)
    config = config or SceneConfig()
    writer = SceneWriter(renderer, models_dir, out, config, seed=seed)
    _copy_models(models_dir, out)
    writer.check_or_write_settings(overwrite=overwrite)

    todo = [i for i in range(n_images) if not writer.record_path(i).is_file()]
    resumed = n_images - len(todo)
    if stop_after is not None:
        todo = todo[:stop_after]
    generated, instances = 0, 0
    t0 = time.perf_counter()
    try:
        for i in tqdm(todo, desc=f"scenes {writer.cfg.split}", unit="img", disable=not progress,
                      initial=0, total=len(todo)):
            rec = writer.write_image(i)
            generated += 1
            instances += len(rec["gt"])
            s, im = writer.location(i)
            if im == writer.cfg.images_per_scene - 1:  # a scene is complete: its JSONs now
                writer.write_scene_jsons(writer.records(s))
    finally:
        seconds = time.perf_counter() - t0
        records = writer.records()
        writer.write_scene_jsons(records)
        paths = writer.write_split_files(records)
    return {"images": n_images, "generated": generated, "resumed": resumed,
            "instances": instances, "seconds": seconds,
            "images_per_s": generated / seconds if seconds > 0 else float("nan"),
            "split_dir": str(writer.split_dir), "detections": str(paths["detections"]),
            "targets": str(paths.get("targets", ""))}

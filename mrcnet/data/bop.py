"""BOP datasets on disk (torch-free: numpy, OpenCV; pycocotools for RLE): images, depth, masks,
symmetries and the :class:`BopDataset` index of a split.

The file formats themselves (JSON layout, scene files, ``models_info.json``, targets, detections,
the BOP'19 results CSV, atomic writes) have one owner, :mod:`mrcnet.runtime.formats.bop` (and
:mod:`mrcnet.runtime.formats.files`); their names are re-exported here. Images follow the BOP
toolkit: ``rgb/`` or ``gray/`` ``{im_id:06d}.png|jpg|tif``, ``depth/{im_id:06d}.png|tif``
(uint16, times ``depth_scale`` gives mm), ``mask/`` and ``mask_visib/``
``{im_id:06d}_{gt_id:06d}.png`` (0 / 255). Every malformed input raises :class:`BopFormatError`
with a one-line message naming the file (and the key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from mrcnet.runtime.formats.bop import (  # noqa: F401  (the formats' one owner; re-exported)
    DETECTION_KEYS,
    GT_INFO_KEYS,
    _jsonable,
    RESULTS_HEADER,
    TARGETS_FILENAME,
    BopFormatError,
    BopResultsWriter,
    ModelInfo,
    camera_dict,
    check_rotation,
    decode_rle,
    dumps_bop_json,
    encode_rle,
    format_result_row,
    group_detections,
    load_bop_results,
    load_camera,
    load_detections,
    load_json,
    load_models_info,
    load_scene_camera,
    load_scene_gt,
    load_scene_gt_info,
    load_test_targets,
    save_bop_results,
    save_detections,
    save_json,
    save_models_info,
    save_scene_camera,
    save_scene_gt,
    save_scene_gt_info,
    save_test_targets,
)
from mrcnet.runtime.formats.files import atomic_open  # noqa: F401  (re-exported)
from mrcnet.runtime.preprocess import mask_extent
from mrcnet.runtime.rotations import rotation_about_axis  # also re-exported: bop.rotation_about_axis

log = logging.getLogger(__name__)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: visib_fract threshold of the targets derived from the annotations when no targets file exists
TARGETS_MIN_VISIB = 0.1


def symmetry_transforms(info, max_sym_disc_step: float = 0.01) -> list[dict]:
    """The object's symmetry set, as ``bop_toolkit_lib.misc.get_symmetry_transformations``.

    :param info: ModelInfo or a raw models_info entry (dict).
    :param max_sym_disc_step: largest step, as a fraction of the diameter, of the surface point
        farthest from a continuous axis between consecutive sampled rotations.
    :return: list of ``{"R": (3, 3), "t": (3, 1) mm}``; the identity first. Continuous symmetries
        are sampled with ``ceil(pi / max_sym_disc_step)`` steps and combined with every discrete
        one (identity included): ``R = R_c R_d``, ``t = R_c t_d + t_c``.
    """
    if not isinstance(info, ModelInfo):  # a raw models_info entry: only the symmetries matter
        info = ModelInfo.from_dict({"diameter": 0.0, **{k: 0.0 for k in ModelInfo._BOX_KEYS},
                                    **{k: info[k] for k in ("symmetries_discrete",
                                                            "symmetries_continuous") if k in info}})
    trans_disc = [{"R": np.eye(3), "t": np.zeros((3, 1))}]
    for s in info.symmetries_discrete:
        s = np.asarray(s, dtype=np.float64).reshape(4, 4)
        trans_disc.append({"R": s[:3, :3].copy(), "t": s[:3, 3].reshape(3, 1).copy()})

    trans_cont = []
    for s in info.symmetries_continuous:
        axis = np.asarray(s["axis"], dtype=np.float64)
        offset = np.asarray(s["offset"], dtype=np.float64).reshape(3, 1)
        steps = int(np.ceil(np.pi / max_sym_disc_step))
        step = 2.0 * np.pi / steps
        for i in range(steps):
            R = rotation_about_axis(i * step, axis)
            trans_cont.append({"R": R, "t": -R @ offset + offset})

    if not trans_cont:
        return trans_disc
    out = []
    for d in trans_disc:
        for c in trans_cont:
            out.append({"R": c["R"] @ d["R"], "t": c["R"] @ d["t"] + c["t"]})
    return out


# --------------------------------------------------------------------------------------------
# Images, depth, masks.
# --------------------------------------------------------------------------------------------

def _imread(path, flag: str, what: str) -> np.ndarray:
    """``cv2.imread(path, cv2.<flag>)``; a missing or undecodable file raises BopFormatError."""
    path = Path(path)
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")
    im = cv2.imread(str(path), getattr(cv2, flag))
    if im is None:
        raise BopFormatError(f"{path}: cannot decode {what}")
    return im


def load_image(path, order: str = "bgr") -> np.ndarray:
    """Load a png/jpg/tif image.

    :param order: ``"bgr"`` (OpenCV order, what MRC-Net consumes) or ``"rgb"`` for colour files.
    :return: (H, W, 3) for colour files, (H, W) for grey files; dtype as stored (uint8 usually,
        uint16 for 16-bit files). An alpha channel is dropped.
    """
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    im = _imread(path, "IMREAD_UNCHANGED", "image")
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[:, :, 0]
    if im.ndim == 3:
        im = im[:, :, :3]
        if order == "rgb":
            im = im[:, :, ::-1]
        im = np.ascontiguousarray(im)
    return im


def save_image(path, im: np.ndarray, order: str = "bgr", jpg_quality: int = 95) -> None:
    """Write an (H, W[, 3]) image atomically (format from the extension: png, jpg, tif)."""
    path = Path(path)
    im = np.asarray(im)
    if im.ndim == 3 and order == "rgb":
        im = im[:, :, ::-1]
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpg_quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(im), params)
    if not ok:
        raise BopFormatError(f"{path}: cannot encode image")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())


def load_depth(path, depth_scale: float = 1.0) -> np.ndarray:
    """Load a depth image (uint16 png or tif) -> (H, W) float32 in mm (stored value x depth_scale)."""
    d = _imread(path, "IMREAD_ANYDEPTH", "depth image")
    return d.astype(np.float32) * np.float32(depth_scale)


def save_depth(path, depth_mm: np.ndarray, depth_scale: float = 1.0) -> None:
    """Write (H, W) depth in mm as a uint16 png storing ``round(depth_mm / depth_scale)``.

    Values beyond the uint16 range (and non-finite ones) are stored as 0 (= no measurement).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: depth is saved as .png only")
    d = np.asarray(depth_mm, dtype=np.float64) / float(depth_scale)
    d = np.where(np.isfinite(d) & (d >= 0) & (d <= 65535.49), np.round(d), 0).astype(np.uint16)
    save_image(path, d)


def load_mask(path) -> np.ndarray:
    """Load a BOP mask png -> (H, W) bool (non-zero pixels)."""
    im = load_image(path)
    if im.ndim == 3:
        im = im.max(axis=2)
    return im > 0


def save_mask(path, mask: np.ndarray) -> None:
    """Write an (H, W) bool mask as a png with values 0 / 255."""
    save_image(path, np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def bbox_from_mask(mask: np.ndarray, offset: Sequence[int] = (0, 0)) -> list[int]:
    """BOP box ``[x, y, w, h]`` of a mask (``w = x_max - x_min`` as ``misc.calc_2d_bbox``; the extent of
    :func:`mrcnet.runtime.preprocess.mask_extent`),
    ``[-1, -1, -1, -1]`` when empty. ``offset`` (ox, oy) is subtracted from the pixel indices."""
    x0, y0, x1, y1 = (int(v) for v in mask_extent(mask))
    if x0 < 0:
        return [-1, -1, -1, -1]
    return [x0 - int(offset[0]), y0 - int(offset[1]), x1 - x0, y1 - y0]



# --------------------------------------------------------------------------------------------
# Dataset folder.
# --------------------------------------------------------------------------------------------

@dataclass
class Instance:
    """One annotated object in an image. R (3, 3), t (3,) mm: ``X_cam = R X_model + t``."""

    gt_id: int
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    info: dict | None = None  # the scene_gt_info entry, when the file exists

    @property
    def visib_fract(self) -> float | None:
        return None if self.info is None else self.info.get("visib_fract")


@dataclass
class ImageRecord:
    """One image of a BOP split: paths, camera and annotations. K (3, 3) in pixels."""

    scene_id: int
    im_id: int
    K: np.ndarray
    depth_scale: float
    image_path: Path
    depth_path: Path | None
    scene_dir: Path
    instances: list[Instance]
    camera: dict

    def load_image(self, order: str = "bgr") -> np.ndarray:
        return load_image(self.image_path, order)

    def load_depth(self) -> np.ndarray:
        """(H, W) float32 depth in mm."""
        if self.depth_path is None:
            raise BopFormatError(f"{self.scene_dir}: no depth image for image {self.im_id}")
        return load_depth(self.depth_path, self.depth_scale)

    def mask_path(self, gt_id: int, visib: bool = True) -> Path:
        sub = "mask_visib" if visib else "mask"
        return self.scene_dir / sub / f"{self.im_id:06d}_{gt_id:06d}.png"

    def load_mask(self, gt_id: int, visib: bool = True) -> np.ndarray:
        """(H, W) bool: the visible (``mask_visib``) or full (``mask``) silhouette of one instance."""
        return load_mask(self.mask_path(gt_id, visib))


def scene_dirs(split_dir) -> list[Path]:
    """The scene folders (numeric names) of a split folder, sorted."""
    return sorted(p for p in Path(split_dir).iterdir() if p.is_dir() and p.name.isdigit())


def split_folders(root) -> list[str]:
    """The split folders of a dataset folder (those holding scene folders), names sorted."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and scene_dirs(p))


def split_dirname(split: str, split_type: str | None = None) -> str:
    """BOP split folder name: ``test`` + ``primesense`` -> ``test_primesense``."""
    return f"{split}_{split_type}" if split_type else split


class BopDataset:
    """A BOP dataset split on disk: ``root/<models>/``, ``root/<split>[_<type>]/<scene>/``.

    Scenes are indexed at construction. A scene whose files are missing or malformed, or whose
    annotations use an object id absent from ``models_info.json``, is reported once (logging
    warning) and skipped, and the reason is kept in ``self.skipped[scene_id]``; with
    ``strict=True`` it raises BopFormatError instead. A missing split folder or models_info.json
    always raises.

    :param root: dataset folder (holds ``models/`` and the split folders).
    :param split: ``"test"``, ``"train"``, ``"val"``...
    :param split_type: e.g. ``"primesense"`` or ``"pbr"`` (folder ``<split>_<split_type>``).
    :param models: models folder name (``"models"``, ``"models_cad"``, ``"models_eval"``) or path.
    :param require_gt: skip scenes without ``scene_gt.json`` (True), or keep them unannotated.
    """

    def __init__(self, root, split: str, split_type: str | None = None, models: str = "models",
                 strict: bool = False, require_gt: bool = True):
        self.root = Path(root)
        self.split = split
        self.split_type = split_type
        self.split_dir = self.root / split_dirname(split, split_type)
        self.models_dir = Path(models) if Path(models).is_absolute() else self.root / models
        self.strict = strict
        self.require_gt = require_gt
        if not self.split_dir.is_dir():
            raise BopFormatError(f"{self.split_dir}: split folder not found")
        self.models_info = load_models_info(self.models_dir / "models_info.json")
        self.skipped: dict[int, str] = {}
        self._images: dict[tuple[int, int], ImageRecord] = {}
        for scene_dir in scene_dirs(self.split_dir):
            try:
                self._index_scene(scene_dir)
            except BopFormatError as e:
                if strict:
                    raise
                self.skipped[int(scene_dir.name)] = str(e)
                log.warning("skipping scene %s: %s", scene_dir.name, e)

    # -- indexing -------------------------------------------------------------------------
    def _index_scene(self, scene_dir: Path) -> None:
        scene_id = int(scene_dir.name)
        cameras = load_scene_camera(scene_dir / "scene_camera.json")
        gt_path = scene_dir / "scene_gt.json"
        if gt_path.is_file():
            gts = load_scene_gt(gt_path)
        elif self.require_gt:
            raise BopFormatError(f"{gt_path}: file not found")
        else:
            gts = {}
        info_path = scene_dir / "scene_gt_info.json"
        infos = load_scene_gt_info(info_path) if info_path.is_file() else {}

        unknown = sorted({g["obj_id"] for im in gts.values() for g in im} - set(self.models_info))
        if unknown:
            raise BopFormatError(f"{gt_path}: unknown object id(s) {unknown} (not in "
                                 f"{self.models_dir / 'models_info.json'})")

        image_files = _list_stems(scene_dir, ("rgb", "gray"))
        depth_files = _list_stems(scene_dir, ("depth",))
        records = {}
        missing = []
        for im_id, cam in cameras.items():
            if self.require_gt and im_id not in gts:
                raise BopFormatError(f"{gt_path}: missing key '{im_id}' (image listed in scene_camera.json)")
            img = image_files.get(f"{im_id:06d}")
            if img is None:
                missing.append(im_id)
                continue
            where = f"image {im_id}"
            im_infos = infos.get(im_id)
            if im_infos is not None and len(im_infos) != len(gts.get(im_id, [])):
                raise BopFormatError(f"{info_path}: {where}: {len(im_infos)} entries but "
                                     f"{len(gts.get(im_id, []))} in scene_gt.json")
            insts = [Instance(gt_id=i, obj_id=g["obj_id"], R=g["cam_R_m2c"], t=g["cam_t_m2c"],
                              info=None if im_infos is None else im_infos[i])
                     for i, g in enumerate(gts.get(im_id, []))]
            records[(scene_id, im_id)] = ImageRecord(
                scene_id=scene_id, im_id=im_id, K=cam["cam_K"],
                depth_scale=float(cam.get("depth_scale", 1.0)), image_path=img,
                depth_path=depth_files.get(f"{im_id:06d}"), scene_dir=scene_dir,
                instances=insts, camera=cam)
        if missing:
            msg = (f"{scene_dir}: {len(missing)} image(s) listed in scene_camera.json have no "
                   f"rgb/gray file (first: {missing[0]:06d}); skipped")
            if self.strict:
                raise BopFormatError(msg)
            log.warning("%s", msg)
        self._images.update(records)

    # -- access ---------------------------------------------------------------------------
    @property
    def obj_ids(self) -> list[int]:
        return sorted(self.models_info)

    def model_path(self, obj_id: int) -> Path:
        """``models/obj_{obj_id:06d}.ply``."""
        return self.models_dir / f"obj_{obj_id:06d}.ply"

    @property
    def scene_ids(self) -> list[int]:
        return sorted({s for s, _ in self._images})

    def image_ids(self, scene_id: int) -> list[int]:
        return sorted(i for s, i in self._images if s == scene_id)

    def image(self, scene_id: int, im_id: int) -> ImageRecord:
        try:
            return self._images[(scene_id, im_id)]
        except KeyError:
            raise KeyError(f"{self.split_dir}: no image {im_id} in scene {scene_id}") from None

    def __len__(self) -> int:
        return len(self._images)

    def __iter__(self) -> Iterator[ImageRecord]:
        for key in sorted(self._images):
            yield self._images[key]

    def instances(self, min_visib_fract: float = -1.0) -> Iterator[tuple[ImageRecord, Instance]]:
        """Every (image, instance), optionally only those with ``visib_fract >= min_visib_fract``
        (instances without gt_info pass)."""
        for rec in self:
            for inst in rec.instances:
                vf = inst.visib_fract
                if vf is None or vf >= min_visib_fract:
                    yield rec, inst

    def targets_path(self, path=None) -> Path | None:
        """The targets file: ``path`` (as given, else relative to the dataset root; one that does
        not exist raises :class:`BopFormatError`), or by default ``root/TARGETS_FILENAME`` when it
        exists, else None (targets derived from the annotations)."""
        if path is None:
            default = self.root / TARGETS_FILENAME
            return default if default.is_file() else None
        p = Path(path)
        if not p.is_file() and not p.is_absolute() and (self.root / p).is_file():
            p = self.root / p
        if not p.is_file():
            raise BopFormatError(f"{path}: targets file not found")
        return p

    def targets(self, path=None, min_visib_fract: float = TARGETS_MIN_VISIB) -> list[dict]:
        """Evaluation targets ``{scene_id, im_id, obj_id, inst_count}``.

        From the targets file (:meth:`targets_path`: ``path``, else ``root/test_targets_bop19.json``
        when it exists), restricted to indexed images (targets of skipped scenes are dropped), else
        derived from the annotations (instances with ``visib_fract >= min_visib_fract``, counted per
        object). An explicit ``path`` that does not exist raises :class:`BopFormatError`.
        """
        path = self.targets_path(path)
        if path is not None:
            return [t for t in load_test_targets(path) if (t["scene_id"], t["im_id"]) in self._images]
        return targets_from_gt(
            ((rec.scene_id, rec.im_id, inst.obj_id, inst.visib_fract) for rec, inst in self.instances()),
            min_visib_fract)

    def target_images(self, path=None, min_visib_fract: float = TARGETS_MIN_VISIB
                      ) -> Iterator[tuple[ImageRecord, list[dict]]]:
        """``(image, its targets)`` for every image with at least one target (see :meth:`targets`),
        sorted by (scene_id, im_id): what a BOP evaluation run iterates over."""
        grouped = _group_targets(self.targets(path, min_visib_fract))
        for key in sorted(grouped):
            yield self._images[key], grouped[key]


def _group_targets(targets: Iterable[dict]) -> dict[tuple[int, int], list[dict]]:
    out: dict = {}
    for t in targets:
        out.setdefault((t["scene_id"], t["im_id"]), []).append(t)
    return out


def targets_from_gt(rows: Iterable[tuple], min_visib_fract: float = TARGETS_MIN_VISIB) -> list[dict]:
    """Count ``(scene_id, im_id, obj_id, visib_fract)`` rows into BOP'19 targets."""
    counts: dict = {}
    for scene_id, im_id, obj_id, vf in rows:
        if vf is not None and vf < min_visib_fract:
            continue
        key = (int(scene_id), int(im_id), int(obj_id))
        counts[key] = counts.get(key, 0) + 1
    return [{"scene_id": s, "im_id": i, "obj_id": o, "inst_count": n}
            for (s, i, o), n in sorted(counts.items())]


def _list_stems(scene_dir: Path, subdirs: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the image files in the first existing of ``subdirs``."""
    for sub in subdirs:
        d = scene_dir / sub
        if d.is_dir():
            out = {}
            for p in d.iterdir():
                if p.suffix.lower() in IMAGE_EXTS and p.stem not in out:
                    out[p.stem] = p
            return out
    return {}

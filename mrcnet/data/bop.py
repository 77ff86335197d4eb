"""BOP dataset reader and writer (torch-free: numpy, OpenCV, json, pycocotools for RLE).

Formats follow the BOP toolkit (``bop_toolkit_lib.inout`` / ``misc``) and
``docs/bop_datasets_format.md``:

- ``models/models_info.json``: ``{"<obj_id>": {"diameter", "min_x", "min_y", "min_z", "size_x",
  "size_y", "size_z", "symmetries_discrete": [[16 floats, row-major 4x4, t in mm]],
  "symmetries_continuous": [{"axis": [3], "offset": [3] mm}]}}``.
- ``<split>/<scene:06d>/scene_camera.json``: ``{"<im_id>": {"cam_K": [9], "depth_scale": s,
  "cam_R_w2c": [9], "cam_t_w2c": [3]}}`` (the last two optional).
- ``scene_gt.json``: ``{"<im_id>": [{"cam_R_m2c": [9], "cam_t_m2c": [3] mm, "obj_id": int}]}``.
- ``scene_gt_info.json``: ``{"<im_id>": [{"bbox_obj": [x, y, w, h], "bbox_visib": [...],
  "px_count_all", "px_count_valid", "px_count_visib", "visib_fract"}]}``.
- images ``rgb/`` or ``gray/`` ``{im_id:06d}.png|jpg|tif``, ``depth/{im_id:06d}.png|tif``
  (uint16, times ``depth_scale`` gives mm), ``mask/`` and ``mask_visib/``
  ``{im_id:06d}_{gt_id:06d}.png`` (0 / 255).
- ``test_targets_bop19.json``: list of ``{"im_id", "inst_count", "obj_id", "scene_id"}``.
- BOP'22 detections: list of ``{"scene_id", "image_id", "category_id", "score",
  "bbox": [x, y, w, h], "segmentation": COCO RLE, "time"}``.
- BOP'19 results CSV: ``scene_id,im_id,obj_id,score,R,t,time`` (R: 9 numbers row-major, t: 3
  numbers in mm, space separated).

JSON files are written the BOP way (one top-level entry per line, keys as strings, sorted, flat
lists) and atomically (temporary file + ``os.replace``).

Loaded arrays use these shapes: ``cam_K``, ``cam_R_w2c``, ``cam_R_m2c`` (3, 3) float64;
``cam_t_w2c``, ``cam_t_m2c`` (3,) float64 in mm. Every malformed input raises
:class:`BopFormatError` with a one-line message naming the file (and the key).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"
#: the targets file of a BOP'19 split, in the dataset folder
TARGETS_FILENAME = "test_targets_bop19.json"
#: visib_fract threshold of the targets derived from the annotations when no targets file exists
TARGETS_MIN_VISIB = 0.1


class BopFormatError(ValueError):
    """A BOP file is missing, malformed or lacks a key; the message names the file (and key)."""


# --------------------------------------------------------------------------------------------
# Low-level helpers: atomic writes, JSON in the BOP layout, key checks.
# --------------------------------------------------------------------------------------------

def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """Open a temporary file next to ``path``; on success it replaces ``path`` (``os.replace``).

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(x: Any) -> Any:
    """Convert numpy scalars/arrays (arrays flattened, row-major) to plain Python for JSON."""
    if isinstance(x, np.ndarray):
        return _jsonable(x.reshape(-1).tolist())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def _sort_key(k: Any):
    """Sort numeric keys numerically (BOP sorts int keys), other keys after them by text."""
    try:
        return (0, int(k), "")
    except (TypeError, ValueError):
        return (1, 0, str(k))


def dumps_bop_json(content: Any) -> str:
    """Serialise like ``bop_toolkit_lib.inout.save_json``: one top-level item per line."""
    if isinstance(content, dict):
        items = sorted(content.items(), key=lambda kv: _sort_key(kv[0]))
        lines = ['  "{}": {}'.format(k, json.dumps(_jsonable(v), sort_keys=True)) for k, v in items]
        return "{\n" + ",\n".join(lines) + ("\n" if lines else "") + "}"
    if isinstance(content, (list, tuple)):
        lines = ["  {}".format(json.dumps(_jsonable(v), sort_keys=True)) for v in content]
        return "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]"
    return json.dumps(_jsonable(content), sort_keys=True)


def save_json(path, content: Any) -> None:
    """Write ``content`` in the BOP JSON layout, atomically (``.json.gz`` is gzipped)."""
    text = dumps_bop_json(content)
    if str(path).endswith(".gz"):
        with atomic_open(path, "wb") as f:
            f.write(gzip.compress(text.encode("utf8"), mtime=0))
    else:
        with atomic_open(path, "w", encoding="utf8") as f:
            f.write(text)


def load_json(path, keys_to_int: bool = False) -> Any:
    """Load a JSON (or ``.json.gz``) file; ``keys_to_int`` converts numeric dict keys to int.

    Raises BopFormatError naming the file when it is missing or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")

    def hook(d):
        return {(int(k) if k.lstrip("-").isdigit() else k): v for k, v in d.items()}

    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf8") as f:
                return json.load(f, object_hook=hook if keys_to_int else None)
        with open(path, "r", encoding="utf8") as f:
            return json.load(f, object_hook=hook if keys_to_int else None)
    except json.JSONDecodeError as e:
        raise BopFormatError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise BopFormatError(f"{path}: cannot read: {e}") from None


def _require(d: Any, key: str, path, where: str) -> Any:
    if not isinstance(d, dict):
        raise BopFormatError(f"{path}: {where}: expected an object, got {type(d).__name__}")
    if key not in d:
        raise BopFormatError(f"{path}: missing key '{key}' in {where}")
    return d[key]


def _array(value: Any, shape: tuple, path, key: str, where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
        return a.reshape(shape)
    except (TypeError, ValueError):
        n = int(np.prod(shape))
        raise BopFormatError(f"{path}: key '{key}' in {where}: expected {n} numbers") from None


def _int_keyed(content: Any, path) -> dict:
    if not isinstance(content, dict):
        raise BopFormatError(f"{path}: expected a JSON object keyed by image id")
    bad = [k for k in content if not isinstance(k, int)]
    if bad:
        raise BopFormatError(f"{path}: key '{bad[0]}' is not an integer image id")
    return content


# --------------------------------------------------------------------------------------------
# Models: models_info.json and symmetries.
# --------------------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    """One entry of ``models_info.json`` (all lengths in mm).

    ``symmetries_discrete``: list of (4, 4) float64 arrays (rotation + translation in mm), the
    non-identity elements of the discrete symmetry group. ``symmetries_continuous``: list of
    ``{"axis": (3,) array, "offset": (3,) array mm}``. ``extra``: keys BOP files may carry that
    this class does not model; written back unchanged.
    """

    diameter: float
    min_x: float = 0.0
    min_y: float = 0.0
    min_z: float = 0.0
    size_x: float = 0.0
    size_y: float = 0.0
    size_z: float = 0.0
    symmetries_discrete: list = field(default_factory=list)
    symmetries_continuous: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    _BOX_KEYS = ("min_x", "min_y", "min_z", "size_x", "size_y", "size_z")

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (``info["diameter"]``) as in the BOP toolkit."""
        if key in ("diameter", "symmetries_discrete", "symmetries_continuous") + self._BOX_KEYS:
            return getattr(self, key)
        return self.extra[key]

    def __contains__(self, key: str) -> bool:
        if key == "symmetries_discrete":
            return bool(self.symmetries_discrete)
        if key == "symmetries_continuous":
            return bool(self.symmetries_continuous)
        return key in ("diameter",) + self._BOX_KEYS or key in self.extra

    @property
    def is_symmetric(self) -> bool:
        return bool(self.symmetries_discrete or self.symmetries_continuous)

    @classmethod
    def from_dict(cls, d: dict, path="<models_info>", where: str = "model") -> "ModelInfo":
        diameter = float(_require(d, "diameter", path, where))
        box = {}
        for k in cls._BOX_KEYS:
            box[k] = float(_require(d, k, path, where))
        disc = []
        for i, s in enumerate(d.get("symmetries_discrete", []) or []):
            disc.append(_array(s, (4, 4), path, f"symmetries_discrete[{i}]", where))
        cont = []
        for i, s in enumerate(d.get("symmetries_continuous", []) or []):
            w = f"{where}, symmetries_continuous[{i}]"
            axis = _array(_require(s, "axis", path, w), (3,), path, "axis", w)
            offset = _array(_require(s, "offset", path, w), (3,), path, "offset", w)
            if not np.linalg.norm(axis) > 0:
                raise BopFormatError(f"{path}: key 'axis' in {w}: zero axis")
            cont.append({"axis": axis, "offset": offset})
        known = {"diameter", "symmetries_discrete", "symmetries_continuous", *cls._BOX_KEYS}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(diameter=diameter, symmetries_discrete=disc, symmetries_continuous=cont,
                   extra=extra, **box)

    def to_dict(self) -> dict:
        """The JSON entry (flat 16-number lists for discrete symmetries)."""
        d: dict = {"diameter": float(self.diameter)}
        for k in self._BOX_KEYS:
            d[k] = float(getattr(self, k))
        if self.symmetries_discrete:
            d["symmetries_discrete"] = [np.asarray(s, float).reshape(-1).tolist()
                                        for s in self.symmetries_discrete]
        if self.symmetries_continuous:
            d["symmetries_continuous"] = [
                {"axis": np.asarray(s["axis"], float).reshape(-1).tolist(),
                 "offset": np.asarray(s["offset"], float).reshape(-1).tolist()}
                for s in self.symmetries_continuous]
        d.update(_jsonable(self.extra))
        return d


def load_models_info(path) -> dict[int, ModelInfo]:
    """Load ``models_info.json`` -> ``{obj_id: ModelInfo}``."""
    content = _int_keyed(load_json(path, keys_to_int=True), path)
    return {obj_id: ModelInfo.from_dict(d, path, f"object {obj_id}")
            for obj_id, d in sorted(content.items())}


def save_models_info(path, infos: dict) -> None:
    """Write ``{obj_id: ModelInfo | dict}`` as ``models_info.json``."""
    out = {}
    for obj_id, info in infos.items():
        out[int(obj_id)] = info.to_dict() if isinstance(info, ModelInfo) else _jsonable(info)
    save_json(path, out)


def rotation_about_axis(angle: float, axis) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about ``axis`` (any length), right-hand rule."""
    a = np.asarray(axis, dtype=np.float64).reshape(3)
    a = a / np.linalg.norm(a)
    c, s = np.cos(angle), np.sin(angle)
    K = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return c * np.eye(3) + s * K + (1.0 - c) * np.outer(a, a)


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
# Scene JSONs.
# --------------------------------------------------------------------------------------------

def load_scene_camera(path) -> dict[int, dict]:
    """``scene_camera.json`` -> ``{im_id: {"cam_K": (3,3), "depth_scale": float, ...}}``.

    ``cam_R_w2c`` (3, 3) and ``cam_t_w2c`` (3,) mm are converted when present; other keys are
    kept as they are. ``cam_K`` is required.
    """
    content = _int_keyed(load_json(path, keys_to_int=True), path)
    out = {}
    for im_id, cam in sorted(content.items()):
        where = f"image {im_id}"
        cam = dict(cam) if isinstance(cam, dict) else cam
        cam["cam_K"] = _array(_require(cam, "cam_K", path, where), (3, 3), path, "cam_K", where)
        if "depth_scale" in cam:
            try:
                cam["depth_scale"] = float(cam["depth_scale"])
            except (TypeError, ValueError):
                raise BopFormatError(f"{path}: key 'depth_scale' in {where}: not a number") from None
        if "cam_R_w2c" in cam:
            cam["cam_R_w2c"] = _array(cam["cam_R_w2c"], (3, 3), path, "cam_R_w2c", where)
        if "cam_t_w2c" in cam:
            cam["cam_t_w2c"] = _array(cam["cam_t_w2c"], (3,), path, "cam_t_w2c", where)
        out[im_id] = cam
    return out


def save_scene_camera(path, scene_camera: dict) -> None:
    """Write ``{im_id: camera dict}`` (arrays flattened row-major) as ``scene_camera.json``."""
    _save_image_keyed(path, scene_camera)


def _image_lists(path) -> dict[int, list[tuple[str, Any]]]:
    """A per-image list file (``scene_gt.json``, ``scene_gt_info.json``) -> ``{im_id: [(where,
    entry)]}``, images sorted, ``where`` = ``"image I, annotation J"`` for error messages."""
    content = _int_keyed(load_json(path, keys_to_int=True), path)
    out = {}
    for im_id, entries in sorted(content.items()):
        if not isinstance(entries, list):
            raise BopFormatError(f"{path}: image {im_id}: expected a list of annotations")
        out[im_id] = [(f"image {im_id}, annotation {gt_id}", e) for gt_id, e in enumerate(entries)]
    return out


def _save_image_keyed(path, content: dict) -> None:
    """Write ``{im_id: value}`` (arrays flattened row-major) as a BOP scene JSON."""
    save_json(path, {int(k): _jsonable(v) for k, v in content.items()})


def _scene_gt_entry(gt: Any, path, where: str) -> dict:
    _require(gt, "obj_id", path, where)
    gt = dict(gt)
    for key, shape in (("cam_R_m2c", (3, 3)), ("cam_t_m2c", (3,))):
        gt[key] = _array(_require(gt, key, path, where), shape, path, key, where)
    try:
        gt["obj_id"] = int(gt["obj_id"])
    except (TypeError, ValueError):
        raise BopFormatError(f"{path}: key 'obj_id' in {where}: not an integer") from None
    return gt


def load_scene_gt(path) -> dict[int, list[dict]]:
    """``scene_gt.json`` -> ``{im_id: [{"cam_R_m2c": (3,3), "cam_t_m2c": (3,) mm, "obj_id": int}]}``."""
    return {im_id: [_scene_gt_entry(gt, path, where) for where, gt in entries]
            for im_id, entries in _image_lists(path).items()}


def save_scene_gt(path, scene_gt: dict) -> None:
    """Write ``{im_id: [gt dict]}`` as ``scene_gt.json`` (R 9 numbers row-major, t 3 numbers mm)."""
    _save_image_keyed(path, scene_gt)


GT_INFO_KEYS = ("bbox_obj", "bbox_visib", "px_count_all", "px_count_valid", "px_count_visib",
                "visib_fract")


def _scene_gt_info_entry(info: Any, path, where: str) -> dict:
    _require(info, "visib_fract", path, where)
    info = dict(info)
    for k in ("bbox_obj", "bbox_visib"):
        if k in info:
            info[k] = [int(v) for v in _array(info[k], (4,), path, k, where)]
    for k in ("px_count_all", "px_count_valid", "px_count_visib"):
        if k in info:
            info[k] = int(info[k])
    info["visib_fract"] = float(info["visib_fract"])
    return info


def load_scene_gt_info(path) -> dict[int, list[dict]]:
    """``scene_gt_info.json`` -> ``{im_id: [{"bbox_obj": [x,y,w,h], "bbox_visib", "px_count_*",
    "visib_fract"}]}`` (boxes as lists of int, BOP convention ``w = x_max - x_min``)."""
    return {im_id: [_scene_gt_info_entry(info, path, where) for where, info in entries]
            for im_id, entries in _image_lists(path).items()}


def save_scene_gt_info(path, scene_gt_info: dict) -> None:
    """Write ``{im_id: [info dict]}`` as ``scene_gt_info.json``."""
    _save_image_keyed(path, scene_gt_info)


def load_camera(path) -> dict:
    """A dataset ``camera.json`` (``fx, fy, cx, cy, width, height[, depth_scale]``) ->
    ``{"K": (3, 3), "width": int, "height": int, "depth_scale": float | None}``."""
    c = load_json(path)
    vals = {k: _require(c, k, path, "camera") for k in ("fx", "fy", "cx", "cy", "width", "height")}
    K = np.array([[vals["fx"], 0.0, vals["cx"]], [0.0, vals["fy"], vals["cy"]], [0.0, 0.0, 1.0]],
                 dtype=np.float64)
    ds = c.get("depth_scale")
    return {"K": K, "width": int(vals["width"]), "height": int(vals["height"]),
            "depth_scale": None if ds is None else float(ds)}


def camera_dict(K, width: int, height: int, depth_scale: float | None = None) -> dict:
    """The ``camera.json`` content for K (3, 3): fx, fy, cx, cy, width, height, cam_K (9)."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    d = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
         "width": int(width), "height": int(height), "cam_K": K.reshape(-1).tolist()}
    if depth_scale is not None:
        d["depth_scale"] = float(depth_scale)
    return d


# --------------------------------------------------------------------------------------------
# Images, depth, masks.
# --------------------------------------------------------------------------------------------

def _cv2():
    import cv2  # local import: keeps ``import mrcnet.data.bop`` light
    return cv2


def _imread(path, flag: str, what: str) -> np.ndarray:
    """``cv2.imread(path, cv2.<flag>)``; a missing or undecodable file raises BopFormatError."""
    path = Path(path)
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")
    cv2 = _cv2()
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
    cv2 = _cv2()
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
    """BOP box ``[x, y, w, h]`` of a mask (``w = x_max - x_min`` as ``misc.calc_2d_bbox``),
    ``[-1, -1, -1, -1]`` when empty. ``offset`` (ox, oy) is subtracted from the pixel indices."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [-1, -1, -1, -1]
    x0, y0 = int(xs.min()) - int(offset[0]), int(ys.min()) - int(offset[1])
    return [x0, y0, int(xs.max() - xs.min()), int(ys.max() - ys.min())]


# --------------------------------------------------------------------------------------------
# Test targets, detections (BOP'22) and results (BOP'19).
# --------------------------------------------------------------------------------------------

def load_test_targets(path) -> list[dict]:
    """``test_targets_bop19.json`` -> list of ``{"scene_id", "im_id", "obj_id", "inst_count"}``."""
    content = load_json(path)
    if not isinstance(content, list):
        raise BopFormatError(f"{path}: expected a JSON list of targets")
    out = []
    for i, t in enumerate(content):
        where = f"target {i}"
        try:
            out.append({k: int(_require(t, k, path, where))
                        for k in ("scene_id", "im_id", "obj_id", "inst_count")})
        except (TypeError, ValueError):
            raise BopFormatError(f"{path}: {where}: ids must be integers") from None
    return out


def save_test_targets(path, targets: Iterable[dict]) -> None:
    """Write a list of ``{"scene_id", "im_id", "obj_id", "inst_count"}`` in the BOP layout."""
    rows = [{k: int(t[k]) for k in ("im_id", "inst_count", "obj_id", "scene_id")} for t in targets]
    rows.sort(key=lambda t: (t["scene_id"], t["im_id"], t["obj_id"]))
    save_json(path, rows)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> compressed COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string counts, or the uncompressed list of counts the BOP toolkit
    writes) -> (H, W) bool mask."""
    from pycocotools import mask as mask_utils
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


DETECTION_KEYS = ("scene_id", "image_id", "category_id", "score", "bbox")


def load_detections(path) -> list[dict]:
    """BOP'22 detections (``.json`` or ``.json.gz``) -> list of dicts with ``scene_id``,
    ``image_id``, ``category_id`` (int), ``score`` (float), ``bbox`` [x, y, w, h] floats,
    ``time`` (float, -1 if absent) and ``segmentation`` (RLE dict, when present and non-empty)."""
    content = load_json(path)
    if not isinstance(content, list):
        raise BopFormatError(f"{path}: expected a JSON list of detections")
    out = []
    for i, d in enumerate(content):
        where = f"detection {i}"
        for k in DETECTION_KEYS:
            _require(d, k, path, where)
        try:
            det = {"scene_id": int(d["scene_id"]), "image_id": int(d["image_id"]),
                   "category_id": int(d["category_id"]), "score": float(d["score"]),
                   "bbox": [float(v) for v in d["bbox"]],
                   "time": float(d.get("time", -1.0))}
        except (TypeError, ValueError):
            raise BopFormatError(f"{path}: {where}: a field has the wrong type") from None
        if len(det["bbox"]) != 4:
            raise BopFormatError(f"{path}: key 'bbox' in {where}: expected 4 numbers")
        seg = d.get("segmentation")
        if seg:
            _require(seg, "counts", path, f"{where}, segmentation")
            _require(seg, "size", path, f"{where}, segmentation")
            det["segmentation"] = seg
        out.append(det)
    return out


def save_detections(path, dets: Iterable[dict]) -> None:
    """Write BOP'22 detections. Each item: ``scene_id, image_id, category_id, score, bbox``
    ([x, y, w, h] px), optional ``segmentation`` (RLE dict, or an (H, W) bool mask that is
    encoded here) and ``time`` (s, -1 when unknown). Written atomically in the BOP layout."""
    rows = []
    for d in dets:
        row = {"scene_id": int(d["scene_id"]), "image_id": int(d["image_id"]),
               "category_id": int(d["category_id"]), "score": float(d["score"]),
               "bbox": [float(v) for v in d["bbox"]], "time": float(d.get("time", -1.0))}
        seg = d.get("segmentation")
        if isinstance(seg, np.ndarray):
            seg = encode_rle(seg)
        if seg is not None:
            row["segmentation"] = _jsonable(seg)
        rows.append(row)
    save_json(path, rows)


def group_detections(dets: Iterable[dict]) -> dict[tuple[int, int], list[dict]]:
    """Detections grouped by ``(scene_id, image_id)``, each list sorted by descending score."""
    out: dict = {}
    for d in dets:
        out.setdefault((d["scene_id"], d["image_id"]), []).append(d)
    for v in out.values():
        v.sort(key=lambda d: -d["score"])
    return out


def format_result_row(r: dict) -> str:
    """One BOP'19 results CSV line (no newline) of ``{scene_id, im_id, obj_id, score, R (3,3),
    t (3,) mm, time s (default -1)}``: R row-major, numbers with full precision."""
    R = np.asarray(r["R"], dtype=np.float64).reshape(9)
    t = np.asarray(r["t"], dtype=np.float64).reshape(3)
    return "{},{},{},{},{},{},{}".format(
        int(r["scene_id"]), int(r["im_id"]), int(r["obj_id"]), float(r["score"]),
        " ".join(repr(float(v)) for v in R), " ".join(repr(float(v)) for v in t),
        float(r.get("time", -1.0)))


class BopResultsWriter:
    """Incremental, atomic writer of a BOP'19 results CSV.

    Rows are appended (and flushed) to ``<path>.partial`` as they come; ``close()`` moves the
    file onto ``path`` with ``os.replace``, so ``path`` only ever holds a complete file. Use as a
    context manager; on an exception the partial file is kept for inspection and ``path`` is
    not touched.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.partial, "w", encoding="utf8")
        self._f.write(RESULTS_HEADER + "\n")
        self.count = 0

    def write(self, row: dict) -> None:
        """Append one estimate ``{scene_id, im_id, obj_id, score, R (3,3), t (3,) mm, time}``."""
        self._f.write(format_result_row(row) + "\n")
        self._f.flush()
        self.count += 1

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.partial, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._f.close()


def save_bop_results(path, rows: Iterable[dict]) -> int:
    """Write all rows as a BOP'19 results CSV (atomically); returns the number of rows."""
    with BopResultsWriter(path) as w:
        for r in rows:
            w.write(r)
    return w.count


def load_bop_results(path) -> list[dict]:
    """BOP'19 results CSV -> list of ``{scene_id, im_id, obj_id, score, R (3,3), t (3,) mm, time}``.

    A malformed line or a NaN / inf number raises :class:`BopFormatError` naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")
    out = []
    with open(path, "r", encoding="utf8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or (line_no == 1 and line.startswith("scene_id")):
                continue
            e = line.split(",")
            if len(e) != 7:
                raise BopFormatError(f"{path}:{line_no}: expected 7 comma-separated fields, got {len(e)}")
            try:
                R = np.array([float(v) for v in e[4].split()], np.float64).reshape(3, 3)
                t = np.array([float(v) for v in e[5].split()], np.float64).reshape(3)
                row = {"scene_id": int(e[0]), "im_id": int(e[1]), "obj_id": int(e[2]),
                       "score": float(e[3]), "R": R, "t": t, "time": float(e[6])}
            except ValueError:
                raise BopFormatError(f"{path}:{line_no}: malformed numbers (R needs 9, t needs 3)") from None
            bad = [k for k in ("score", "R", "t", "time") if not np.all(np.isfinite(row[k]))]
            if bad:
                raise BopFormatError(f"{path}: result row {len(out) + 1} (scene {row['scene_id']}, image "
                                     f"{row['im_id']}, object {row['obj_id']}): {bad[0]} is NaN or inf "
                                     f"({path.name}:{line_no})")
            out.append(row)
    return out


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

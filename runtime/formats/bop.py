"""BOP files (no torch): JSON layout, scene files, models_info, targets, detections, results CSV.

The one owner of these formats; ``mrcnet.data.bop`` (datasets, images) and the runtime use it.
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
- ``test_targets_bop19.json``: list of ``{"im_id", "inst_count", "obj_id", "scene_id"}``.
- BOP'22 detections: list of ``{"scene_id", "image_id", "category_id", "score",
  "bbox": [x, y, w, h], "segmentation": COCO RLE, "time"}``; :func:`load_detections` with
  ``strict=False`` also reads COCO ``{"annotations": [...]}`` and files keyed by frame.
- BOP'19 results CSV: ``scene_id,im_id,obj_id,score,R,t,time`` (R: 9 numbers row-major, t: 3
  numbers in mm, space separated; time: seconds for the whole image, the same for every estimate
  of it, -1 if unknown). ``score`` has the BOP meaning: the confidence of the estimate, which the
  BOP evaluation uses to keep the ``inst_count`` best estimates of an object in an image. This
  project writes the *detection* score there (in [0, 1]; 1 for ground-truth boxes): every writer
  (``mrcnet-infer``, ``mrcnet-run --bop-csv``) goes through :func:`format_result_row`.

JSON files are written the BOP way (one top-level entry per line, keys as strings, sorted, flat
lists) and atomically (:func:`mrcnet.runtime.formats.files.atomic_open`).

Loaded arrays use these shapes: ``cam_K``, ``cam_R_w2c``, ``cam_R_m2c`` (3, 3) float64;
``cam_t_w2c``, ``cam_t_m2c`` (3,) float64 in mm. Every malformed input raises
:class:`BopFormatError` with a one-line message naming the file (and the key).
"""
from __future__ import annotations

import gzip
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from .files import atomic_open

RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"
#: the method name of a BOP results file when none is given
DEFAULT_METHOD = "mrcnet"


def bop_results_name(method: str, dataset: str, split: str) -> str:
    """BOP's results file name ``METHOD_DATASET-SPLIT.csv`` (``mrcnet_tless-test.csv``), as the BOP
    toolkit parses it back (the method is what precedes the first underscore, so it holds none;
    the dataset and split hold neither ``_`` nor ``-``). Raises ValueError naming the bad part."""
    for what, value, bad in (("method", method, "_"), ("dataset", dataset, "_-"), ("split", split, "_-")):
        if not value or any(c in str(value) for c in bad) or "/" in str(value):
            raise ValueError(f"BOP results name: {what} {value!r} must be non-empty without "
                             f"{' or '.join(repr(c) for c in bad + '/')}")
    return f"{method}_{dataset}-{split}.csv"
#: the targets file of a BOP'19 split, in the dataset folder
TARGETS_FILENAME = "test_targets_bop19.json"
#: largest deviation of R^T R from the identity (and of det R from 1) accepted in a results CSV
ROTATION_TOLERANCE = 1e-3


class BopFormatError(ValueError):
    """A BOP file is missing, malformed or lacks a key; the message names the file (and key)."""


# --------------------------------------------------------------------------------------------
# Low-level helpers: JSON in the BOP layout, key checks.
# --------------------------------------------------------------------------------------------

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
    from pycocotools import mask as mask_utils  # pycocotools: the train extra (RLE masks)
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string counts, or the uncompressed list of counts the BOP toolkit
    writes) -> (H, W) bool mask."""
    from pycocotools import mask as mask_utils  # pycocotools: the train extra (RLE masks)
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


def _integer(v: Any) -> int:
    """An integer from a JSON value: an int, or a float with an integral value; else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{v!r} is not an integer")
    if not float(v).is_integer():
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


def _detection_record(d: Any, path, where: str, strict: bool, frame: Optional[int] = None) -> dict:
    """One detection -> ``{scene_id (int | None), image_id, category_id, score, bbox [x, y, w, h],
    time[, segmentation]}``; BopFormatError naming the file and record when malformed."""
    if not isinstance(d, dict):
        raise BopFormatError(f"{path}: {where}: expected an object, got {type(d).__name__}")
    if strict:
        for k in DETECTION_KEYS:
            _require(d, k, path, where)
    aliases = {"image_id": ("image_id", "im_id", "frame"), "category_id": ("category_id", "obj_id")}
    raw = {}
    for key, names in aliases.items():
        found = [n for n in names if n in d]
        if found:
            raw[key] = d[found[0]]
        elif key == "image_id" and frame is not None:
            raw[key] = frame
        else:
            raise BopFormatError(f"{path}: missing key '{key}' in {where}")
    try:
        det = {"scene_id": None if d.get("scene_id") is None else _integer(d["scene_id"]),
               "image_id": _integer(raw["image_id"]), "category_id": _integer(raw["category_id"])}
    except ValueError as e:
        raise BopFormatError(f"{path}: {where}: ids must be integers ({e})") from None
    try:
        score = float(d.get("score", 1.0)) if not strict else float(d["score"])
        t = float(d.get("time", -1.0))
    except (TypeError, ValueError):
        raise BopFormatError(f"{path}: {where}: score / time must be numbers") from None
    if not np.isfinite(score):
        raise BopFormatError(f"{path}: {where}: score is {score}")
    if "bbox" in d:
        box = d["bbox"]
    elif not strict and "box" in d:  # (x1, y1, x2, y2)
        box = d["box"]
    else:
        raise BopFormatError(f"{path}: missing key 'bbox' in {where}")
    try:
        b = [float(v) for v in box]
    except (TypeError, ValueError):
        raise BopFormatError(f"{path}: key 'bbox' in {where}: expected 4 numbers") from None
    if len(b) != 4 or not np.all(np.isfinite(b)):
        raise BopFormatError(f"{path}: key 'bbox' in {where}: expected 4 finite numbers, got {box}")
    if "bbox" not in d:
        b = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
    if b[2] <= 0 or b[3] <= 0:
        raise BopFormatError(f"{path}: key 'bbox' in {where}: width and height must be > 0, got {box}")
    det.update(score=score, bbox=b, time=t)
    seg = d.get("segmentation")
    if seg:
        _require(seg, "counts", path, f"{where}, segmentation")
        _require(seg, "size", path, f"{where}, segmentation")
        det["segmentation"] = seg
    return det


def load_detections(path, strict: bool = True) -> list[dict]:
    """Detections (``.json`` or ``.json.gz``) -> list of dicts with ``scene_id`` (int; None when
    the file has none), ``image_id``, ``category_id`` (int: the BOP object id), ``score`` (finite
    float), ``bbox`` [x, y, w, h] px (w, h > 0), ``time`` (float, -1 if absent) and
    ``segmentation`` (RLE dict, when present and non-empty).

    strict: the BOP'22 layout only (a list with every key of ``DETECTION_KEYS``). Otherwise also
    COCO ``{"annotations": [...]}`` and ``{"<frame>": [records]}``, ids as ``image_id`` / ``im_id``
    / ``frame`` and ``category_id`` / ``obj_id``, boxes as ``bbox`` (xywh) or ``box`` (xyxy),
    score 1 when absent. A malformed record (NaN score, non-integer id, empty box) raises
    :class:`BopFormatError` naming the file and the record.
    """
    content = load_json(path)
    if not strict and isinstance(content, dict) and "annotations" in content:
        content = content["annotations"]
    out = []
    if isinstance(content, list):
        for i, d in enumerate(content):
            out.append(_detection_record(d, path, f"detection {i}", strict))
    elif not strict and isinstance(content, dict):
        for key, recs in content.items():
            try:
                frame = _integer(int(key))
            except ValueError:
                raise BopFormatError(f"{path}: key '{key}' is not a frame index") from None
            if not isinstance(recs, list):
                raise BopFormatError(f"{path}: frame {key}: expected a list of detections")
            for i, d in enumerate(recs):
                out.append(_detection_record(d, path, f"frame {key}, detection {i}", strict, frame))
    else:
        raise BopFormatError(f"{path}: expected a JSON list of detections")
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
    t (3,) mm, time s (default -1)}``: R row-major, numbers with full precision. ``score``: the
    confidence of the estimate (this project: the detection score, see the module docstring).
    A non-finite number raises ValueError (a CSV row is never a NaN pose)."""
    R = np.asarray(r["R"], dtype=np.float64).reshape(9)
    t = np.asarray(r["t"], dtype=np.float64).reshape(3)
    score, time_s = float(r["score"]), float(r.get("time", -1.0))
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and np.isfinite(score) and np.isfinite(time_s)):
        raise ValueError(f"result of scene {r['scene_id']} image {r['im_id']} object {r['obj_id']}: "
                         "non-finite number")
    return "{},{},{},{},{},{},{}".format(
        int(r["scene_id"]), int(r["im_id"]), int(r["obj_id"]), score,
        " ".join(repr(float(v)) for v in R), " ".join(repr(float(v)) for v in t), time_s)


class BopResultsWriter:
    """Incremental, atomic writer of a BOP'19 results CSV.

    Rows are appended (and flushed) to ``<path>.partial`` as they come; ``close()`` moves the
    file onto ``path`` with ``os.replace``, so ``path`` only ever holds a complete file. Use as a
    context manager; on an exception the partial file is kept for inspection and ``path`` is
    not touched (``KeyboardInterrupt`` publishes the rows so far: they are complete rows).
    ``rows``: rows to start with (e.g. those of an interrupted run being resumed).
    """

    def __init__(self, path, rows: Iterable[dict] = ()):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.partial, "w", encoding="utf8")
        self._f.write(RESULTS_HEADER + "\n")
        self.count = 0
        for r in rows:
            self.write(r)

    def write(self, row: dict) -> None:
        """Append one estimate ``{scene_id, im_id, obj_id, score, R (3,3), t (3,) mm, time}``."""
        self.write_rows([row])

    def write_rows(self, rows: Iterable[dict]) -> None:
        """Append the estimates of one image in one write (then flush)."""
        text = "".join(format_result_row(r) + "\n" for r in rows)
        self._f.write(text)
        self._f.flush()
        self.count += text.count("\n")

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
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self._f.close()


def save_bop_results(path, rows: Iterable[dict]) -> int:
    """Write all rows as a BOP'19 results CSV (atomically); returns the number of rows."""
    with BopResultsWriter(path) as w:
        for r in rows:
            w.write(r)
    return w.count


def check_rotation(R: np.ndarray, tol: float = ROTATION_TOLERANCE) -> Optional[str]:
    """None when R (3, 3) is a rotation (``R^T R = I`` and ``det R = 1`` within ``tol``), else why not."""
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > tol:
        return f"R is not a rotation (|R^T R - I| = {err:.3g})"
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > tol:
        return f"R is not a rotation (det R = {det:.3g})"
    return None


def load_bop_results(path) -> list[dict]:
    """BOP'19 results CSV -> list of ``{scene_id, im_id, obj_id, score, R (3,3), t (3,) mm, time}``.

    A malformed line, a NaN / inf number, or an R that is not a rotation raises
    :class:`BopFormatError` naming ``file:line``; so does a file that is not text."""
    path = Path(path)
    if not path.is_file():
        raise BopFormatError(f"{path}: file not found")
    out = []
    try:
        with open(path, "r", encoding="utf8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise BopFormatError(f"{path}: not a text CSV (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise BopFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    for line_no, line in enumerate(lines, 1):
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
        why = check_rotation(R)
        if why:
            raise BopFormatError(f"{path}:{line_no}: {why}")
        out.append(row)
    return out

"""A YOLO-format 2D detection dataset (Ultralytics layout) from a BOP split: the synthetic scenes of
``mrcnet-synth scenes`` or any BOP split with ``scene_gt_info.json``. Torch-free.

Layout written under ``out``::

    images/train/<scene:06d>_<im:06d>.png   the split's images (bytes copied)
    images/val/...                          every 1/val_fraction-th image (none: val = train)
    labels/train/<scene:06d>_<im:06d>.txt   one ``class cx cy w h`` line per visible object,
    labels/val/...                          normalised to [0, 1] by the image size
    data.yaml                               path, train, val, nc, names (``obj_<id:06d>``) and
                                            bop_obj_ids ({class: BOP object id}, for mrcnet-run)

A label's box is the instance's ``bbox_visib`` from ``scene_gt_info.json`` as the pixels it covers:
BOP's ``[x, y, w, h]`` (``w = x_max - x_min``) becomes ``x_min .. x_max + 1``, clipped to the image.
Instances with ``visib_fract`` below ``min_visib_fract`` (or nothing visible) get no label: a
detector should not be taught to find what cannot be seen. Class ``c`` is the ``c``-th of the
object ids (sorted); Ultralytics keeps the names in its exported ONNX file, so ``mrcnet-run
--detector`` maps ``obj_<id>`` classes to object ids without ``--class-map``.
Every file is written atomically (:mod:`mrcnet.runtime.formats.files`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

import yaml
from tqdm import tqdm

from mrcnet.runtime.detectors.base import DATA_YAML_OBJ_IDS
from mrcnet.runtime.errors import ParameterError
from mrcnet.runtime.formats.files import atomic_copy, atomic_write_text, prepare_out_dir

from . import bop

DATA_YAML = "data.yaml"
#: visib_fract below which an instance gets no label (BOP's targets use the same 0.1)
MIN_VISIB_FRACT = bop.TARGETS_MIN_VISIB


def class_name(obj_id: int) -> str:
    """The YOLO class name of a BOP object: ``obj_000005``."""
    return f"obj_{int(obj_id):06d}"


def yolo_box(bbox_visib: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """BOP ``[x, y, w, h]`` (``w = x_max - x_min``) -> YOLO ``(cx, cy, w, h)`` normalised by the
    image size, of the pixels the box covers (``x_min .. x_max + 1``), clipped to the image; None
    when nothing of it is in the image (or the box is BOP's empty ``[-1, -1, -1, -1]``)."""
    x, y, w, h = (float(v) for v in bbox_visib)
    if w < 0 or h < 0:
        return None
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w + 1.0, float(width)), min(y + h + 1.0, float(height))
    if x2 <= x1 or y2 <= y1:
        return None
    return ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)


def resolve_split(path, split: str | None = None) -> tuple[Path, str]:
    """(dataset folder, split folder name) of ``path``: a split folder (it holds numeric scene
    folders), or a dataset folder with ``split`` or exactly one split folder. ValueError with one
    line otherwise."""
    p = Path(path)
    if not p.is_dir():
        raise ParameterError("scenes", "folder not found", p)
    if split is not None:
        if not (p / split).is_dir():
            raise ParameterError("scenes", f"no split folder {split!r}", p)
        return p, split
    if bop.scene_dirs(p):
        return p.parent, p.name
    splits = bop.split_folders(p)
    if len(splits) != 1:
        raise ParameterError("scenes", "no BOP split folder (folders of numbered scenes) in it" if not splits
                             else f"several splits ({', '.join(splits)}): give {{split}}", p)
    return p, splits[0]


def is_val(index: int, val_fraction: float) -> bool:
    """Image ``index`` (0-based, sorted order) goes to val: spread evenly, ``floor(n * fraction)`` of n."""
    return int((index + 1) * val_fraction) > int(index * val_fraction)


def write_yolo_dataset(scenes, out, *, split: str | None = None, models: str = "models",
                       min_visib_fract: float = MIN_VISIB_FRACT, val_fraction: float = 0.1,
                       obj_ids: Sequence[int] | None = None, overwrite: bool = False,
                       progress: bool = True) -> dict:
    """Write the YOLO dataset of a BOP split (see the module doc) into ``out``.

    scenes: a BOP split folder or a dataset folder (:func:`resolve_split`); models: the models
    folder (name in the dataset folder, or a path) holding ``models_info.json``; obj_ids: the
    classes (default: every object of ``models_info.json``); instances of other objects get no
    label. An ``out`` that already holds ``data.yaml`` raises ValueError unless ``overwrite``
    (its images/ and labels/ are replaced).

    :return: ``{"images", "train", "val", "labels", "skipped_instances", "classes", "data_yaml",
        "seconds"}``; skipped: below ``min_visib_fract``, not visible, or not one of the classes.
    :raises bop.BopFormatError: a malformed split (one line naming the file), a scene without
        ``scene_gt_info.json``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ParameterError("val_fraction", "expected 0 <= fraction < 1", val_fraction)
    t0 = time.perf_counter()
    root, split_name = resolve_split(scenes, split)
    ds = bop.BopDataset(root, split_name, models=models, strict=True)
    classes = sorted(int(o) for o in (obj_ids if obj_ids else ds.obj_ids))
    unknown = sorted(set(classes) - set(ds.obj_ids))
    if unknown:
        raise ParameterError("obj_ids", f"{unknown} not in {ds.models_dir / 'models_info.json'}")
    class_of = {o: c for c, o in enumerate(classes)}
    out = prepare_out_dir(out)
    if (out / DATA_YAML).exists():
        if not overwrite:
            raise ParameterError("out", f"holds a dataset ({DATA_YAML}); use {{overwrite}} to replace it", out)
        for sub in ("images", "labels"):
            shutil.rmtree(out / sub, ignore_errors=True)
    records = list(ds)
    counts = {"train": 0, "val": 0}
    labels = skipped = 0
    for i, rec in enumerate(tqdm(records, desc="yolo", unit="image", disable=not progress)):
        subset = "val" if is_val(i, val_fraction) else "train"
        height, width = bop.load_image(rec.image_path).shape[:2]
        lines = []
        for inst in rec.instances:
            if inst.info is None:
                raise bop.BopFormatError(f"{rec.scene_dir / 'scene_gt_info.json'}: file not found "
                                         "(YOLO labels need the visible boxes bbox_visib)")
            box = yolo_box(inst.info["bbox_visib"], width, height)
            if inst.obj_id not in class_of or box is None or inst.info["visib_fract"] < min_visib_fract:
                skipped += 1
                continue
            lines.append(f"{class_of[inst.obj_id]} " + " ".join(f"{v:.6f}" for v in box))
        stem = f"{rec.scene_id:06d}_{rec.im_id:06d}"
        atomic_copy(rec.image_path, out / "images" / subset / (stem + rec.image_path.suffix.lower()))
        atomic_write_text(out / "labels" / subset / f"{stem}.txt", "".join(line + "\n" for line in lines))
        counts[subset] += 1
        labels += len(lines)
    data = {"path": str(out.resolve()), "train": "images/train",
            "val": "images/val" if counts["val"] else "images/train",
            "nc": len(classes), "names": {c: class_name(o) for c, o in enumerate(classes)},
            DATA_YAML_OBJ_IDS: dict(enumerate(classes))}
    header = (f"# YOLO detection dataset from the BOP split {ds.split_dir} (mrcnet-synth yolo);\n"
              f"# {DATA_YAML_OBJ_IDS}: detector class -> BOP object id (mrcnet-run --class-map {out / DATA_YAML})\n")
    atomic_write_text(out / DATA_YAML, header + yaml.safe_dump(data, sort_keys=False))
    return {"images": len(records), **counts, "labels": labels, "skipped_instances": skipped,
            "classes": classes, "data_yaml": str(out / DATA_YAML), "seconds": time.perf_counter() - t0}

"""Inputs of the BOP'19 evaluation: dataset, targets, results CSV, object models, one image's truth.

- Targets: ``test_targets_bop19.json`` (``{scene_id, im_id, obj_id, inst_count}``) of the split, or
  derived from the annotations when the file is absent (instances with ``visib_fract >= 0.1``).
- Models: the vertices of ``models_eval/`` when the dataset has it, else ``models/`` (or the
  ``models`` argument, ``mrcnet-eval --models``; :func:`mrcnet.runtime.datasets.eval_models_dir`) (mm), with
  the symmetries of ``models_info.json`` (continuous ones sampled every ``max_sym_disc_step``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mrcnet.data import bop
from mrcnet.eval import pose_errors as pe
from mrcnet.runtime.datasets import DatasetPathError, eval_models_dir, find_dataset
from mrcnet.runtime.render import load_mesh

from .params import Bop19Params, EvalError

log = logging.getLogger(__name__)


@dataclass
class EvalModel:
    """One target object's model as the errors use it."""

    obj_id: int
    path: Path
    pts: np.ndarray  # (V, 3) float64 mm
    diameter: float  # mm
    syms: tuple  # (R (S,3,3), t (S,3) mm)


@dataclass
class EvalInputs:
    """Everything read before the per-image loop."""

    dataset: bop.BopDataset
    root: Path  # the dataset folder as found (a bare name looked up in $BOP_PATH)
    models_dir: Path  # the models folder of the errors, as found (for the report)
    targets: list  # [{scene_id, im_id, obj_id, inst_count}]
    targets_source: str  # the targets file, or how they were derived
    per_image: dict  # {(scene_id, im_id): {obj_id: inst_count}}
    rows: list  # every results row, file order
    estimates: dict  # {(scene_id, im_id, obj_id): [rows in file order]}
    models: dict  # {obj_id: EvalModel}


@dataclass
class ImageTruth:
    """One image's ground truth and camera."""

    instances: list  # bop instances (obj_id, R, t, visib_fract, ...)
    obj_ids: list  # (G,) object id of each instance
    visib_fracts: list  # (G,) visible fraction of each instance
    depth: Optional[np.ndarray]  # (H, W) mm, only when VSD is asked
    K: np.ndarray  # (3, 3) px
    width: int  # px
    height: int  # px


def open_dataset(data_dir, split: str, split_type: Optional[str], models=None) -> tuple[bop.BopDataset, Path, Path]:
    """(the split of the dataset, strict; the dataset folder; the models folder of the errors), both
    folders as found (EvalError when one is missing)."""
    try:
        root = find_dataset(data_dir)
        models_dir = eval_models_dir(root, models)
    except DatasetPathError as e:
        raise EvalError(str(e)) from None
    ds = bop.BopDataset(root, split, split_type=split_type, models=str(models_dir.resolve()), strict=True)
    return ds, root, models_dir


def load_targets(ds: bop.BopDataset, targets_path) -> tuple[list[dict], str]:
    """The split's targets and where they come from (the file, or "derived ...")."""
    try:
        path = ds.targets_path(targets_path)
    except bop.BopFormatError as e:
        raise EvalError(str(e)) from None
    if path is not None:
        targets = bop.load_test_targets(path)
        for i, t in enumerate(targets):
            key = (t["scene_id"], t["im_id"])
            try:
                ds.image(*key)
            except KeyError:
                raise EvalError(f"{path}: target {i} names scene {key[0]} image {key[1]}, which is "
                                f"not in {ds.split_dir}") from None
            if t["inst_count"] < 1:
                raise EvalError(f"{path}: target {i}: inst_count must be >= 1, got {t['inst_count']}")
        return targets, str(path)
    for rec in ds:
        for inst in rec.instances:
            if inst.visib_fract is None:
                raise EvalError(f"{rec.scene_dir / 'scene_gt_info.json'}: needed (visib_fract) to "
                                f"derive the targets when {bop.TARGETS_FILENAME} is absent")
    derived = ds.targets(None, bop.TARGETS_MIN_VISIB)  # no targets file: from the annotations
    return derived, f"derived from the annotations (visib_fract >= {bop.TARGETS_MIN_VISIB})"


def targets_per_image(targets: list[dict]) -> dict:
    """{(scene_id, im_id): {obj_id: inst_count}}."""
    per_image: dict = {}
    for t in targets:
        per_image.setdefault((t["scene_id"], t["im_id"]), {})[t["obj_id"]] = t["inst_count"]
    return per_image


def load_estimates(path) -> tuple[list[dict], dict]:
    """Results rows (bop.load_bop_results: malformed or non-finite numbers are errors) grouped by
    (scene, im, obj) in file order."""
    try:
        rows = bop.load_bop_results(path)
    except bop.BopFormatError as e:
        raise EvalError(str(e)) from None
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scene_id"], r["im_id"], r["obj_id"]), []).append(r)
    return rows, groups


_MESH_CACHE: dict = {}


def load_mesh_cached(path):
    """load_mesh with a per-process cache keyed by (path, mtime, size): models are read once."""
    st = Path(path).stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _MESH_CACHE:
        if len(_MESH_CACHE) > 64:
            _MESH_CACHE.clear()
        _MESH_CACHE[key] = load_mesh(path)
    return _MESH_CACHE[key]


def load_models(ds: bop.BopDataset, obj_ids, max_sym_disc_step: float) -> dict:
    """{obj_id: EvalModel} of the target objects (EvalError: not in models_info, diameter <= 0)."""
    info_path = ds.models_dir / "models_info.json"
    models: dict[int, EvalModel] = {}
    for obj_id in sorted(obj_ids):
        if obj_id not in ds.models_info:
            raise EvalError(f"target object {obj_id} is not in {info_path}")
        info = ds.models_info[obj_id]
        path = ds.model_path(obj_id)
        mesh = load_mesh_cached(path)
        models[obj_id] = EvalModel(obj_id, path, mesh.vertices.astype(np.float64), float(info.diameter),
                                   pe.symmetry_arrays(bop.symmetry_transforms(info, max_sym_disc_step)))
        if not models[obj_id].diameter > 0:
            raise EvalError(f"{info_path}: object {obj_id}: diameter must be > 0")
    return models


def load_inputs(data_dir, results, split: str, split_type: Optional[str], targets,
                params: Bop19Params, models=None) -> EvalInputs:
    """Dataset, targets, results and target models, checked (EvalError naming the file)."""
    ds, root, models_dir = open_dataset(data_dir, split, split_type, models)
    target_list, source = load_targets(ds, targets)
    rows, groups = load_estimates(results)
    obj_models = load_models(ds, {t["obj_id"] for t in target_list}, params.max_sym_disc_step)
    return EvalInputs(ds, root, models_dir, target_list, source, targets_per_image(target_list), rows, groups,
                      obj_models)


def load_image_truth(ds: bop.BopDataset, scene_id: int, im_id: int, with_depth: bool) -> ImageTruth:
    """One image's instances, visible fractions, camera, size and (for VSD) depth."""
    rec = ds.image(scene_id, im_id)
    insts = rec.instances
    vf = []
    for inst in insts:
        if inst.visib_fract is None:
            raise EvalError(f"{rec.scene_dir / 'scene_gt_info.json'}: image {im_id}, instance "
                            f"{inst.gt_id}: visib_fract needed for the targets' ground truth")
        vf.append(inst.visib_fract)
    depth = None
    if with_depth:
        try:
            depth = rec.load_depth()
        except bop.BopFormatError as e:
            raise EvalError(f"{e} (VSD needs the depth images of the split; without them "
                            "evaluate with metrics mssd,mspd only)") from None
    if depth is not None:
        height, width = depth.shape
    else:
        height, width = rec.load_image().shape[:2]
    return ImageTruth(insts, [inst.obj_id for inst in insts], vf, depth, rec.K, width, height)


def average_time(rows: list[dict]) -> float:
    """bop_toolkit's average time per image (s; -1 when some time is negative = not given)."""
    times: dict = {}
    for r in rows:
        if r["time"] < 0:
            return -1.0
        key = (r["scene_id"], r["im_id"])
        if key in times and abs(times[key] - r["time"]) > 0.001:
            log.warning("results give different times for scene %d image %d; using the largest",
                        *key)
        times[key] = max(times.get(key, r["time"]), r["time"])
    return float(np.mean(list(times.values()))) if times else -1.0

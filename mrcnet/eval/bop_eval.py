"""BOP'19 evaluation of a results CSV: AR_VSD, AR_MSSD, AR_MSPD and their mean AR.

What bop_toolkit's ``eval_bop19_pose.py`` (``eval_calc_errors.py`` + ``eval_calc_scores.py``,
``pose_matching.py``, ``score.calc_localization_scores``) computes, in one pass:

- Targets: ``test_targets_bop19.json`` (``{scene_id, im_id, obj_id, inst_count}``) of the split, or
  derived from the annotations when the file is absent (instances with ``visib_fract >= 0.1``).
- Per target, the ``inst_count`` estimates of highest score (ties keep the CSV order); each gets
  an error w.r.t. every ground-truth instance of its object in the image.
- Valid ground truth (``visib_gt_min = -1``, BOP'19): per target, the ``inst_count`` most visible
  instances of the object; with ``visib_gt_min >= 0``, the target objects' instances with
  ``visib_fract >= visib_gt_min``.
- Matching, per image and object and per threshold: estimates in decreasing score order each take
  the unmatched valid instance of smallest error, if that error is below the threshold (strict).
- Recall = matched valid instances / valid instances (all objects and images pooled); AR of a
  metric = mean recall over its thresholds (VSD: 10 taus x 10 thresholds); AR = mean of the three.
- VSD: delta 15 mm, tau 0.05..0.5 x diameter, thresholds 0.05..0.5, the "bop19" visibility
  (missing depth counts as visible); 1 without rendering when the bounding-sphere projections do
  not overlap. MSSD: thresholds 0.05..0.5 x diameter; infinite when the translations are a diameter
  apart or more. MSPD: pixels x 640 / image width, thresholds 5..50. Both with the symmetries of
  ``models_info.json`` (continuous ones sampled with ``max_sym_disc_step = 0.01``).
- Errors use the vertices of ``models_eval/`` when the dataset has it, else ``models/`` (or the
  ``models`` argument, ``mrcnet-eval --models``); VSD renders
  depth at both poses with the full-image K (``mrcnet.runtime.render.Renderer``).

Units: mm, px. A missing estimate simply leaves its instances unmatched (a miss).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mrcnet.data import bop
from mrcnet.runtime.datasets import DatasetPathError, eval_models_dir, find_dataset

from . import pose_errors as pe

log = logging.getLogger(__name__)

METRICS = ("vsd", "mssd", "mspd")
#: correctness thresholds of BOP'19: VSD error (unitless), MSSD (x diameter), MSPD (px at 640 wide)
VSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
MSSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
MSPD_THRESHOLDS = tuple(float(x) for x in np.arange(5, 51, 5))
#: MSPD errors are scaled by MSPD_REF_WIDTH / image width before thresholding
MSPD_REF_WIDTH = 640.0
#: bop_toolkit's per-dataset VSD delta (mm) where it differs from pose_errors.VSD_DELTA_MM
VSD_DELTA_BY_DATASET = {"itodd": 5.0}
#: views rendered per renderer call (bounds memory: views x H x W x 5 floats)
RENDER_BATCH = 16


class EvalError(ValueError):
    """An input of the evaluation is unusable (the message names the file / row / target)."""


@dataclass(frozen=True)
class Bop19Params:
    """Settings of the BOP'19 protocol (the defaults are the official ones)."""

    vsd_delta: float = pe.VSD_DELTA_MM
    vsd_taus: tuple = pe.VSD_TAUS
    vsd_normalized_by_diameter: bool = True
    vsd_thresholds: tuple = VSD_THRESHOLDS
    mssd_thresholds: tuple = MSSD_THRESHOLDS
    mspd_thresholds: tuple = MSPD_THRESHOLDS
    visib_gt_min: float = -1.0
    max_sym_disc_step: float = 0.01


def default_vsd_delta(data_dir) -> float:
    """BOP'19 VSD delta (mm) for a dataset folder, from its name (``itodd`` -> 5, else 15)."""
    return VSD_DELTA_BY_DATASET.get(Path(data_dir).resolve().name.lower(), pe.VSD_DELTA_MM)


# ------------------------------------------------------------------------------- matching
def greedy_match(errors: np.ndarray, thresholds: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Greedy matching of estimates to ground truth for many thresholds at once.

    Args:
        errors: (E, G, C) or (E, G, 1) errors of E estimates (already in decreasing score order)
            w.r.t. G ground-truth instances, for C settings (NaN counts as "no match").
        thresholds: (C,) correctness threshold of each setting (error < threshold is correct).
        valid: (G,) bool, instances that may be matched.
    Returns:
        (C, G) bool: instance g matched under setting c.
    """
    th = np.asarray(thresholds, np.float64).reshape(-1)
    n_c = len(th)
    errors = np.asarray(errors, np.float64)
    n_e, n_g = errors.shape[:2]
    errors = np.broadcast_to(errors, (n_e, n_g, n_c))
    matched = np.zeros((n_c, n_g), bool)
    if n_g == 0:
        return matched
    cols = np.arange(n_c)
    for i in range(n_e):
        e = errors[i].T  # (C, G)
        ok = valid[None, :] & ~matched & (e < th[:, None])  # NaN < th is False
        cand = np.where(ok, e, np.inf)
        j = np.argmin(cand, axis=1)  # first instance of smallest error, as bop_toolkit
        hit = np.isfinite(cand[cols, j])
        matched[cols[hit], j[hit]] = True
    return matched


def valid_gt_mask(gt_obj_ids: Sequence[int], visib_fracts: Sequence[float], inst_counts: dict,
                  visib_gt_min: float = -1.0) -> np.ndarray:
    """Which ground-truth instances of one image count as targets (bop_toolkit eval_calc_scores).

    Args:
        gt_obj_ids: (G,) object id of each instance. visib_fracts: (G,) visible fraction.
        inst_counts: ``{obj_id: inst_count}`` of the image's targets.
        visib_gt_min: -1 (BOP'19): the ``inst_count`` most visible instances of each target object;
            >= 0: every instance of a target object with ``visib_fract >= visib_gt_min``.
    Returns:
        (G,) bool.
    """
    n = len(gt_obj_ids)
    valid = np.zeros(n, bool)
    if visib_gt_min >= 0:
        for g in range(n):
            valid[g] = gt_obj_ids[g] in inst_counts and visib_fracts[g] >= visib_gt_min
        return valid
    to_add = dict(inst_counts)
    for g in sorted(range(n), key=lambda g: visib_fracts[g], reverse=True):
        o = gt_obj_ids[g]
        if to_add.get(o, 0) > 0:
            valid[g] = True
            to_add[o] -= 1
    return valid


# ------------------------------------------------------------------------------ inputs
@dataclass
class _Model:
    obj_id: int
    path: Path
    pts: np.ndarray  # (V, 3) float64 mm
    diameter: float
    syms: tuple  # (R (S,3,3), t (S,3))


def _load_targets(ds, targets_path) -> tuple[list[dict], str]:
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


def _load_estimates(path) -> tuple[list[dict], dict]:
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


def _average_time(rows: list[dict]) -> float:
    """bop_toolkit's average time per image (-1 when some time is negative = not given)."""
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


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(u @ vt))
    return (u * np.array([1.0, 1.0, d])) @ vt


# ------------------------------------------------------------------------------ evaluation
def evaluate_bop19(data_dir, results, split: str = "test", split_type: Optional[str] = None,
                   targets=None, params: Bop19Params = Bop19Params(),
                   metrics: Sequence[str] = METRICS, renderer=None, progress: bool = False,
                   models=None) -> dict:
    """Evaluate a BOP'19 results CSV on a BOP split.

    Args:
        data_dir: dataset folder (``models[_eval]/``, ``<split>[_<split_type>]/<scene>/``).
        results: BOP'19 results CSV (``scene_id,im_id,obj_id,score,R,t,time``).
        split, split_type: the split folder (``test``, ``test_primesense``...).
        targets: targets file (default ``<data_dir>/test_targets_bop19.json``; derived from the
            annotations when that is absent).
        params: protocol settings (:class:`Bop19Params`, defaults = BOP'19).
        metrics: subset of ``("vsd", "mssd", "mspd")``; AR needs all three (else None). Without
            "vsd" no depth image and no renderer is needed.
        renderer: a ``mrcnet.runtime.render.Renderer`` (created when None and VSD is asked).
        progress: tqdm progress bar over the images.
        models: the models folder of the errors (name inside ``data_dir`` or a path); default
            ``models_eval`` when the dataset has it, else ``models``
            (:func:`mrcnet.runtime.datasets.eval_models_dir`).
    Returns:
        dict: ``AR``, ``AR_VSD``, ``AR_MSSD``, ``AR_MSPD`` (in [0, 1]), ``recalls`` (per metric:
        VSD as [tau][threshold], others [threshold]), ``per_object`` (``{obj_id: {AR, AR_VSD,
        AR_MSSD, AR_MSPD, n_instances, n_estimates, n_targets_without_estimate}}``), ``counts``,
        ``average_time_per_image`` (s, -1 if not given), ``params``, ``inputs``. AR values of
        metrics not computed are None. Estimate rotations are used as given for MSSD/MSPD and
        snapped to the nearest rotation for rendering (the renderer refuses non-rotations).
    Raises:
        EvalError / mrcnet.data.bop.BopFormatError: unusable inputs, naming the file.
    """
    metrics = tuple(m.lower() for m in metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise EvalError(f"unknown metrics {unknown or metrics}; choose from {', '.join(METRICS)}")
    try:
        root = find_dataset(data_dir)
        models_dir = eval_models_dir(root, models)
    except DatasetPathError as e:
        raise EvalError(str(e)) from None
    ds = bop.BopDataset(root, split, split_type=split_type, models=str(models_dir.resolve()), strict=True)
    # models_dir: as found (relative to the working folder when --data is), for the report
    target_list, targets_src = _load_targets(ds, targets)
    rows, est_groups = _load_estimates(results)

    # targets organised per image: {(scene, im): {obj_id: inst_count}}
    per_image: dict = {}
    for t in target_list:
        per_image.setdefault((t["scene_id"], t["im_id"]), {})[t["obj_id"]] = t["inst_count"]

    models: dict[int, _Model] = {}
    for obj_id in sorted({t["obj_id"] for t in target_list}):
        if obj_id not in ds.models_info:
            raise EvalError(f"target object {obj_id} is not in {models_dir / 'models_info.json'}")
        info = ds.models_info[obj_id]
        path = ds.model_path(obj_id)
        mesh = load_mesh_cached(path)
        models[obj_id] = _Model(obj_id, path, mesh.vertices.astype(np.float64), float(info.diameter),
                                pe.symmetry_arrays(bop.symmetry_transforms(info, params.max_sym_disc_step)))
        if not models[obj_id].diameter > 0:
            raise EvalError(f"{models_dir / 'models_info.json'}: object {obj_id}: diameter must be > 0")

    own_renderer = "vsd" in metrics and renderer is None
    if own_renderer:
        from mrcnet.runtime.render import Renderer

        renderer = Renderer()
    if "vsd" in metrics:
        for obj_id, m in models.items():
            renderer.add_object(obj_id, load_mesh_cached(m.path))

    # thresholds (C,) per metric; VSD settings flattened tau-major
    n_tau = len(params.vsd_taus)
    th = {
        "vsd": np.tile(np.asarray(params.vsd_thresholds, np.float64), n_tau),
        "mssd": np.asarray(params.mssd_thresholds, np.float64),
        "mspd": np.asarray(params.mspd_thresholds, np.float64),
    }
    tp = {m: {} for m in metrics}  # metric -> obj_id -> (C,) int matched counts
    n_valid: dict[int, int] = {}
    n_est_used: dict[int, int] = {}
    n_missing: dict[int, int] = {}

    keys = sorted(per_image)
    it = keys
    if progress:
        from tqdm import tqdm

        it = tqdm(keys, desc="mrcnet-eval", unit="image")
    for scene_id, im_id in it:
        rec = ds.image(scene_id, im_id)
        im_targets = per_image[(scene_id, im_id)]
        insts = rec.instances
        vf = []
        for inst in insts:
            if inst.visib_fract is None:
                raise EvalError(f"{rec.scene_dir / 'scene_gt_info.json'}: image {im_id}, instance "
                                f"{inst.gt_id}: visib_fract needed for the targets' ground truth")
            vf.append(inst.visib_fract)
        gt_obj = [inst.obj_id for inst in insts]
        valid = valid_gt_mask(gt_obj, vf, im_targets, params.visib_gt_min)
        depth = None
        if "vsd" in metrics:
            try:
                depth = rec.load_depth()
            except bop.BopFormatError as e:
                raise EvalError(f"{e} (VSD needs the depth images of the split; without them "
                                "evaluate with metrics mssd,mspd only)") from None
        if depth is not None:
            height, width = depth.shape
        else:
            img = rec.load_image()
            height, width = img.shape[:2]
        K = rec.K

        # selected estimates per target object, decreasing score (stable in CSV order)
        sel: dict[int, list[dict]] = {}
        for obj_id, count in im_targets.items():
            ests = est_groups.get((scene_id, im_id, obj_id), [])
            order = sorted(range(len(ests)), key=lambda i: ests[i]["score"], reverse=True)
            sel[obj_id] = [ests[i] for i in order[:count]]
            n_est_used[obj_id] = n_est_used.get(obj_id, 0) + len(sel[obj_id])
            if not ests:
                n_missing[obj_id] = n_missing.get(obj_id, 0) + 1

        vsd_err = _vsd_errors(renderer, sel, insts, valid, depth, K, models, params) \
            if "vsd" in metrics else None

        for obj_id in im_targets:
            g_idx = [g for g, o in enumerate(gt_obj) if o == obj_id]
            n_valid[obj_id] = n_valid.get(obj_id, 0) + int(valid[g_idx].sum())
            ests = sel[obj_id]
            m = models[obj_id]
            errs = {}
            if "mssd" in metrics:
                e = np.full((len(ests), len(g_idx), 1), np.inf)
                for i, est in enumerate(ests):
                    for j, g in enumerate(g_idx):
                        if not valid[g]:
                            continue  # never matched: its error does not matter
                        if np.linalg.norm(est["t"] - insts[g].t) >= m.diameter:
                            continue  # bop_toolkit: spheres do not overlap -> inf
                        e[i, j, 0] = pe.mssd(est["R"], est["t"], insts[g].R, insts[g].t, m.pts, m.syms)
                errs["mssd"] = e / m.diameter
            if "mspd" in metrics:
                e = np.full((len(ests), len(g_idx), 1), np.inf)
                for i, est in enumerate(ests):
                    for j, g in enumerate(g_idx):
                        if valid[g]:
                            e[i, j, 0] = pe.mspd(est["R"], est["t"], insts[g].R, insts[g].t, K,
                                                 m.pts, m.syms)
                errs["mspd"] = e * (MSPD_REF_WIDTH / width)
            if vsd_err is not None:
                ev = vsd_err[obj_id]  # (E, G_obj, n_tau)
                errs["vsd"] = np.repeat(ev, len(params.vsd_thresholds), axis=2)
            for metric, e in errs.items():
                matched = greedy_match(e, th[metric], valid[g_idx])
                acc = tp[metric].setdefault(obj_id, np.zeros(len(th[metric]), np.int64))
                acc += matched.sum(axis=1)

    if own_renderer:
        renderer.release()
    return _report(tp, n_valid, n_est_used, n_missing, params, metrics, th, n_tau,
                   inputs={"data": str(root), "split": ds.split_dir.name, "results": str(results),
                           "targets": targets_src, "models": str(models_dir)},
                   counts={"images": len(keys), "targets": len(target_list),
                           "instances_to_find": int(sum(n_valid.values())),
                           "estimates_in_file": len(rows),
                           "estimates_evaluated": int(sum(n_est_used.values())),
                           "targets_without_estimate": int(sum(n_missing.values()))},
                   avg_time=_average_time(rows))


_MESH_CACHE: dict = {}


def load_mesh_cached(path):
    """load_mesh with a per-process cache keyed by (path, mtime, size): models are read once."""
    from mrcnet.runtime.render import load_mesh

    st = Path(path).stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _MESH_CACHE:
        if len(_MESH_CACHE) > 64:
            _MESH_CACHE.clear()
        _MESH_CACHE[key] = load_mesh(path)
    return _MESH_CACHE[key]


def _render_depths(renderer, views: list[tuple], K, width: int, height: int) -> list[np.ndarray]:
    """Depth (H, W) mm of each (obj_id, R, t) view with the full-image K, in batches."""
    out = []
    for s in range(0, len(views), RENDER_BATCH):
        chunk = views[s:s + RENDER_BATCH]
        ids = [v[0] for v in chunk]
        R = np.stack([_nearest_rotation(np.asarray(v[1], np.float64)) for v in chunk])
        t = np.stack([np.asarray(v[2], np.float64).reshape(3) for v in chunk])
        out.extend(renderer.render(ids, R, t, K, width=width, height=height).depth)
    return out


def _vsd_errors(renderer, sel, insts, valid, depth, K, models, params) -> dict:
    """{obj_id: (E, G_obj, n_tau) VSD errors} for one image (inf for invalid instances)."""
    height, width = depth.shape
    n_tau = len(params.vsd_taus)
    out = {}
    need = []  # (obj_id, i, j, g)
    for obj_id, ests in sel.items():
        g_idx = [g for g, inst in enumerate(insts) if inst.obj_id == obj_id]
        e = np.full((len(ests), len(g_idx), n_tau), np.inf)
        radius = 0.5 * models[obj_id].diameter
        for i, est in enumerate(ests):
            for j, g in enumerate(g_idx):
                if not valid[g]:
                    continue
                if pe.overlapping_sphere_projections(radius, est["t"], insts[g].t):
                    need.append((obj_id, i, j, g))
                else:
                    e[i, j] = 1.0
        out[obj_id] = e
    if not need:
        return out
    # render every needed estimate and instance once
    est_keys = sorted({(o, i) for o, i, _, _ in need})
    gt_keys = sorted({g for _, _, _, g in need})
    views = [(o, sel[o][i]["R"], sel[o][i]["t"]) for o, i in est_keys]
    views += [(insts[g].obj_id, insts[g].R, insts[g].t) for g in gt_keys]
    depths = _render_depths(renderer, views, K, width, height)
    d_est = dict(zip(est_keys, depths[:len(est_keys)]))
    d_gt = dict(zip(gt_keys, depths[len(est_keys):]))
    for o, i, j, g in need:
        out[o][i, j] = pe.vsd(d_est[(o, i)], d_gt[g], depth, K, params.vsd_delta, params.vsd_taus,
                              models[o].diameter, params.vsd_normalized_by_diameter, "step")
    return out


def _report(tp, n_valid, n_est, n_missing, params, metrics, th, n_tau, inputs, counts,
            avg_time) -> dict:
    obj_ids = sorted(n_valid)
    total = sum(n_valid.values())
    recalls, ar = {}, {}
    for metric in metrics:
        tps = sum((tp[metric].get(o, np.zeros(len(th[metric]), np.int64)) for o in obj_ids),
                  np.zeros(len(th[metric]), np.int64))
        r = tps / total if total > 0 else np.zeros(len(th[metric]))
        recalls[metric] = (r.reshape(n_tau, -1) if metric == "vsd" else r).tolist()
        ar[metric] = float(r.mean())
    per_object = {}
    for o in obj_ids:
        row = {}
        for metric in metrics:
            c = tp[metric].get(o, np.zeros(len(th[metric]), np.int64))
            row[f"AR_{metric.upper()}"] = float((c / n_valid[o]).mean()) if n_valid[o] > 0 else 0.0
        row["AR"] = _mean_ar(row, metrics, key=lambda m: f"AR_{m.upper()}")
        row.update(n_instances=int(n_valid[o]), n_estimates=int(n_est.get(o, 0)),
                   n_targets_without_estimate=int(n_missing.get(o, 0)))
        per_object[int(o)] = row
    out = {"AR": _mean_ar(ar, metrics, key=lambda m: m)}
    for metric in METRICS:
        out[f"AR_{metric.upper()}"] = ar.get(metric)
    out.update(per_object=per_object, recalls=recalls, counts=counts,
               average_time_per_image=avg_time, params=_params_dict(params), inputs=inputs)
    return out


def _mean_ar(d: dict, metrics, key) -> Optional[float]:
    if not all(m in metrics for m in METRICS):
        return None
    return float(np.mean([d[key(m)] for m in METRICS]))


def _params_dict(params: Bop19Params) -> dict:
    d = asdict(params)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ------------------------------------------------------------------------------ reporting
def _fmt(x) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}"


def format_markdown(report: dict) -> str:
    """Per-object and overall table (AR values in percent)."""
    lines = [
        "| object | AR | AR_VSD | AR_MSSD | AR_MSPD | instances | estimates | targets w/o estimate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o, r in sorted(report["per_object"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(o)} | {_fmt(r['AR'])} | {_fmt(r.get('AR_VSD'))} | "
                     f"{_fmt(r.get('AR_MSSD'))} | {_fmt(r.get('AR_MSPD'))} | {r['n_instances']} | "
                     f"{r['n_estimates']} | {r['n_targets_without_estimate']} |")
    c = report["counts"]
    lines.append(f"| **all** | **{_fmt(report['AR'])}** | {_fmt(report['AR_VSD'])} | "
                 f"{_fmt(report['AR_MSSD'])} | {_fmt(report['AR_MSPD'])} | "
                 f"{c['instances_to_find']} | {c['estimates_evaluated']} | "
                 f"{c['targets_without_estimate']} |")
    t = report.get("average_time_per_image", -1)
    foot = (f"\nAR in %. BOP'19 on `{report['inputs']['split']}` of `{report['inputs']['data']}`: "
            f"{c['images']} images, {c['targets']} targets; results `{report['inputs']['results']}`"
            + (f"; average time per image {t:.3f} s" if t is not None and t >= 0 else "") + ".\n")
    return "\n".join(lines) + "\n" + foot


def write_report(report: dict, out_dir, stem: str = "scores_bop19") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    with bop.atomic_open(js, "w", encoding="utf8") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
    with bop.atomic_open(md, "w", encoding="utf8") as f:
        f.write(format_markdown(report))
    return js, md

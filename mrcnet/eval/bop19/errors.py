"""Pose errors of one image's selected estimates w.r.t. its ground truth, one function per metric
(bop_toolkit's ``eval_calc_errors.py``), on the arrays of ``mrcnet.eval.pose_errors``.

- VSD: delta 15 mm, tau 0.05..0.5 x diameter, the "bop19" visibility (missing depth counts as
  visible); 1 without rendering when the bounding-sphere projections do not overlap. Depth is
  rendered at both poses with the full-image K.
- MSSD (x 1 / diameter): infinite when the translations are a diameter apart or more.
- MSPD: pixels x 640 / image width.

Each returns (E, G_obj, S) float64 for the E selected estimates and the G_obj instances of the
object in the image (inf for instances that are not valid: they are never matched); S = 1 for
MSSD/MSPD and the number of taus for VSD.
"""
from __future__ import annotations

import numpy as np

from mrcnet.eval import pose_errors as pe

from .load import EvalModel, ImageTruth
from .params import MSPD_REF_WIDTH, Bop19Params

#: views rendered per renderer call (bounds memory: views x H x W x 5 floats)
RENDER_BATCH = 16


def instances_of(truth: ImageTruth, obj_id: int) -> list[int]:
    """Indices of the image's ground-truth instances of one object."""
    return [g for g, o in enumerate(truth.obj_ids) if o == obj_id]


def pair_errors(ests: list[dict], truth: ImageTruth, obj_id: int, valid: np.ndarray, error) -> np.ndarray:
    """(E, G_obj, 1) ``error(estimate, instance)`` of every estimate and valid instance of the
    object (inf for the instances that are not valid: they are never matched)."""
    g_idx = instances_of(truth, obj_id)
    e = np.full((len(ests), len(g_idx), 1), np.inf)
    for i, est in enumerate(ests):
        for j, g in enumerate(g_idx):
            if valid[g]:
                e[i, j, 0] = error(est, truth.instances[g])
    return e


def mssd_errors(ests: list[dict], truth: ImageTruth, obj_id: int, valid: np.ndarray,
                model: EvalModel) -> np.ndarray:
    """(E, G_obj, 1) MSSD / diameter (inf: invalid instance or centres a diameter apart)."""
    def error(est, inst):
        if np.linalg.norm(est["t"] - inst.t) >= model.diameter:
            return np.inf  # bop_toolkit: spheres do not overlap -> inf
        return pe.mssd(est["R"], est["t"], inst.R, inst.t, model.pts, model.syms)

    return pair_errors(ests, truth, obj_id, valid, error) / model.diameter


def mspd_errors(ests: list[dict], truth: ImageTruth, obj_id: int, valid: np.ndarray,
                model: EvalModel) -> np.ndarray:
    """(E, G_obj, 1) MSPD in px scaled to a 640 px wide image (inf: invalid instance)."""
    def error(est, inst):
        return pe.mspd(est["R"], est["t"], inst.R, inst.t, truth.K, model.pts, model.syms)

    return pair_errors(ests, truth, obj_id, valid, error) * (MSPD_REF_WIDTH / truth.width)


def nearest_rotation(R: np.ndarray) -> np.ndarray:
    """(3, 3) closest rotation matrix (SVD) of a (3, 3) matrix."""
    u, _, vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(u @ vt))
    return (u * np.array([1.0, 1.0, d])) @ vt


def render_depths(renderer, views: list[tuple], K, width: int, height: int) -> list[np.ndarray]:
    """Depth (H, W) mm of each (obj_id, R, t) view with the full-image K, in batches
    (estimate rotations snapped to the nearest rotation: the renderer refuses others)."""
    out = []
    for s in range(0, len(views), RENDER_BATCH):
        chunk = views[s:s + RENDER_BATCH]
        ids = [v[0] for v in chunk]
        R = np.stack([nearest_rotation(np.asarray(v[1], np.float64)) for v in chunk])
        t = np.stack([np.asarray(v[2], np.float64).reshape(3) for v in chunk])
        out.extend(renderer.render(ids, R, t, K, width=width, height=height).depth)
    return out


def vsd_errors(renderer, sel: dict, truth: ImageTruth, valid: np.ndarray, models: dict,
               params: Bop19Params) -> dict:
    """{obj_id: (E, G_obj, n_tau) VSD errors} for one image; every needed view is rendered once.

    Args:
        renderer: a ``mrcnet.runtime.render.Renderer`` holding the target objects.
        sel: ``{obj_id: [selected estimates]}``. valid: (G,) bool valid instances.
        models: ``{obj_id: EvalModel}``. params: VSD delta, taus, normalisation.
    """
    depth, K, insts = truth.depth, truth.K, truth.instances
    height, width = depth.shape
    n_tau = len(params.vsd_taus)
    out = {}
    need = []  # (obj_id, i, j, g)
    for obj_id, ests in sel.items():
        g_idx = instances_of(truth, obj_id)
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
    est_keys = sorted({(o, i) for o, i, _, _ in need})
    gt_keys = sorted({g for _, _, _, g in need})
    views = [(o, sel[o][i]["R"], sel[o][i]["t"]) for o, i in est_keys]
    views += [(insts[g].obj_id, insts[g].R, insts[g].t) for g in gt_keys]
    depths = render_depths(renderer, views, K, width, height)
    d_est = dict(zip(est_keys, depths[:len(est_keys)]))
    d_gt = dict(zip(gt_keys, depths[len(est_keys):]))
    for o, i, j, g in need:
        out[o][i, j] = pe.vsd(d_est[(o, i)], d_gt[g], depth, K, params.vsd_delta, params.vsd_taus,
                              models[o].diameter, params.vsd_normalized_by_diameter, "step")
    return out


def image_errors(metrics, renderer, sel: dict, truth: ImageTruth, valid: np.ndarray, models: dict,
                 params: Bop19Params) -> dict:
    """{metric: {obj_id: (E, G_obj, C or 1)}} errors laid out as ``params.thresholds`` (VSD's
    per-tau errors repeated over the VSD thresholds, tau-major)."""
    out: dict = {m: {} for m in metrics}
    if "vsd" in metrics:
        for obj_id, ev in vsd_errors(renderer, sel, truth, valid, models, params).items():
            out["vsd"][obj_id] = np.repeat(ev, len(params.vsd_thresholds), axis=2)
    for obj_id, ests in sel.items():
        if "mssd" in metrics:
            out["mssd"][obj_id] = mssd_errors(ests, truth, obj_id, valid, models[obj_id])
        if "mspd" in metrics:
            out["mspd"][obj_id] = mspd_errors(ests, truth, obj_id, valid, models[obj_id])
    return out

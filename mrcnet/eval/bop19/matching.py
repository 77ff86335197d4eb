"""Which ground truth counts, which estimates are evaluated, and greedy matching (bop_toolkit's
``eval_calc_scores.py`` and ``pose_matching.py``).

- Valid ground truth (``visib_gt_min = -1``, BOP'19): per target, the ``inst_count`` most visible
  instances of the object; with ``visib_gt_min >= 0``, the target objects' instances with
  ``visib_fract >= visib_gt_min``.
- Per target, the ``inst_count`` estimates of highest score (ties keep the CSV order).
- Matching, per image and object and per threshold: estimates in decreasing score order each take
  the unmatched valid instance of smallest error, if that error is below the threshold (strict).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


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


def select_estimates(estimates: dict, scene_id: int, im_id: int, inst_counts: dict) -> dict:
    """{obj_id: [rows]}: per target object of one image, its ``inst_count`` estimates of highest
    score in decreasing score order (stable: ties keep the CSV order); [] when it has none.

    Args:
        estimates: ``{(scene_id, im_id, obj_id): [rows in file order]}``.
        inst_counts: ``{obj_id: inst_count}`` of the image's targets.
    """
    sel: dict[int, list[dict]] = {}
    for obj_id, count in inst_counts.items():
        ests = estimates.get((scene_id, im_id, obj_id), [])
        order = sorted(range(len(ests)), key=lambda i: ests[i]["score"], reverse=True)
        sel[obj_id] = [ests[i] for i in order[:count]]
    return sel


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

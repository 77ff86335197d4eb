"""Matched counts -> recalls and AR (bop_toolkit's ``eval_calc_scores.py`` / ``score.py``).

Recall = matched valid instances / valid instances (all objects and images pooled); AR of a
metric = mean recall over its thresholds (VSD: taus x thresholds); AR = mean of the three
(None unless all three were computed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .params import METRICS, Bop19Params


@dataclass
class Tally:
    """Counts gathered over the images, per object.

    ``matched[metric][obj_id]``: (C,) int64 matched valid instances per threshold setting;
    ``n_valid``: valid instances; ``n_estimates``: estimates evaluated; ``n_missing``: targets
    without any estimate.
    """

    thresholds: dict  # {metric: (C,) thresholds}
    matched: dict = field(default_factory=dict)
    n_valid: dict = field(default_factory=dict)
    n_estimates: dict = field(default_factory=dict)
    n_missing: dict = field(default_factory=dict)

    def add_target(self, obj_id: int, n_valid: int, n_estimates: int, has_estimate: bool) -> None:
        """Count one target (image, object): its valid instances and evaluated estimates."""
        self.n_valid[obj_id] = self.n_valid.get(obj_id, 0) + int(n_valid)
        self.n_estimates[obj_id] = self.n_estimates.get(obj_id, 0) + int(n_estimates)
        if not has_estimate:
            self.n_missing[obj_id] = self.n_missing.get(obj_id, 0) + 1

    def add_matches(self, metric: str, obj_id: int, matched: np.ndarray) -> None:
        """Add one target's (C, G) matches of a metric."""
        acc = self.matched.setdefault(metric, {}).setdefault(
            obj_id, np.zeros(len(self.thresholds[metric]), np.int64))
        acc += matched.sum(axis=1)

    def counts(self, metric: str, obj_id: int) -> np.ndarray:
        """(C,) matched counts of one object (zeros when none was added)."""
        return self.matched.get(metric, {}).get(obj_id, np.zeros(len(self.thresholds[metric]), np.int64))


def mean_ar(ar: dict, metrics) -> Optional[float]:
    """Mean of ``ar[m]`` over the three metrics; None unless all three were computed."""
    if not all(m in metrics for m in METRICS):
        return None
    return float(np.mean([ar[m] for m in METRICS]))


def recalls(tally: Tally, metrics, n_tau: int) -> tuple[dict, dict]:
    """({metric: recalls (VSD as [tau][threshold], others [threshold])}, {metric: AR}), pooled."""
    obj_ids = sorted(tally.n_valid)
    total = sum(tally.n_valid.values())
    rec, ar = {}, {}
    for metric in metrics:
        n_c = len(tally.thresholds[metric])
        tps = sum((tally.counts(metric, o) for o in obj_ids), np.zeros(n_c, np.int64))
        r = tps / total if total > 0 else np.zeros(n_c)
        rec[metric] = (r.reshape(n_tau, -1) if metric == "vsd" else r).tolist()
        ar[metric] = float(r.mean())
    return rec, ar


def per_object(tally: Tally, metrics) -> dict:
    """{obj_id: {AR, AR_VSD, AR_MSSD, AR_MSPD, n_instances, n_estimates,
    n_targets_without_estimate}}."""
    out = {}
    for o in sorted(tally.n_valid):
        n = tally.n_valid[o]
        ar = {m: float((tally.counts(m, o) / n).mean()) if n > 0 else 0.0 for m in metrics}
        row = {f"AR_{m.upper()}": ar[m] for m in metrics}
        row["AR"] = mean_ar(ar, metrics)
        row.update(n_instances=int(n), n_estimates=int(tally.n_estimates.get(o, 0)),
                   n_targets_without_estimate=int(tally.n_missing.get(o, 0)))
        out[int(o)] = row
    return out


def report(tally: Tally, metrics, params: Bop19Params, inputs: dict, counts: dict,
           avg_time: float) -> dict:
    """The evaluation's report (see ``mrcnet.eval.bop_eval.evaluate_bop19``)."""
    rec, ar = recalls(tally, metrics, len(params.vsd_taus))
    out = {"AR": mean_ar(ar, metrics)}
    for metric in METRICS:
        out[f"AR_{metric.upper()}"] = ar.get(metric)
    out.update(per_object=per_object(tally, metrics), recalls=rec, counts=counts,
               average_time_per_image=avg_time, params=params.as_dict(), inputs=inputs)
    return out

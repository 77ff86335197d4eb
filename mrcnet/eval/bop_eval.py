"""BOP'19 evaluation of a results CSV: AR_VSD, AR_MSSD, AR_MSPD and their mean AR.

What bop_toolkit's ``eval_bop19_pose.py`` (``eval_calc_errors.py`` + ``eval_calc_scores.py``,
``pose_matching.py``, ``score.calc_localization_scores``) computes, in one pass over the images.
The steps live in :mod:`mrcnet.eval.bop19`, one job per module (the rules are written there):
:mod:`~mrcnet.eval.bop19.load` (targets, results, models, one image's truth),
:mod:`~mrcnet.eval.bop19.errors` (one function per metric), :mod:`~mrcnet.eval.bop19.matching`
(valid ground truth, estimate selection, greedy matching), :mod:`~mrcnet.eval.bop19.scores`
(recalls, AR). This module chains them and writes the reports.

Units: mm, px. A missing estimate simply leaves its instances unmatched (a miss).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from mrcnet.data import bop
from mrcnet.runtime.render import Renderer

from .bop19 import errors, load, matching, scores
from .bop19.matching import greedy_match, valid_gt_mask  # noqa: F401  (public names of this module)
from .bop19.params import (METRICS, MSPD_REF_WIDTH, MSPD_THRESHOLDS,  # noqa: F401  (public names)
                           MSSD_THRESHOLDS, VSD_DELTA_BY_DATASET, VSD_THRESHOLDS, Bop19Params,
                           EvalError, check_metrics, default_vsd_delta, thresholds)


@contextmanager
def evaluation_renderer(renderer, models: dict, needed: bool):
    """The renderer VSD renders with, holding the target objects' models.

    Yields ``renderer`` (the caller's: left open) or, when it is None and ``needed``, a new
    ``Renderer`` released on leaving, whatever happens inside (also on an exception).
    Yields None when not ``needed``.
    """
    if not needed:
        yield None
        return
    own = renderer is None
    if own:
        renderer = Renderer()
    try:
        for obj_id, m in models.items():
            renderer.add_object(obj_id, load.load_mesh_cached(m.path))
        yield renderer
    finally:
        if own:
            renderer.release()


def evaluate_image(key, inputs: load.EvalInputs, metrics, renderer, params: Bop19Params,
                   th: dict, tally: scores.Tally) -> None:
    """Add one image's targets to ``tally``: truth, selected estimates, errors, matches."""
    scene_id, im_id = key
    inst_counts = inputs.per_image[key]
    truth = load.load_image_truth(inputs.dataset, scene_id, im_id, "vsd" in metrics)
    valid = matching.valid_gt_mask(truth.obj_ids, truth.visib_fracts, inst_counts,
                                   params.visib_gt_min)
    sel = matching.select_estimates(inputs.estimates, scene_id, im_id, inst_counts)
    errs = errors.image_errors(metrics, renderer, sel, truth, valid, inputs.models, params)
    for obj_id in inst_counts:
        g_idx = errors.instances_of(truth, obj_id)
        has_estimate = bool(inputs.estimates.get((scene_id, im_id, obj_id)))
        tally.add_target(obj_id, valid[g_idx].sum(), len(sel[obj_id]), has_estimate)
        for metric in metrics:
            tally.add_matches(metric, obj_id,
                              matching.greedy_match(errs[metric][obj_id], th[metric], valid[g_idx]))


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
        renderer: a ``mrcnet.runtime.render.Renderer`` (created when None and VSD is asked, and
            then released on return or on an error).
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
    metrics = check_metrics(metrics)
    inputs = load.load_inputs(data_dir, results, split, split_type, targets, params, models)
    th = thresholds(params)
    tally = scores.Tally(th)
    keys = sorted(inputs.per_image)
    with evaluation_renderer(renderer, inputs.models, "vsd" in metrics) as r:
        for key in tqdm(keys, desc="mrcnet-eval", unit="image", disable=not progress):
            evaluate_image(key, inputs, metrics, r, params, th, tally)
    ds = inputs.dataset
    return scores.report(
        tally, metrics, params,
        inputs={"data": str(inputs.root), "split": ds.split_dir.name, "results": str(results),
                "targets": inputs.targets_source, "models": str(inputs.models_dir)},
        counts={"images": len(keys), "targets": len(inputs.targets),
                "instances_to_find": int(sum(tally.n_valid.values())),
                "estimates_in_file": len(inputs.rows),
                "estimates_evaluated": int(sum(tally.n_estimates.values())),
                "targets_without_estimate": int(sum(tally.n_missing.values()))},
        avg_time=load.average_time(inputs.rows))


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

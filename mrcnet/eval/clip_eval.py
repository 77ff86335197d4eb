"""Accuracy of a pose track (``mrcnet-run``'s ``poses.jsonl``) against a clip's ground truth.

The demo clip (``mrcnet-synth video``) carries BOP-style ``scene_gt.json`` (frame -> instances);
this module scores the estimated poses with the BOP'19 surface metrics (MSSD, MSPD, symmetry-aware,
thresholds of :class:`mrcnet.eval.bop_eval.Bop19Params`) and a symmetry-aware rotation error.
Each ground-truth instance is matched to the estimate of the same object nearest in translation; a
missing estimate is a miss.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mrcnet.data import bop
from mrcnet.eval import pose_errors as pe
from mrcnet.eval.bop_eval import MSPD_REF_WIDTH, Bop19Params
from mrcnet.runtime.formats.files import OutputError, check_out_file
from mrcnet.runtime.formats.poses_jsonl import PosesFormatError, read_poses_jsonl
from mrcnet.runtime.assets import DEMO_CAMERA, DEMO_DIR, DEMO_MODELS
from mrcnet.runtime.render import load_mesh


def load_poses_jsonl(path) -> dict[int, list[dict]]:
    """``poses.jsonl`` (strict JSON, :mod:`mrcnet.runtime.formats.poses_jsonl`) -> {frame id:
    [{obj_id, R (3,3), t (3,) mm, score}]}; ValueError naming the file and record if malformed."""
    try:
        records = read_poses_jsonl(path)
    except PosesFormatError as e:
        raise ValueError(str(e)) from None
    if not records:
        raise ValueError(f"{path}: no pose records")
    out: dict[int, list[dict]] = {}
    for n, rec in enumerate(records, 1):
        try:
            out[int(rec["frame"])] = [
                {"obj_id": int(o["obj_id"]), "R": np.asarray(o["R"], float).reshape(3, 3),
                 "t": np.asarray(o["t"], float).reshape(3), "score": float(o.get("score", 0.0))}
                for o in rec.get("objects", [])]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: malformed pose record ({e})") from None
    return out


def evaluate_clip(poses_jsonl, scene_gt_json, models_dir, K, image_width: int = 640,
                  params: Bop19Params = Bop19Params()) -> dict:
    """Score a pose track. K (3, 3) the clip's camera. Returns a dict with, per object and overall:
    ``n`` ground-truth instances, ``found`` estimates matched, ``AR_MSSD``, ``AR_MSPD`` (0..1,
    BOP'19 thresholds), ``rot_err_deg`` and ``trans_err_mm`` medians (symmetry-aware rotation:
    the smallest angle to any symmetric copy of the ground truth), ``within_5deg_5cm`` share."""
    est = load_poses_jsonl(poses_jsonl)
    gt = bop.load_scene_gt(scene_gt_json)
    infos = bop.load_models_info(Path(models_dir) / "models_info.json")
    K = np.asarray(K, float)
    rows: dict[int, list[tuple]] = {}
    pts_cache, syms_cache = {}, {}
    for frame, insts in gt.items():
        cands = est.get(int(frame), [])
        for g in insts:
            oid = int(g["obj_id"])
            if oid not in pts_cache:
                pts_cache[oid] = load_mesh(Path(models_dir) / f"obj_{oid:06d}.ply").vertices.astype(np.float64)
                syms_cache[oid] = bop.symmetry_transforms(infos[oid], params.max_sym_disc_step)
            Rg, tg = np.asarray(g["cam_R_m2c"], float).reshape(3, 3), np.asarray(g["cam_t_m2c"], float).reshape(3)
            same = [c for c in cands if c["obj_id"] == oid]
            if not same:
                rows.setdefault(oid, []).append((np.inf, np.inf, np.inf, np.inf))
                continue
            c = min(same, key=lambda c: np.linalg.norm(c["t"] - tg))
            pts, syms = pts_cache[oid], syms_cache[oid]
            e_mssd = pe.mssd(c["R"], c["t"], Rg, tg, pts, syms)
            e_mspd = pe.mspd(c["R"], c["t"], Rg, tg, K, pts, syms)
            rot = pe.re_sym(c["R"], Rg, [s["R"] for s in syms])
            rows.setdefault(oid, []).append((e_mssd, e_mspd, rot, float(np.linalg.norm(c["t"] - tg))))

    def score(items, diameter_of):
        a = np.asarray([r[:4] for r, _ in items], float)
        d = np.asarray([diameter_of[o] for _, o in items], float)
        mssd_th = np.asarray(params.mssd_thresholds)[None] * d[:, None]
        mspd_th = np.asarray(params.mspd_thresholds)[None] / (MSPD_REF_WIDTH / image_width)
        found = np.isfinite(a[:, 0])
        return {
            "n": int(len(a)), "found": int(found.sum()),
            "AR_MSSD": float((a[:, :1] < mssd_th).mean()), "AR_MSPD": float((a[:, 1:2] < mspd_th).mean()),
            "rot_err_deg": float(np.median(a[found, 2])) if found.any() else None,
            "trans_err_mm": float(np.median(a[found, 3])) if found.any() else None,
            "within_5deg_5cm": float(pe.within_5deg_5cm(a[:, 2], a[:, 3]).mean()),
        }

    diam = {o: infos[o].diameter for o in rows}
    per_obj = {o: score([(r, o) for r in rs], diam) for o, rs in sorted(rows.items())}
    overall = score([(r, o) for o, rs in rows.items() for r in rs], diam)
    overall["AR"] = (overall["AR_MSSD"] + overall["AR_MSPD"]) / 2
    return {"overall": overall, "per_object": per_obj}


def format_table(report: dict, obj_names: dict | None = None) -> str:
    """Markdown table of :func:`evaluate_clip`'s report (one row per object, then all)."""
    def row(name, r):
        f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
        return (f"| {name} | {r['n']} | {r['found']} | {f(r['rot_err_deg'])} | {f(r['trans_err_mm'])} | "
                f"{100 * r['within_5deg_5cm']:.1f} | {r['AR_MSSD']:.3f} | {r['AR_MSPD']:.3f} |")

    lines = ["| object | instances | found | rot. err. median (deg) | trans. err. median (mm) | within 5 deg / 5 cm (%) "
             "| AR_MSSD | AR_MSPD |", "|---|---|---|---|---|---|---|---|"]
    for oid, r in report["per_object"].items():
        lines.append(row((obj_names or {}).get(oid, f"obj {oid}"), r))
    lines.append(row("all", report["overall"]))
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("poses", type=click.Path(dir_okay=False))
@click.option("--scene-gt", type=click.Path(dir_okay=False), default=str(DEMO_DIR / "scene_gt.json"),
              help="the clip's ground truth (BOP scene_gt.json keyed by frame)")
@click.option("--models", type=click.Path(file_okay=False), default=str(DEMO_MODELS),
              help="models folder (PLY + models_info.json)")
@click.option("--camera", type=click.Path(dir_okay=False), default=str(DEMO_DIR / DEMO_CAMERA),
              help="camera.json (fx, fy, cx, cy, width, height)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="write the report here")
def main(poses, scene_gt, models, camera, json_out):
    """``mrcnet-eval-clip POSES``: score POSES (mrcnet-run's poses.jsonl) against a clip's ground
    truth: BOP MSSD / MSPD recall and symmetry-aware rotation / translation errors per object.
    Defaults: the shipped demo clip."""
    for what, p in (("poses", poses), ("scene_gt", scene_gt), ("camera", camera)):
        if not Path(p).is_file():
            raise click.ClickException(f"{what} file not found: {p}")
    try:
        if json_out:
            check_out_file(json_out, "--json")
    except OutputError as e:
        raise click.ClickException(str(e)) from None
    try:
        cam = bop.load_camera(camera)
        rep = evaluate_clip(poses, scene_gt, models, cam["K"], cam["width"])
    except (bop.BopFormatError, ValueError, KeyError, OSError) as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    click.echo(format_table(rep))
    click.echo(f"AR (mean of AR_MSSD and AR_MSPD): {rep['overall']['AR']:.3f}")
    if json_out:
        bop.save_json(json_out, rep)


if __name__ == "__main__":
    main()

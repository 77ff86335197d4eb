"""Which crop of the TTA group a pose comes from, and how right each crop of the group is.

For one object of a clip (every ``--every``-th frame with a detection of it), the detection's four
in-plane rotated crops go through the torch model; each crop's rotation, turned back by its in-plane
rotation, is compared with the ground truth (symmetry-aware, degrees), next to its rotation score
and the crop the official selection takes (the largest score, :func:`mrcnet.geometry.tta_select`).
A part that is right in one crop and turned round in the others, with the turned crops scoring
higher, is what the selection cannot fix: the model must learn the part's turned views.

    python benchmarks/tta_crops.py --clip CLIP --checkpoint mrcnet/assets/demo/model.pth --object-id 1

CLIP: a folder as ``mrcnet-synth video`` writes it (``video.mp4``, ``camera.json``,
``detections.json``, ``scene_gt.json``). Prints a markdown table per frame and a summary line;
writes ``<out>/tta_crops.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from mrcnet.checkpoint import load_checkpoint
from mrcnet.data import bop
from mrcnet.eval.pose_errors import re_sym
from mrcnet.geometry import tta_select
from mrcnet.model import STAGE2_FEATURES
from mrcnet.runtime.assets import DEMO_MODELS
from mrcnet.runtime.geometry import TTA_GROUP
from mrcnet.runtime.preprocess import prepare_detection
from mrcnet.train.trainer import StageTwoRenderer

FLIPPED_DEG = 90.0  # a crop's rotation this far from the ground truth is turned round
RIGHT_DEG = 30.0  # ... and this close is the right way round


@torch.no_grad()
def crop_errors(model, renderer, image: np.ndarray, K: np.ndarray, box_xyxy, obj_index: int, R_gt: np.ndarray,
                sym_R: np.ndarray) -> dict:
    """One detection's TTA group through ``model`` (torch, BatchNorm over the group).

    image (H, W, 3) uint8 BGR; K (3, 3); box_xyxy (4,) px; R_gt (3, 3) model -> camera; sym_R (S, 3, 3)
    the object's symmetries (identity included). Returns ``{"errors_deg": [4 floats], "scores":
    [4 floats], "selected": int, "selected_error_deg": float}``: each crop's rotation error after
    undoing its in-plane rotation, its rotation score, the crop the official selection takes and the
    error of the pose it returns.
    """
    cb = prepare_detection(image, K, box_xyxy, TTA_GROUP, model.meta.get("fov_variant", "training"),
                           model.cfg.crop_size)
    f = lambda a: torch.from_numpy(np.asarray(a)).float()
    idx = torch.full((TTA_GROUP,), int(obj_index), dtype=torch.int64)
    crops, fov, K_roi, Rz = f(cb.crops), f(cb.fov), f(cb.K_roi), f(cb.Rz)
    s1 = model.stage1(crops, idx, fov, K_roi)
    render = renderer(idx, s1["R_init"], s1["t_init"], K_roi)
    s2 = model.stage2(render, idx, fov, K_roi, **{k: s1[k] for k in STAGE2_FEATURES})
    R_crop = (Rz.transpose(-1, -2) @ s2["R"]).double().numpy()
    R_sel, _, _ = tta_select(s2["R"], s2["t"], s1["rot_score"], s1["depth_score"], Rz)
    scores = s1["rot_score"].double().numpy()
    return {"errors_deg": [re_sym(R, R_gt, sym_R) for R in R_crop], "scores": scores.tolist(),
            "selected": int(np.argmax(scores)),
            "selected_error_deg": re_sym(R_sel[0].double().numpy(), R_gt, sym_R)}


def summarise(rows: list[dict]) -> dict:
    """Counts over frames: ``frames``; ``selected_flipped`` (the returned pose > 90 deg off);
    ``upright_right`` (crop 0 within 30 deg); ``right_crop_not_taken`` (some crop within 30 deg while
    the returned pose is > 90 deg off); ``turned_crops_flipped`` of ``turned_crops`` (crops 1-3 > 90
    deg off); ``median_error_deg`` per crop (4 floats, None without frames)."""
    e = np.asarray([r["errors_deg"] for r in rows], float).reshape(-1, TTA_GROUP)
    sel = np.asarray([r["selected_error_deg"] for r in rows], float)
    return {"frames": len(rows), "selected_flipped": int((sel > FLIPPED_DEG).sum()),
            "upright_right": int((e[:, 0] < RIGHT_DEG).sum()),
            "right_crop_not_taken": int(((e.min(1) < RIGHT_DEG) & (sel > FLIPPED_DEG)).sum()),
            "turned_crops": int(e[:, 1:].size), "turned_crops_flipped": int((e[:, 1:] > FLIPPED_DEG).sum()),
            "median_error_deg": np.median(e, 0).tolist() if len(e) else None}


def measure(clip, checkpoint, object_id: int, every: int = 10, models=None) -> dict:
    """:func:`crop_errors` for ``object_id`` on every ``every``-th frame of ``clip`` (see the module
    docstring) -> ``{"rows": [{"frame", ...crop_errors}], "summary": summarise(rows)}``."""
    clip = Path(clip)
    models = Path(models) if models is not None else DEMO_MODELS
    model = load_checkpoint(checkpoint, device="cpu")
    obj_ids = list(model.meta["obj_ids"])
    if object_id not in obj_ids:
        raise click.BadParameter(f"object {object_id} is not in the checkpoint (it holds {obj_ids})",
                                 param_hint="--object-id")
    info = bop.load_models_info(models / "models_info.json")[object_id]
    sym_R = np.stack([s["R"] for s in bop.symmetry_transforms(info)])
    renderer = StageTwoRenderer(models, obj_ids, model.cfg.crop_size)
    K = bop.load_camera(clip / "camera.json")["K"]
    gt = bop.load_scene_gt(clip / "scene_gt.json")
    dets = {d["image_id"]: d for d in bop.load_detections(clip / "detections.json") if d["category_id"] == object_id}
    cap = cv2.VideoCapture(str(clip / "video.mp4"))
    rows = []
    try:
        frame = -1
        while True:
            ok, image = cap.read()
            if not ok:
                break
            frame += 1
            if frame % every or frame not in dets:
                continue
            g = [x for x in gt.get(frame, []) if int(x["obj_id"]) == object_id]
            if not g:
                continue
            x, y, w, h = dets[frame]["bbox"]
            r = crop_errors(model, renderer, image, K, [x, y, x + w, y + h], obj_ids.index(object_id),
                            np.asarray(g[0]["cam_R_m2c"], float), sym_R)
            rows.append({"frame": frame, **r})
    finally:
        cap.release()
    return {"clip": str(clip), "checkpoint": str(checkpoint), "object_id": object_id, "every": every,
            "rows": rows, "summary": summarise(rows)}


@click.command(context_settings={"show_default": True})
@click.option("--clip", required=True, type=click.Path(exists=True, file_okay=False),
              help="clip folder (video.mp4, camera.json, detections.json, scene_gt.json)")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False), help="torch checkpoint")
@click.option("--object-id", type=int, required=True, help="BOP object id")
@click.option("--every", type=click.IntRange(1), default=10, help="every N-th frame")
@click.option("--models", type=click.Path(exists=True, file_okay=False), default=None,
              help="models folder [default: the demo's]")
@click.option("--out", type=click.Path(file_okay=False), default="out/tta_crops")
def main(clip, checkpoint, object_id, every, models, out) -> None:
    """Per-crop rotation errors and scores of the TTA group (see the module docstring)."""
    torch.set_num_threads(1)
    rep = measure(clip, checkpoint, object_id, every, models)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tta_crops.json").write_text(json.dumps(rep, indent=1))
    click.echo("| frame | error per crop (deg, 0/90/180/270) | rotation score per crop | taken | error taken |")
    click.echo("| --- | --- | --- | --- | --- |")
    for r in rep["rows"]:
        click.echo(f"| {r['frame']} | {' / '.join(f'{e:.0f}' for e in r['errors_deg'])} | "
                   f"{' / '.join(f'{s:.2f}' for s in r['scores'])} | {r['selected']} | {r['selected_error_deg']:.0f} |")
    s = rep["summary"]
    click.echo(f"{s['frames']} frames: returned pose turned round (> {FLIPPED_DEG:.0f} deg) in {s['selected_flipped']}; "
               f"upright crop right (< {RIGHT_DEG:.0f} deg) in {s['upright_right']}; a right crop not taken in "
               f"{s['right_crop_not_taken']}; turned crops turned round: {s['turned_crops_flipped']} of {s['turned_crops']}")
    click.echo(f"json: {out / 'tta_crops.json'}")


if __name__ == "__main__":
    main()

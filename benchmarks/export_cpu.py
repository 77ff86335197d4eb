"""CPU time per detection: PyTorch vs ONNX Runtime FP32 vs ONNX Runtime INT8 (QDQ), plus agreement.

A detection = 4 crops (the TTA group) through the classifier and the regressor (the rendering is
an input here, not timed). The torch row is the fastest eager path (the model as trained: grouped
per-object convolutions, per-displacement correlations); the ONNX graphs come from the export
forms (:func:`mrcnet.export.optimize.optimize_for_export`, as ``mrcnet-export`` does) and their
node counts are reported. Random weights unless ``--checkpoint`` (pose agreement of int8 is only
meaningful for a trained model). Calibration: ``--calib-data`` (BOP) or synthetic renderings of
the meshes in ``--models`` (default: box meshes written to a temporary folder).

    .venv/bin/python benchmarks/export_cpu.py --preset small --detections 2 --threads 2
    .venv/bin/python benchmarks/export_cpu.py --preset paper --n-obj 1 --detections 1 --repeats 2
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from common import box_meshes
from mrcnet.checkpoint import load_checkpoint
from mrcnet.export import (build_manifest, calibration_feeds, example_inputs, export_onnx, optimize_for_export,
                           ort_session, quant_agreement, quantize_graphs, rel_err, run_ort, run_torch)
from mrcnet.model import build_model


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--n-obj", type=int, default=3)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--calib-data", type=Path, default=None)
    ap.add_argument("--calib-count", type=int, default=8)
    ap.add_argument("--detections", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.checkpoint:
        model = load_checkpoint(a.checkpoint)
        obj_ids, depth = model.meta["obj_ids"], model.meta["depth_range"]
    else:
        torch.manual_seed(0)
        obj_ids, depth = list(range(1, a.n_obj + 1)), (0.05, 1.7)
        model = build_model(a.n_obj, depth, a.preset).eval()
    # as mrcnet-export --backend onnx does; ``model`` stays eager
    exported = optimize_for_export(copy.deepcopy(model), target="onnxruntime")
    n = model.bn_group * a.detections  # crops: TTA_GROUP per detection
    res = {"preset": model.cfg.name, "n_obj": model.n_obj, "detections": a.detections, "threads": a.threads,
           "cpu": os.cpu_count()}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        models = a.models or box_meshes(td / "models", obj_ids)
        man = build_manifest(dataset="bench", preset=model.cfg.name, obj_ids=obj_ids, depth_range=depth,
                             bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size,
                             bn_group=model.bn_group, project_version="bench", checkpoint_sha256="")
        paths = export_onnx(exported, td, man, progress=print)
        cal = calibration_feeds(exported, man, a.calib_data, count=a.calib_count, models_dir=models, progress=print)
        qpaths = quantize_graphs(paths, cal, progress=print)
        feeds = example_inputs(model.n_obj, n, seed=2, crop_size=model.cfg.crop_size)
        # real-looking inputs when we have them: the held-out calibration crops
        if len(cal.held_out["crops"]) >= n:
            feeds = {k: v[:n] for k, v in cal.held_out.items()}
        fp32 = {g: ort_session(p, a.threads) for g, p in paths.items()}
        int8 = {g: ort_session(p, a.threads) for g, p in qpaths.items()}
        ref = run_torch(model, feeds)
        got = run_ort(fp32, {**feeds, **{k: ref[k] for k in ("feat_x4", "feat_x8", "feat_x16", "R_init", "t_init",
                                                              "persp_init")}}, chain=False)
        res["ort_fp32_vs_torch"] = {k: rel_err(got[k], ref[k]) for k in ("pose_logits", "depth_logits",
                                                                         "trans_logits", "R", "t")}
        with torch.no_grad():
            res["torch_eager_ms_per_det"] = 1e3 * _time(lambda: run_torch(model, feeds), a.repeats) / a.detections
        res["ort_fp32_ms_per_det"] = 1e3 * _time(lambda: run_ort(fp32, feeds), a.repeats) / a.detections
        res["ort_int8_ms_per_det"] = 1e3 * _time(lambda: run_ort(int8, feeds), a.repeats) / a.detections
        res["int8_vs_fp32"] = quant_agreement(paths, qpaths, cal.held_out, a.threads)
        res["calibration"] = cal.describe()
        res["nodes"] = {g: len(onnx.load(str(p), load_external_data=False).graph.node) for g, p in paths.items()}
        res["sizes_mib"] = {**{g: p.stat().st_size / 2**20 for g, p in paths.items()},
                            **{f"{g}_int8": p.stat().st_size / 2**20 for g, p in qpaths.items()}}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

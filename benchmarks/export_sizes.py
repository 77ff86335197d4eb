"""ONNX sizes of the exported graphs: the full T-LESS paper model (30 objects) and a 1-object subset.

Random weights (sizes do not depend on values). Peak memory ~4-5 GB; a few minutes on 2 CPU cores.

    .venv/bin/python benchmarks/export_sizes.py [--dataset tless] [--objects 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from mrcnet.export import build_manifest, export_onnx, onnx_param_count
from mrcnet.model import build_model
from mrcnet.model.subset import per_object_params, subset_model
from mrcnet.runtime.presets import get_dataset


def export_and_measure(model, obj_ids, ds, out: Path) -> dict:
    man = build_manifest(dataset=ds.name, preset=model.cfg.name, obj_ids=obj_ids, depth_range=ds.depth_range,
                         bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size,
                         bn_group=model.bn_group, project_version="bench", checkpoint_sha256="")
    t0 = time.perf_counter()
    paths = export_onnx(model, out, man, progress=print)
    row = {"objects": len(obj_ids), "model_params": sum(p.numel() for p in model.parameters()),
           "per_object_params": per_object_params(model), "export_s": round(time.perf_counter() - t0, 1)}
    for g, p in paths.items():
        row[f"{g}_bytes"] = p.stat().st_size
        row[f"{g}_params"] = onnx_param_count(p)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="tless")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--objects", type=int, default=1, help="size of the subset export")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ds = get_dataset(a.dataset)
    model = build_model(ds.n_objects, ds.depth_range, a.preset).eval()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        rows.append(export_and_measure(model, list(ds.obj_ids), ds, Path(td) / "full"))
        print(rows[-1], flush=True)
        sub = subset_model(model, list(range(a.objects)), inplace=True)
        rows.append(export_and_measure(sub, list(ds.obj_ids[: a.objects]), ds, Path(td) / "subset"))
        print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n{a.preset} {a.dataset}: peak RSS {peak:.1f} GiB")
    print(f"{'objects':>8} {'params (M)':>11} {'classifier':>12} {'regressor':>12} {'total':>10}")
    for r in rows:
        tot = r["classifier_bytes"] + r["regressor_bytes"]
        print(f"{r['objects']:>8} {r['model_params'] / 1e6:>11.1f} {r['classifier_bytes'] / 2**20:>9.1f} MiB"
              f" {r['regressor_bytes'] / 2**20:>9.1f} MiB {tot / 2**20:>7.1f} MiB")
    if a.json:
        a.json.write_text(json.dumps({"dataset": a.dataset, "preset": a.preset, "rows": rows, "peak_rss_gib": peak},
                                     indent=2))


if __name__ == "__main__":
    main()

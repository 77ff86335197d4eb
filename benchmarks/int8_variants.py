"""int8 placement variants for ONNX Runtime CPU, measured side by side against the FP32 graphs.

One FP32 export (``--preset``, ``--n-obj`` objects, random weights unless ``--checkpoint``) and one
calibration set are made once and kept in ``--work``; each variant quantises the saved FP32 graphs
(:func:`mrcnet.export.quantize.quantize_graph` with its options over the ``onnxruntime`` style;
also kept in ``--work``). All variants' sessions are then timed round-robin (one chained
classifier + regressor call on ``--detections`` detections per turn, the order rotated each
round, ``--repeats`` rounds): a busy machine slows every variant alike. Reported per variant: ms
per detection (median), speed-up over FP32, the op counts after ORT's graph optimisations
(QLinearConv, float Conv / MatMul, QuantizeLinear / DequantizeLinear, Transpose), the outputs'
agreement with FP32 on the held-out calibration detections, and with ``--profile`` the share of
kernel time per op class (int8 kernels, Q/DQ, layout Transposes, normalisation, float
convolutions / matmuls, the rest) from one profiled run.

    .venv/bin/python benchmarks/int8_variants.py --preset paper --n-obj 1 --work out/int8v --profile
"""
from __future__ import annotations

import argparse
import copy
import json
import pickle
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from common import box_meshes
from mrcnet.checkpoint import load_checkpoint
from mrcnet.export import (build_manifest, calibration_feeds, export_onnx, optimize_for_export, output_agreement,
                           quantize_graph, run_ort)
from mrcnet.model import build_model

GRAPHS = ("classifier", "regressor")
CORRELATION_MATMULS = ("corr_x4/MatMul", "corr_x8/MatMul", "corr_x16/MatMul")
S8_ACTIVATIONS = {"activation": "QInt8", "ActivationSymmetric": True}
#: name -> (quantize_graph options over the ``onnxruntime`` style, ORT session config entries)
VARIANTS = {
    "u8s8 per-channel (default)": ({}, {}),
    "u8s8 per-tensor": ({"per_channel": False}, {}),
    "u8s8 reduce_range": ({"reduce_range": True}, {}),
    "u8s8 conv only": ({"op_types": ("Conv",)}, {}),
    "u8s8 float correlation": ({"float_scopes": CORRELATION_MATMULS}, {}),
    "u8s8 + adds/concats": ({"residual_adds": True}, {}),
    "u8s8 QOperator": ({"format": "QOperator"}, {}),
    "s8s8 (x86 default)": (S8_ACTIVATIONS, {}),
    "s8s8 qdqisint8allowed": (S8_ACTIVATIONS, {"session.qdqisint8allowed": "1"}),
}
INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "ConvInteger",
                "QLinearAdd", "QLinearConcat", "QLinearMul", "QLinearSigmoid", "QLinearAveragePool",
                "QLinearGlobalAveragePool", "DynamicQuantizeMatMul")
NORM_OPS = ("ReduceMean", "Sub", "Mul", "Add", "Div", "Sqrt", "Reciprocal", "InstanceNormalization", "Pow")
OP_CLASSES = {"int8": INT8_KERNELS, "Q/DQ": ("QuantizeLinear", "DequantizeLinear"), "layout": (
    "Transpose", "ReorderInput", "ReorderOutput", "Reshape"), "norm": NORM_OPS,
    "float conv/mm": ("Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul")}
COUNTED = ("QLinearConv", "Conv", "QLinearMatMul", "MatMul", "QGemm", "Gemm", "QuantizeLinear", "DequantizeLinear",
           "Transpose", "QLinearAdd", "QLinearConcat")


def prepare(work: Path, preset: str, n_obj: int, checkpoint, calib_count: int):
    """FP32 graphs + calibration set in ``work`` (made once; reused when present)."""
    paths = {g: work / f"{g}.onnx" for g in GRAPHS}
    cal_path = work / "calibration.pkl"
    if all(p.is_file() for p in paths.values()) and cal_path.is_file():
        with open(cal_path, "rb") as f:
            return paths, pickle.load(f)
    work.mkdir(parents=True, exist_ok=True)
    if checkpoint:
        model = load_checkpoint(checkpoint)
        obj_ids, depth = model.meta["obj_ids"], model.meta["depth_range"]
    else:
        torch.manual_seed(0)
        obj_ids, depth = list(range(1, n_obj + 1)), (0.05, 1.7)
        model = build_model(n_obj, depth, preset).eval()
    exported = optimize_for_export(copy.deepcopy(model), target="onnxruntime")  # as mrcnet-export --backend onnx
    man = build_manifest(dataset="bench", preset=model.cfg.name, obj_ids=obj_ids, depth_range=depth,
                         bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4,
                         project_version="bench", checkpoint_sha256="")
    paths = export_onnx(exported, work, man, progress=print)
    models = box_meshes(work / "models", obj_ids)
    cal = calibration_feeds(exported, man, None, count=calib_count, models_dir=models, progress=print)
    with open(cal_path, "wb") as f:
        pickle.dump(cal, f)
    return paths, cal


def variant_graphs(work: Path, paths, cal, options: dict) -> dict[str, Path]:
    """The variant's int8 graphs (quantised once; the file name encodes the options)."""
    key = "-".join(f"{k}={v}" for k, v in sorted(options.items())) or "default"
    key = "".join(c if c.isalnum() or c in "=-_." else "_" for c in key)[:120]
    out = {}
    for g, batches in (("classifier", cal.classifier_batches()), ("regressor", cal.regressor_batches())):
        p = work / f"{g}.{key}.int8.onnx"
        if not p.is_file():
            t0 = time.perf_counter()
            quantize_graph(paths[g], p, batches, options=options)
            print(f"quantised {p.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        out[g] = p
    return out


def sessions(paths, threads: int, config: dict, opt_dir: Path | None = None, profile: str | None = None):
    """ORT CPU sessions {graph: session}; ``opt_dir``: ORT writes the optimised graphs there
    (``<graph>.opt.onnx``)."""
    out = {}
    for g, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        for k, v in config.items():
            so.add_session_config_entry(k, v)
        if opt_dir is not None:
            so.optimized_model_filepath = str(opt_dir / f"{g}.opt.onnx")
        if profile:
            so.enable_profiling, so.profile_file_prefix = True, f"{profile}-{g}"
        out[g] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    return out


def op_counts(opt_dir: Path) -> dict[str, int]:
    """{op type: count} over the optimised graphs ORT wrote to ``opt_dir``."""
    c: dict[str, int] = {}
    for g in GRAPHS:
        for n in onnx.load(str(opt_dir / f"{g}.opt.onnx"), load_external_data=False).graph.node:
            c[n.op_type] = c.get(n.op_type, 0) + 1
    return c


def profile_shares(paths, threads: int, config: dict, feeds, prefix: str) -> dict[str, float]:
    """Share of kernel time per op class (:data:`OP_CLASSES`, rest = "other") in one profiled call."""
    s = sessions(paths, threads, config, profile=prefix)
    run_ort(s, feeds)
    by: dict[str, float] = {}
    for sess in s.values():
        f = Path(sess.end_profiling())
        for e in json.loads(f.read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                op = e["args"]["op_name"]
                cls = next((c for c, ops in OP_CLASSES.items() if op in ops), "other")
                by[cls] = by.get(cls, 0.0) + e["dur"]
        f.unlink()
    tot = sum(by.values())
    return {k: by.get(k, 0.0) / tot for k in (*OP_CLASSES, "other")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--n-obj", type=int, default=1)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--work", type=Path, default=Path("out/int8_variants"))
    ap.add_argument("--calib-count", type=int, default=8)
    ap.add_argument("--detections", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=None, help="comma-separated subset of the variant names")
    ap.add_argument("--profile", action="store_true", help="per op class kernel-time shares (one profiled call)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another --work folder (e.g. an export with the ReduceMean normalisation form): its FP32 "
                         "and default int8 graphs join the round-robin as two more rows")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    paths, cal = prepare(a.work, a.preset, a.n_obj, a.checkpoint, a.calib_count)
    names = list(VARIANTS) if not a.variants else [v.strip() for v in a.variants.split(",")]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    n = 4 * a.detections
    if len(cal.held_out["crops"]) < n:
        raise SystemExit(f"--detections {a.detections}: only {len(cal.held_out['crops']) // 4} held-out detections")
    feeds = {k: v[:n] for k, v in cal.held_out.items()}
    graphs = {"fp32": (paths, {})}
    if a.baseline is not None:
        graphs["fp32 (baseline)"] = ({g: a.baseline / f"{g}.onnx" for g in GRAPHS}, {})
        graphs["u8s8 default (baseline)"] = ({g: a.baseline / f"{g}.default.int8.onnx" for g in GRAPHS}, {})
        missing = [str(f) for v in ("fp32 (baseline)", "u8s8 default (baseline)") for f in graphs[v][0].values()
                   if not f.is_file()]
        if missing:
            raise SystemExit(f"--baseline: missing {missing}")
    for v in names:
        options, config = VARIANTS[v]
        graphs[v] = (variant_graphs(a.work, paths, cal, dict(options)), config)
    opt_dirs = {v: a.work / "optimized" / f"v{i}" for i, v in enumerate(graphs)}
    for d in opt_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    sess = {v: sessions(p, a.threads, c, opt_dirs[v]) for v, (p, c) in graphs.items()}
    outs, times = {}, {v: [] for v in graphs}
    for v, s in sess.items():  # warm-up
        outs[v] = run_ort(s, feeds)
    order = list(sess)
    for r in range(a.repeats):
        for v in order[r % len(order):] + order[: r % len(order)]:
            t0 = time.perf_counter()
            outs[v] = run_ort(sess[v], feeds)
            times[v].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{a.repeats}: " + ", ".join(f"{v} {1e3 * times[v][-1] / a.detections:.0f}"
                                                          for v in order), flush=True)
    del sess
    base = float(np.median(times["fp32"]))
    rows = []
    for v, (p, c) in graphs.items():
        med = float(np.median(times[v]))
        row = {"variant": v, "ms_per_det": 1e3 * med / a.detections, "speedup_vs_fp32": base / med,
               "ops": {k: op_counts(opt_dirs[v]).get(k, 0) for k in COUNTED}}
        if v != "fp32":
            row["vs_fp32"] = output_agreement(outs["fp32"], outs[v])
        if a.profile:
            row["kernel_share"] = profile_shares(p, a.threads, c, feeds, str(a.work / "prof"))
        rows.append(row)
    hdr = "| variant | ms/det | x FP32 | QLinearConv / Conv | QLinMatMul / MatMul | QGemm / Gemm | Q / DQ | Transpose " \
          "| QLinearAdd / QLinearConcat | rot diff deg (med) | t diff mm (med) | pose logits rel err |"
    if a.profile:
        hdr += " kernel time: " + " / ".join((*OP_CLASSES, "other")) + " |"
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in rows:
        o, q = r["ops"], r.get("vs_fp32", {})
        line = (f"| {r['variant']} | {r['ms_per_det']:.0f} | {r['speedup_vs_fp32']:.2f} | {o['QLinearConv']} / "
                f"{o['Conv']} | {o['QLinearMatMul']} / {o['MatMul']} | {o['QGemm']} / {o['Gemm']} | "
                f"{o['QuantizeLinear']} / {o['DequantizeLinear']} | {o['Transpose']} | {o['QLinearAdd']} / {o['QLinearConcat']} | "
                f"{q.get('rot_diff_deg_median', 0):.2f} | {q.get('t_diff_mm_median', 0):.2f} | "
                f"{q.get('pose_logits_err', 0):.3f} |")
        if a.profile:
            line += " " + " / ".join(f"{100 * r['kernel_share'][k]:.0f}%" for k in (*OP_CLASSES, "other")) + " |"
        lines.append(line)
    print(f"\n{a.preset} preset, {a.n_obj} object(s), {a.detections} detection(s), {a.threads} threads, "
          f"median of {a.repeats} round-robin rounds")
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

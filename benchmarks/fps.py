"""Per-stage latency and detections per second of every available backend, side by side.

Backends (those available): ``torch`` (PyTorch eager, :class:`mrcnet.inference.TorchBackend`),
``ort-fp32`` / ``ort-int8`` (ONNX Runtime, the export's fp32 graphs / ``*.int8.onnx`` QDQ graphs),
``trt-fp32`` / ``trt-fp16`` / ``trt-int8`` (TensorRT engines listed in the export's manifest). All
run the same :class:`mrcnet.runtime.pipeline.Pipeline` (preprocess, classifier, render, regressor,
postprocess) on the same synthetic frames (640x480 noise, ``synth`` camera) and boxes (60..160 px,
objects cycling over the model's), so only the backend differs.

Per backend and detections-per-frame D: stage latencies (ms per frame) p50/p90/p99 over ``--frames``
timed frames (after ``--warmup`` frames), the end-to-end frame time, detections per second
(D x frames / summed frame time) and the ratio of that to torch's. The torch row is the fastest
eager PyTorch path (per-object convolutions as one grouped convolution), labelled as such.

Compute (same run): this machine's FP32 matmul rate (``--matmul-size``^3, timed before and after
the backends, the better kept) and, per backend and D, the network's GFLOP/s over the classifier +
regressor time and its share of that rate (:func:`model_flops`: reference-model FLOPs per crop).

Model: ``--model`` an export directory (ORT/TRT rows; a torch row needs ``--checkpoint``) or a
``.pth`` checkpoint (torch row, exported to a temporary folder for the others); default: a
random-weight model of ``--preset`` (3 procedural objects) exported to a temporary folder by the real
exporter (``mrcnet.export.export_checkpoint`` through ``common.export_for_benchmark``), int8 graphs
included (``--no-int8`` skips the quantisation), TensorRT engines when TensorRT and a GPU are usable. ``--tta 1`` runs one crop per detection (a BatchNorm group of 1: its own export).

    .venv/bin/python benchmarks/fps.py --preset small --detections-per-frame 1,4 --out out/fps
    .venv/bin/python benchmarks/fps.py --preset paper --detections-per-frame 1 --frames 5 --out out/fps_paper

When torch runs, every other backend is also compared with it on the same random crops (the
runtime's comparator, ``compare_backends``): ``parity_vs_torch`` in the JSON, a list in the markdown.

Writes ``OUT/fps.json`` (settings, hardware, library versions, figures), ``OUT/fps.md`` (tables) and
``OUT/fps.png`` (stacked per-stage p50 per backend, one panel per D).
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import (BACKEND_KEYS, BenchError, BenchExport, export_for_benchmark, hardware_info,
                    library_versions, open_backends, parse_ints, random_model, save_random_checkpoint,
                    tensorrt_usable, write_json_md, write_meshes)
from mrcnet.checkpoint import CheckpointError, load_checkpoint
from mrcnet.data.scenes import default_K
from mrcnet.eval.infer import checkpoint_manifest
from mrcnet.export import example_inputs
from mrcnet.model import STAGE2_FEATURES, build_model
from mrcnet.runtime.backends import compare_backends
from mrcnet.runtime.formats.files import atomic_open
from mrcnet.runtime.manifest import ManifestError, load_manifest
from mrcnet.runtime.pipeline import STAGES, Pipeline  # STAGES: preprocess, classifier, render, regressor, postprocess
from mrcnet.runtime.render import Renderer

FRAME_SIZE = (640, 480)

log = logging.getLogger("fps")


# ---------------------------------------------------------------------------------- measuring
def synthetic_frames(n: int, n_det: int, obj_ids: Sequence[int], seed: int = 0):
    """``n`` frames (FRAME_SIZE noise, uint8 BGR), the synth camera K (3, 3) and per frame ``n_det``
    detections (obj_id, box xyxy px: 60..160 px squares-ish inside the image)."""
    w, h = FRAME_SIZE
    rng = np.random.default_rng(seed)
    K = default_K(w, h)
    frames, dets = [], []
    for _ in range(n):
        frames.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ds = []
        for j in range(n_det):
            bw, bh = rng.uniform(60, 160, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            ds.append((int(obj_ids[j % len(obj_ids)]), (x, y, x + bw, y + bh)))
        dets.append(ds)
    return frames, K, dets


def percentiles(values) -> dict:
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def measure(pipe, frames, K, dets, warmup: int) -> dict:
    """Run the pipeline over the frames (the first ``warmup`` untimed); per-stage and total ms
    percentiles over the rest, detections/s and frames/s from their summed total time."""
    for i in range(min(warmup, len(frames))):
        pipe.estimate_frame(frames[i], K, dets[i])
    per = {s: [] for s in (*STAGES, "total")}
    n_det = 0
    for f, d in zip(frames[warmup:], dets[warmup:]):
        res = pipe.estimate_frame(f, K, d)
        if res.skipped:
            raise BenchError(f"benchmark detections were skipped: {res.skipped[0][1]}")
        n_det += len(res.poses)
        for s in per:
            per[s].append(res.timings[s])
    total_s = sum(per["total"]) / 1000.0
    return {"stages_ms": {s: percentiles(per[s]) for s in STAGES}, "total_ms": percentiles(per["total"]),
            "frames": len(per["total"]), "detections": n_det,
            "detections_per_s": n_det / total_s if total_s > 0 else float("nan"),
            "frames_per_s": len(per["total"]) / total_s if total_s > 0 else float("nan")}


def parity_vs_torch(manifest, backends: dict, n_det: int = 2, seed: int = 0) -> dict:
    """{backend: comparator report} of every open backend against torch on the same random crops
    (``mrcnet.runtime.backends.compare_backends``: max rel. error per output, argmax agreement,
    5 deg / 5 mm shares); {} when torch did not open."""
    ref = backends.get("torch")
    if ref is None or isinstance(ref, str) or len(backends) < 2:
        return {}
    feeds = example_inputs(len(manifest.obj_ids), manifest.n_rot * n_det, seed=seed, crop_size=manifest.crop_size)
    return {key: {k: round(v, 8) for k, v in compare_backends(ref, be, feeds).items()}
            for key, be in backends.items() if key != "torch" and not isinstance(be, str)}


def run_benchmark(manifest, backends: dict, dpf: Sequence[int], frames: int, warmup: int, renderer,
                  say: Callable[[str], None] = print) -> dict:
    """{backend: {D: measure()}} for the open backends, sharing one renderer; adds ``vs_torch`` (the
    detections/s ratio to torch at the same D) when torch ran."""
    meshes = manifest.load_meshes()
    for oid, mesh in meshes.items():
        renderer.add_object(oid, mesh)
    results: dict = {}
    for key, be in backends.items():
        if isinstance(be, str):
            continue
        pipe = Pipeline(be, manifest, renderer, meshes={})
        results[key] = {}
        for d in dpf:
            fr, K, dets = synthetic_frames(frames + warmup, d, manifest.obj_ids, seed=d)
            r = measure(pipe, fr, K, dets, warmup)
            results[key][str(d)] = r
            say(f"{key:9s} D={d:<3d} total p50 {r['total_ms']['p50']:8.1f} ms  {r['detections_per_s']:8.2f} det/s")
        be.close()
    if "torch" in results:
        for key, per_d in results.items():
            for d, r in per_d.items():
                ref = results["torch"][d]["detections_per_s"]
                r["vs_torch"] = r["detections_per_s"] / ref if ref > 0 else float("nan")
    return results


# ----------------------------------------------------------------------------- compute rates
#: the torch row's name in the reports: the fastest eager PyTorch path (per-object convolutions as one
#: grouped convolution, correlations as per-displacement products), not the export form
TORCH_LABEL = "torch (eager: grouped per-object convs)"


def matmul_rate(size: int = 2048, repeats: int = 3) -> float:
    """This machine's FP32 matrix-multiply rate, GFLOP/s: the best of ``repeats`` timed
    ``size``^3 products (``torch.mm``, the threads torch uses), after
    one untimed product. The roof the backends' achieved rates are compared with."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    mm = torch.mm
    mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def model_flops(preset: str, n_obj: int, depth_range, tta: int) -> dict:
    """Multiply-add FLOPs (2 per MAC; convolutions and matrix products, as
    ``torch.utils.flop_counter`` counts them) of one crop through each stage of the reference
    model: {"classifier": flops, "regressor": flops}. Shapes only: the model runs on the meta
    device, so no weights or time are spent; the per-object convolutions count one object's
    work per crop, as the grouped eager form does."""
    model = build_model(n_obj, tuple(depth_range), preset, bn_group=tta).eval().to("meta")
    feeds = {k: torch.from_numpy(v).to("meta") for k, v in
             example_inputs(n_obj, 4, crop_size=model.cfg.crop_size).items()}
    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            s1 = model.stage1(feeds["crops"], feeds["obj_index"], feeds["fov"], feeds["K_roi"])
        out["classifier"] = fc.get_total_flops() / 4
        with FlopCounterMode(display=False) as fc:
            model.stage2(feeds["render"], feeds["obj_index"], feeds["fov"], feeds["K_roi"],
                         *(s1[k] for k in STAGE2_FEATURES))
        out["regressor"] = fc.get_total_flops() / 4
    return out


def add_compute_rates(results: dict, flops_per_crop: dict, roof_gflops: float, tta: int) -> None:
    """Per backend and D, in place: ``gflops_per_s`` = the network FLOPs of a frame (both stages,
    ``tta`` crops per detection) over its classifier + regressor p50 time, and ``share_of_matmul``
    = that rate / ``roof_gflops`` (the machine's FP32 matmul rate; int8 rows can exceed 1)."""
    per_crop = flops_per_crop["classifier"] + flops_per_crop["regressor"]
    for per_d in results.values():
        for d, r in per_d.items():
            secs = (r["stages_ms"]["classifier"]["p50"] + r["stages_ms"]["regressor"]["p50"]) / 1000.0
            rate = per_crop * tta * int(d) / secs / 1e9 if secs > 0 else float("nan")
            r["gflops_per_s"] = rate
            r["share_of_matmul"] = rate / roof_gflops if roof_gflops > 0 else float("nan")


def compute_markdown(report: dict) -> list[str]:
    """The compute table (network GFLOP/s per backend and D, share of the matmul rate) as markdown
    lines; empty when the run measured no rates."""
    c = report.get("compute")
    if not c:
        return []
    lines = ["", f"Compute: {c['gflop_per_crop']['classifier']:.2f} + {c['gflop_per_crop']['regressor']:.2f} "
             f"GFLOP per crop (classifier + regressor, reference model); this machine's FP32 matmul "
             f"({c['matmul_size']}^3, best of the run): {c['matmul_gflops']:.0f} GFLOP/s. GFLOP/s: network FLOPs "
             "over the classifier + regressor p50 time.", "",
             "| backend | D | GFLOP/s | share of FP32 matmul |", "|---|---|---|---|"]
    for key, per_d in report["results"].items():
        for d, r in per_d.items():
            if "gflops_per_s" in r:
                lines.append(f"| {row_label(key)} | {d} | {r['gflops_per_s']:.1f} | {r['share_of_matmul']:.2f} |")
    return lines


def row_label(key: str) -> str:
    """The reports' name of a backend key (the torch row says which eager path it is)."""
    return TORCH_LABEL if key == "torch" else key


# ------------------------------------------------------------------------------------ reports
def markdown(report: dict) -> str:
    """The markdown tables: one row per backend and D (stage p50/p90/p99 ms, total, det/s, ratio)."""
    hw, s = report["hardware"], report["settings"]
    lines = [f"# MRC-Net pipeline latency ({s['preset']} preset, TTA {s['tta']})", "",
             f"Machine: {hw['cpu']}, {hw['cores_usable']}/{hw['cores']} cores usable"
             + (f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU") + f"; {hw['os']}.",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in report["libraries"].items()) + ".",
             f"Command: `{report['command']}`", "",
             f"Frames {FRAME_SIZE[0]}x{FRAME_SIZE[1]}; {s['frames']} timed frames after {s['warmup']} warm-up per "
             "setting. Stage cells: p50 / p90 / p99 ms per frame. det/s: detections / summed frame time; "
             f"x torch: det/s relative to {TORCH_LABEL}.", ""]
    head = "| backend | D | " + " | ".join(STAGES) + " | total | det/s | x torch |"
    lines += [head, "|" + "---|" * (len(STAGES) + 5)]
    for key, per_d in report["results"].items():
        for d, r in per_d.items():
            cells = [f"{r['stages_ms'][st]['p50']:.1f} / {r['stages_ms'][st]['p90']:.1f} / "
                     f"{r['stages_ms'][st]['p99']:.1f}" for st in STAGES]
            t = r["total_ms"]
            ratio = f"{r['vs_torch']:.2f}" if "vs_torch" in r else "-"
            lines.append(f"| {row_label(key)} | {d} | " + " | ".join(cells) +
                         f" | {t['p50']:.1f} / {t['p90']:.1f} / {t['p99']:.1f} | {r['detections_per_s']:.2f} | {ratio} |")
    lines += compute_markdown(report)
    if report.get("parity_vs_torch"):
        lines += ["", "Parity with torch on the same random crops (max relative error of scale; share of crops "
                      "within 5 deg / 5 mm):", ""]
        lines += [f"- {k}: max {p['max']:.2e}, R {p.get('R', float('nan')):.2e}, t {p.get('t', float('nan')):.2e}, "
                  f"within 5 deg {p.get('rot_agree_5deg', float('nan')):.2f}, within 5 mm {p.get('t_agree_5mm', float('nan')):.2f}"
                  for k, p in report["parity_vs_torch"].items()]
    if report["skipped"]:
        lines += ["", "Not run: " + "; ".join(f"{k} ({why})" for k, why in report["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Stacked horizontal bars of the stage p50 per backend, one panel per D (matplotlib Agg)."""
    import matplotlib  # slow, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend (headless)

    res = report["results"]
    ds = sorted({d for per_d in res.values() for d in per_d}, key=int)
    keys = list(res)
    fig, axes = plt.subplots(len(ds), 1, figsize=(9, 1.2 + 0.45 * len(keys) * len(ds) + 0.6 * len(ds)),
                             squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, d in zip(axes[:, 0], ds):
        left = np.zeros(len(keys))
        for i, st in enumerate(STAGES):
            v = np.array([res[k][d]["stages_ms"][st]["p50"] if d in res[k] else 0.0 for k in keys])
            ax.barh(keys, v, left=left, color=colours[i], label=st)
            left += v
        for j, k in enumerate(keys):
            if d in res[k]:
                ax.text(left[j], j, f" {res[k][d]['detections_per_s']:.1f} det/s", va="center", fontsize=8)
        ax.set_title(f"{d} detection(s) per frame", fontsize=9)
        ax.set_xlabel("p50 latency per frame, ms")
        ax.set_xlim(0, left.max() * 1.3 if left.max() > 0 else 1)
        ax.invert_yaxis()
    axes[0, 0].legend(ncol=len(STAGES), fontsize=7, loc="lower right")
    s = report["settings"]
    fig.suptitle(f"MRC-Net {s['preset']} TTA {s['tta']} on {report['hardware']['cpu']}", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)


def write_reports(report: dict, out_dir: Path, name: str = "fps") -> dict:
    """``name``.json / .md / .png in out_dir (each atomically)."""
    paths = write_json_md(report, markdown(report), out_dir, name)
    paths["png"] = Path(out_dir) / f"{name}.png"
    plot(report, paths["png"])
    return paths


# ---------------------------------------------------------------------------------------- CLI
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, type=click.Path(exists=True),
              help="Export directory or .pth checkpoint [default: a random-weight model of --preset].")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="With an export directory --model: the checkpoint for the torch row.")
@click.option("--preset", type=click.Choice(["small", "paper"]), default="small", show_default=True,
              help="Model preset of the default random-weight model.")
@click.option("--detections-per-frame", "dpf", default="1,4,16", show_default=True)
@click.option("--tta", type=click.Choice(["4", "1"]), default="4", show_default=True,
              help="Crops per detection (4 in-plane rotations, or 1).")
@click.option("--frames", default=10, show_default=True, type=click.IntRange(min=1), help="Timed frames per setting.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--backends", default=",".join(BACKEND_KEYS), show_default=True,
              help="Comma-separated subset to try.")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="Quantise the temporary export to int8 (ONNX Runtime QDQ, synthetic calibration).")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu]; "
              "ORT uses the CPU provider when this is cpu.")
@click.option("--threads", default=0, show_default=True, help="ONNX Runtime intra-op threads (0 = default).")
@click.option("--matmul-size", default=2048, show_default=True, type=click.IntRange(min=0),
              help="Side of the FP32 matmul timed before and after the backends (the machine's rate; 0 = skip "
                   "the compute columns).")
@click.option("--models", "models_src", default=None, type=click.Path(exists=True, file_okay=False),
              help="BOP models folder with the obj_XXXXXX.ply of the model's objects [default: procedural "
                   "objects, which need trimesh + manifold3d].")
@click.option("--out", "out_dir", default="out/fps", show_default=True, type=click.Path(file_okay=False))
def main(model, checkpoint, preset, dpf, tta, frames, warmup, backends, int8, device, threads, matmul_size,
         models_src, out_dir):
    """Per-stage latency and detections/s of torch, ONNX Runtime and TensorRT side by side."""
    logging.basicConfig(level=logging.WARNING)
    dpf_list = parse_ints(dpf, "--detections-per-frame")
    tta_n = int(tta)
    keys = [k.strip() for k in backends.split(",") if k.strip()]
    bad = [k for k in keys if k not in BACKEND_KEYS]
    if bad:
        raise BenchError(f"--backends: unknown {bad}; choose from {', '.join(BACKEND_KEYS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    say = click.echo
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mrcnet_fps_") as tmp:
        tmp = Path(tmp)
        torch_model, manifest = None, None
        if model is not None and Path(model).is_dir():
            try:
                manifest = load_manifest(model)
            except ManifestError as e:
                raise BenchError(str(e)) from None
            export = BenchExport(manifest)
            if manifest.n_rot != tta_n:
                raise BenchError(f"--model {model}: the export runs {manifest.n_rot} crops per detection; "
                                 f"--tta {tta_n} needs its own export (or omit --model)")
            if checkpoint is not None and "torch" in keys:
                torch_model = _load_torch(checkpoint, tta_n)
            preset = manifest.preset
        else:
            if model is not None:
                torch_model = _load_torch(model, tta_n)
                preset = torch_model.cfg.name
                ckpt = Path(model)
            else:
                torch_model = random_model(preset)
                torch_model.set_bn_group(tta_n)
                ckpt = tmp / f"random_{preset}.pth"
            if models_src is not None:
                models_dir = Path(models_src)
            else:
                models_dir = write_meshes(tmp / "objects" / "models", torch_model.meta["obj_ids"])
            if keys == ["torch"]:  # nothing to export: the torch row alone needs no onnx
                manifest = checkpoint_manifest(torch_model, models_dir.parent, models_dir.name)
                export = BenchExport(manifest)
            else:
                if model is None:
                    save_random_checkpoint(torch_model, ckpt)
                want_trt = [k.split("-")[1] for k in keys if k.startswith("trt-")] if tta_n == 4 and tensorrt_usable() else []
                export = export_for_benchmark(ckpt, tmp, models_dir, tta=tta_n, int8=int8 and "ort-int8" in keys,
                                              tensorrt_precisions=want_trt, max_detections=max(dpf_list), say=say)
                manifest = export.onnx
            if "torch" not in keys:
                torch_model = None
        opened = open_backends(export, torch_model, keys, device, threads)
        skipped = {k: v for k, v in opened.items() if isinstance(v, str)}
        for k, why in skipped.items():
            say(f"{k}: not run ({why})")
        parity = parity_vs_torch(manifest, opened)
        roof = matmul_rate(matmul_size) if matmul_size else 0.0
        results = run_benchmark(manifest, opened, dpf_list, frames, warmup, Renderer(), say)
        compute = None
        if matmul_size and results:
            roof = max(roof, matmul_rate(matmul_size))
            flops = model_flops(manifest.preset, len(manifest.obj_ids), manifest.depth_range, tta_n)
            add_compute_rates(results, flops, roof, tta_n)
            compute = {"matmul_size": matmul_size, "matmul_gflops": roof,
                       "gflop_per_crop": {g: f / 1e9 for g, f in flops.items()}}
            say(f"FP32 matmul {matmul_size}^3: {roof:.0f} GFLOP/s")
    if not results:
        raise BenchError("no backend could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    report = {"settings": {"preset": preset, "tta": tta_n, "detections_per_frame": dpf_list, "frames": frames,
                           "warmup": warmup, "model": model or f"random-weight {preset}", "device": device,
                           "threads": threads, "frame_size": list(FRAME_SIZE)},
              "command": " ".join(["benchmarks/fps.py", *sys.argv[1:]]),
              "hardware": hardware_info(), "libraries": library_versions(), "results": results,
              "parity_vs_torch": parity, "compute": compute,
              "skipped": skipped, "seconds": time.perf_counter() - t_start,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    paths = write_reports(report, Path(out_dir))
    click.echo(markdown(report))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _load_torch(path, tta_n: int):
    try:
        m = load_checkpoint(path)
    except CheckpointError as e:
        raise BenchError(f"--checkpoint {path}: {e}") from None
    m.set_bn_group(tta_n)
    return m


if __name__ == "__main__":  # pragma: no cover
    main()

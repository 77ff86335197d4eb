"""Accuracy parity of every available backend with the PyTorch reference on a BOP split.

For torch (the reference, a ``.pth`` checkpoint) and each backend of the export (``ort-fp32``,
``ort-int8``, ``trt-fp32``/``fp16``/``int8``, and the TensorRT precision graphs under ONNX Runtime
CPU: ``ort-fp16``, ``ort-trt-int8`` (see ``GRAPH_KEYS``), those available): :func:`mrcnet.eval.infer.infer_split`
writes the BOP'19 results CSV of the split (the same detections for all), and
:func:`mrcnet.eval.bop_eval.evaluate_bop19` scores it. Reported per backend: AR (and AR_VSD /
AR_MSSD / AR_MSPD), |delta AR| to torch, and the share of poses within 1 degree and 1 mm of
torch's pose for the same detection (:func:`mrcnet.eval.infer.compare_results`).

Defaults run anywhere: without ``--data`` a synthetic split is made (``mrcnet.data``: 3
procedural objects, ``--images`` images of 320x240); without ``--checkpoint`` a random-weight model
of ``--preset``; without ``--export`` the checkpoint is exported to a temporary folder (int8 graphs
included unless ``--no-int8``; TensorRT engines when usable). AR of a random-weight model is near
0: the parity figures (|delta AR|, share within 1 deg / 1 mm) are what matters there.

    .venv/bin/python benchmarks/parity.py --out out/parity
    .venv/bin/python benchmarks/parity.py --data DATA --checkpoint ckpt.pth --export out/export --out out/parity

Writes ``OUT/parity.json``, ``OUT/parity.md`` and the CSVs / evaluation reports under ``OUT/results/``.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click

from common import (BACKEND_KEYS, OBJ_IDS, BenchError, BenchExport, export_for_benchmark, hardware_info,
                    library_versions, open_backends, random_model, save_random_checkpoint, tensorrt_usable,
                    write_json_md)
from mrcnet.checkpoint import load_checkpoint
from mrcnet.data import objects, scenes
from mrcnet.data.bop import BopDataset, BopFormatError, save_detections
from mrcnet.data.samples import jittered_box
from mrcnet.eval.bop_eval import Bop19Params, EvalError, default_vsd_delta, evaluate_bop19, write_report
from mrcnet.eval.infer import InferError, compare_results, infer_split
from mrcnet.export import convert_graphs
from mrcnet.runtime.backends import OnnxRuntimeBackend, ort_providers
from mrcnet.runtime.datasets import DatasetPathError, render_models_dir
from mrcnet.runtime.manifest import ManifestError, load_manifest
from mrcnet.runtime.render import Renderer

#: the TensorRT precision graphs run under ONNX Runtime CPU (no GPU needed): ``ort-fp16`` = the
#: fp16 graph's float32 stand-in rounding to float16 at the same points
#: (:func:`mrcnet.export.fp16.convert_graph` ``emulate=True``), ``ort-trt-int8`` = the TensorRT-style
#: symmetric int8 QDQ graph (``<graph>.trt-int8.onnx``)
GRAPH_KEYS = ("ort-fp16", "ort-trt-int8")
GRAPH_PRECISION = {"ort-fp16": "fp16", "ort-trt-int8": "int8"}
PARITY_KEYS = tuple(k for k in BACKEND_KEYS if k != "torch") + GRAPH_KEYS


def make_split(root: Path, n_images: int, seed: int = 0) -> Path:
    """A synthetic BOP test split (3 procedural objects, 320x240, 2-3 objects per image)."""
    objects.write_objects(root, len(OBJ_IDS), seed=seed)
    cfg = scenes.SceneConfig(width=320, height=240, objects_per_image=(2, 3), distractors_per_image=(0, 1),
                             images_per_scene=max(1, n_images), depth_range=(300.0, 600.0))
    scenes.generate_scenes(root, root, n_images, cfg, seed=seed, renderer=Renderer(), progress=False)
    return root


def needed_precisions(keys) -> list[str]:
    """TensorRT precisions whose exports the keys need: the ``trt-*`` rows (where TensorRT runs)
    and the precision graphs of the ``GRAPH_KEYS`` (written without TensorRT too)."""
    want = [k.split("-")[1] for k in keys if k.startswith("trt-")] if tensorrt_usable() else []
    want += [GRAPH_PRECISION[k] for k in GRAPH_KEYS if k in keys]
    return [p for p in ("fp32", "fp16", "int8") if p in want]


def open_graph_backends(export: BenchExport, keys, workdir: Path) -> dict:
    """{key: OnnxRuntimeBackend (CPU) | reason} for the ``GRAPH_KEYS`` in ``keys``; the fp16 key runs
    the float32 stand-in of the fp16 graph (ONNX Runtime CPU has no float16 Conv kernel), written
    into ``workdir``."""
    out = {}
    for key in GRAPH_KEYS:
        if key not in keys:
            continue
        prec = GRAPH_PRECISION[key]
        paths = export.precision_graph_paths(prec)
        if paths is None:
            out[key] = f"export has no {prec} graphs (mrcnet-export --backend tensorrt --precision {prec})"
            continue
        if prec == "fp16":
            paths = convert_graphs(export.fp32_graph_paths(), emulate=True, folder=workdir)
        out[key] = OnnxRuntimeBackend(paths["classifier"], paths["regressor"],
                                      providers=ort_providers("onnxruntime-cpu"))
    return out


def jittered_detections(data_dir, split: str, box_jitter: float, path, seed: int = 0) -> Path:
    """BOP'22 detections (score 1) of every usable instance of the split (``bbox_visib`` with w, h > 0)
    with each box side moved by up to ``box_jitter`` of the box size
    (:func:`mrcnet.data.samples.jittered_box`, the trainer's jittered validation boxes): a stand-in
    for a real detector's boxes, which are never the exact ones. Written to ``path``."""
    dets = []
    for rec in BopDataset(data_dir, split):
        H, W = rec.load_image("bgr").shape[:2]
        for inst in rec.instances:
            box = (inst.info or {}).get("bbox_visib")
            if box is None or box[2] <= 0 or box[3] <= 0:
                continue
            x1, y1, x2, y2 = jittered_box(box, W, H, (rec.scene_id, rec.im_id, inst.gt_id), box_jitter, seed)
            dets.append({"scene_id": rec.scene_id, "image_id": rec.im_id, "category_id": inst.obj_id, "score": 1.0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1]})
    save_detections(path, dets)
    return Path(path)


def ar_fields(report: dict) -> dict:
    return {k: report.get(k) for k in ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD")}


def markdown(report: dict) -> str:
    s, hw = report["settings"], report["hardware"]
    ar = "AR" if s["metrics"] == ["vsd", "mssd", "mspd"] else "AR (" + "+".join(s["metrics"]) + ")"
    lines = ["# MRC-Net accuracy parity with PyTorch", "",
             f"Split `{s['split']}` of `{s['data']}` ({report['n_images']} images, {report['n_estimates']} "
             f"torch estimates); model {s['model']}; detections: {s['detections'] or 'ground-truth boxes'}.",
             f"Machine: {hw['cpu']}, {hw['cores_usable']} cores" + (f", GPU {hw['gpu']}" if hw.get("gpu") else "")
             + f". Command: `{report['command']}`", "",
             f"AR values in %. Within: share of estimates within {s['max_deg']} deg and {s['max_mm']} mm of "
             "torch's for the same detection.", "",
             f"| backend | {ar} | AR_VSD | AR_MSSD | AR_MSPD | abs. delta AR | within | median deg | median mm | s/image |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    for key, r in report["backends"].items():
        c = r.get("vs_torch") or {}
        within = "{:.1f}%".format(100 * c["within"]) if c else "-"
        deg = "{:.3g}".format(c["rot_deg"]["median"]) if c else "-"
        mm = "{:.3g}".format(c["trans_mm"]["median"]) if c else "-"
        lines.append(
            f"| {key} | {pct(r['AR'])} | {pct(r['AR_VSD'])} | {pct(r['AR_MSSD'])} | {pct(r['AR_MSPD'])} | "
            f"{pct(r.get('abs_delta_AR'))} | {within} | {deg} | {mm} | {r['seconds_per_image']:.2f} |")
    if report["skipped"]:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", default=None, type=click.Path(exists=True, file_okay=False),
              help="BOP dataset folder [default: a synthetic split in a temporary folder].")
@click.option("--split", default="test", show_default=True)
@click.option("--images", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images of the default synthetic split.")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The torch reference [default: a random-weight model of --preset].")
@click.option("--export", "export_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Export directory of the same model [default: the checkpoint exported to a temporary folder].")
@click.option("--preset", type=click.Choice(["small", "paper"]), default="small", show_default=True)
@click.option("--detections", default=None, type=click.Path(exists=True, dir_okay=False),
              help="BOP'22 detections [default: ground-truth boxes].")
@click.option("--box-jitter", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Without --detections: ground-truth boxes with each side moved by up to this share of the "
                   "box size (what a detector gives) instead of the exact boxes.")
@click.option("--backends", default=",".join(PARITY_KEYS), show_default=True, help="Subset to compare.")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Quantise the temporary export.")
@click.option("--metrics", default="vsd,mssd,mspd", show_default=True,
              help="BOP'19 metrics to compute (AR needs all three).")
@click.option("--max-deg", default=1.0, show_default=True, help="Rotation tolerance for 'within', degrees.")
@click.option("--max-mm", default=1.0, show_default=True, help="Translation tolerance for 'within', mm.")
@click.option("--device", default="cpu", show_default=True, help="torch device of the reference.")
@click.option("--out", "out_dir", default="out/parity", show_default=True, type=click.Path(file_okay=False))
def main(data, split, images, checkpoint, export_dir, preset, detections, box_jitter, backends, int8, metrics,
         max_deg, max_mm, device, out_dir):
    """AR of each backend on a BOP split against the PyTorch reference."""
    keys = [k.strip() for k in backends.split(",") if k.strip()]
    bad = [k for k in keys if k not in PARITY_KEYS]
    if bad:
        raise BenchError(f"--backends: unknown {bad}; choose from {', '.join(PARITY_KEYS)}")
    metric_list = [m.strip() for m in metrics.split(",") if m.strip()]
    out = Path(out_dir)
    res_dir = out / "results"
    t_start = time.perf_counter()
    say = click.echo
    renderer = Renderer()
    with tempfile.TemporaryDirectory(prefix="mrcnet_parity_") as tmp:
        tmp = Path(tmp)
        data_dir = Path(data) if data else make_split(tmp / "data", images)
        if box_jitter > 0 and detections is None:
            detections = jittered_detections(data_dir, split, box_jitter, tmp / "detections_jittered.json")
            detections_desc = f"ground-truth boxes jittered by up to {box_jitter:g} of their size"
        else:
            detections_desc = detections
        if checkpoint is None:
            model = random_model(preset)
            checkpoint = save_random_checkpoint(model, tmp / f"random_{preset}.pth")
            model_desc = f"random-weight {preset}"
        else:
            model = load_checkpoint(checkpoint)
            model_desc = str(checkpoint)
        if export_dir is None:
            try:
                models_dir = render_models_dir(data_dir, None, split)  # the split's render models (T-LESS models_cad)
            except DatasetPathError as e:
                raise BenchError(str(e)) from None
            export = export_for_benchmark(checkpoint, tmp, models_dir, int8=int8 and "ort-int8" in keys,
                                          tensorrt_precisions=needed_precisions(keys), calib_count=32, say=say)
        else:
            try:
                exported = load_manifest(export_dir)
                export = BenchExport(exported, onnx_int8=exported)  # its int8 graphs, if it has them
            except ManifestError as e:
                raise BenchError(str(e)) from None
        manifest = export.onnx
        base = [k for k in keys if k not in GRAPH_KEYS]
        opened = open_backends(export, None, base, "cpu" if device == "cpu" else "cuda", 0)
        opened.update(open_graph_backends(export, keys, tmp))
        skipped = {k: v for k, v in opened.items() if isinstance(v, str)}
        params = Bop19Params(vsd_delta=default_vsd_delta(data_dir))

        def run(key, **kw):
            csv = res_dir / f"{key}.csv"
            try:
                s = infer_split(data_dir, checkpoint, csv, split=split, detections=detections, progress=False,
                                renderer=renderer, report=say, **kw)
                ev = evaluate_bop19(data_dir, csv, split=split, params=params, metrics=metric_list,
                                    renderer=renderer)
            except (InferError, BopFormatError, EvalError) as e:
                raise BenchError(str(e)) from None
            write_report(ev, res_dir / f"{key}_eval")
            if not s.complete:
                raise BenchError(f"{key}: inference incomplete ({s.lines()[-1]})")
            say(f"{key:9s} AR {ev['AR'] if ev['AR'] is not None else float('nan'):.4f}  ({s.seconds:.1f} s)")
            return s, ev, csv

        s_ref, ev_ref, csv_ref = run("torch", backend="torch", device=device, resume=False)
        rows = {"torch": {**ar_fields(ev_ref), "abs_delta_AR": 0.0, "vs_torch": None, "csv": str(csv_ref),
                          "seconds_per_image": s_ref.stage_ms.get("total", 0.0) / 1000.0}}
        main_metric = "AR" if ev_ref["AR"] is not None else f"AR_{metric_list[0].upper()}"
        for key, be in opened.items():
            if isinstance(be, str):
                say(f"{key}: not run ({be})")
                continue
            s, ev, csv = run(key, opened=(be, manifest), resume=False)
            be.close()
            a, b = ev.get(main_metric), ev_ref.get(main_metric)
            rows[key] = {**ar_fields(ev), "abs_delta_AR": None if a is None or b is None else abs(a - b),
                         "vs_torch": compare_results(csv_ref, csv, max_deg, max_mm), "csv": str(csv),
                         "seconds_per_image": s.stage_ms.get("total", 0.0) / 1000.0}
        n_images = s_ref.images
    report = {"settings": {"data": str(data) if data else f"synthetic ({images} images)", "split": split,
                           "model": model_desc, "detections": detections_desc, "metrics": metric_list,
                           "delta_metric": main_metric, "max_deg": max_deg, "max_mm": max_mm, "device": device},
              "command": " ".join(["benchmarks/parity.py", *sys.argv[1:]]),
              "hardware": hardware_info(), "libraries": library_versions(),
              "n_images": n_images, "n_estimates": s_ref.estimates, "backends": rows, "skipped": skipped,
              "seconds": time.perf_counter() - t_start, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = markdown(report)
    write_json_md(report, text, out, "parity")
    click.echo(text)
    click.echo(f"wrote {out / 'parity.json'} and {out / 'parity.md'}")


if __name__ == "__main__":  # pragma: no cover
    main()

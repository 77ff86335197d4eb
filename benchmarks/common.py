"""Helpers the benchmarks share: the environment record, a random-weight model, its exports through
the real exporter (``mrcnet.export.export_checkpoint``, what ``mrcnet-export`` runs), the backends
of an export, report files and option parsing.

The scripts import it as ``common`` (a script's own folder is on ``sys.path`` when Python runs it:
``.venv/bin/python benchmarks/fps.py``). Public project APIs only.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import click
import torch

import mrcnet.export as mx
from mrcnet.checkpoint import save_checkpoint
from mrcnet.data import objects
from mrcnet.inference import TorchBackend
from mrcnet.model import build_model
from mrcnet.runtime.backends import (BackendError, OnnxRuntimeBackend, TensorRTBackend, ort_providers,
                                     tensorrt_available)
from mrcnet.runtime.formats.files import atomic_open
from mrcnet.runtime.manifest import CLASSIFIER_ONNX, REGRESSOR_ONNX, Manifest, load_manifest
from mrcnet.runtime.presets import get_dataset
from mrcnet.testing import write_box_ply

#: backend rows of the benchmarks: PyTorch eager, ONNX Runtime (fp32 / int8 QDQ graphs), TensorRT engines
BACKEND_KEYS = ("torch", "ort-fp32", "ort-int8", "trt-fp32", "trt-fp16", "trt-int8")
#: the random-weight model's objects (procedural, ``mrcnet.data.objects``)
OBJ_IDS = (1, 2, 3)
LIBRARIES = ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "opencv-python-headless",
             "moderngl", "onnx")
GRAPHS = ("classifier", "regressor")


class BenchError(click.ClickException):
    """A one-line user-facing error of the benchmarks."""


# ------------------------------------------------------------------------------- environment
def hardware_info() -> dict:
    """CPU model, logical cores (all / usable by this process), memory, GPU (name, via torch) and the
    OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "gpu": None}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def library_versions() -> dict:
    """{distribution: version} of the LIBRARIES installed."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def tensorrt_usable() -> bool:
    """TensorRT and a CUDA GPU are usable here."""
    return tensorrt_available()


def parse_ints(text: str, what: str) -> list[int]:
    """Positive integers of a comma-separated option value; BenchError naming the option ``what``."""
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if not vals or min(vals) < 1:
        raise BenchError(f"{what}: {text!r} needs positive integers")
    return vals


def write_json_md(report: dict, markdown: str, out_dir: Path, name: str) -> dict:
    """``out_dir/name.json`` (the report) and ``name.md`` (the markdown), each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    with atomic_open(paths["json"], "w", encoding="utf8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with atomic_open(paths["md"], "w", encoding="utf8") as f:
        f.write(markdown)
    return paths


# ------------------------------------------------------------------------------------ models
def write_meshes(models_dir: Path, obj_ids=OBJ_IDS) -> Path:
    """Procedural BOP models (``mrcnet.data.objects``, ids 1..max(obj_ids)) into ``models_dir``
    (which must be named ``models``)."""
    objects.write_objects(models_dir.parent, max(obj_ids), seed=0)
    return models_dir


def box_meshes(models_dir: Path, obj_ids) -> Path:
    """A unit-box mesh ``obj_XXXXXX.ply`` per id of ``obj_ids`` in ``models_dir`` (any ids, as a checkpoint's
    meta names them)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    for oid in obj_ids:
        write_box_ply(models_dir / f"obj_{oid:06d}.ply")
    return models_dir


def random_model(preset: str, n_obj: int = len(OBJ_IDS), seed: int = 0):
    """A random-weight MRCNet of ``preset`` for the ``synth`` objects (meta filled in)."""
    ds = get_dataset("synth")
    torch.manual_seed(seed)
    model = build_model(n_obj, ds.depth_range, preset).eval()
    model.meta = {"source": "project", "preset": preset, "dataset": "synth", "obj_ids": list(ds.obj_ids[:n_obj]),
                  "depth_range": list(ds.depth_range), "fov_variant": "inference", "n_obj": n_obj}
    return model


def save_random_checkpoint(model, path: Path) -> Path:
    """A random model (``random_model``) as a project checkpoint the exporter reads."""
    save_checkpoint(path, model, dataset="synth", obj_ids=model.meta["obj_ids"], fov_variant="inference")
    return Path(path)


# ----------------------------------------------------------------------------------- exports
@dataclass
class BenchExport:
    """The exports of one checkpoint a benchmark runs.

    ``onnx``: the fp32 ONNX export (``classifier.onnx`` / ``regressor.onnx``, the default export
    form); ``onnx_int8``: the ``--precision int8`` export (QDQ graphs ``*.int8.onnx``, quantised from
    the int8 export form, which may differ from the fp32 one), or None; ``tensorrt``: {precision:
    export with ``--backend tensorrt``}: that precision's graphs (``precision_graphs``) and, where
    TensorRT and a GPU exist, its engines.
    """

    onnx: Manifest
    tensorrt: dict = field(default_factory=dict)
    onnx_int8: Optional[Manifest] = None

    def precision_graph_paths(self, precision: str):
        """{graph: path} of a TensorRT precision graph (fp16 / int8) some export holds, else None."""
        for m in (*self.tensorrt.values(), self.onnx):
            files = m.precision_graphs.get(precision)
            if files and all(g in files and m.path(files[g]).is_file() for g in GRAPHS):
                return {g: m.path(files[g]) for g in GRAPHS}
        return None

    def fp32_graph_paths(self) -> dict:
        """{graph: path} of the fp32 ONNX graphs."""
        return {"classifier": self.onnx.path(CLASSIFIER_ONNX), "regressor": self.onnx.path(REGRESSOR_ONNX)}


def export_checkpoint(checkpoint, out_dir: Path, models_dir: Path, **kw):
    """``mrcnet.export.export_checkpoint`` with its ExportError as a BenchError."""
    try:
        return mx.export_checkpoint(checkpoint, out_dir, models_dir=models_dir, **kw)
    except mx.ExportError as e:
        raise BenchError(str(e)) from None


def export_for_benchmark(checkpoint, work_dir: Path, models_dir: Path, *, dataset: str | None = None,
                         tta: int = 4, int8: bool = True, tensorrt_precisions: Sequence[str] = (),
                         max_detections: int = 16, calib_count: int = 8,
                         say: Callable[[str], None] = print) -> BenchExport:
    """Export ``checkpoint`` with the real exporter as a user would: ``work_dir/export`` (fp32 ONNX),
    ``work_dir/export-int8`` when ``int8`` (``--precision int8``: QDQ graphs, synthetic calibration)
    and, per TensorRT precision, ``work_dir/export-tensorrt-<p>`` (its precision graphs; engines
    where TensorRT runs). ``tta``: crops per detection (4 or 1)."""
    t0 = time.perf_counter()
    onnx_dir = Path(work_dir) / "export"
    export_checkpoint(checkpoint, onnx_dir, models_dir, dataset=dataset, precision="fp32",
                      crops_per_detection=tta)
    say(f"exported ONNX to {onnx_dir} ({time.perf_counter() - t0:.1f} s)")
    int8_man = None
    if int8:
        t0 = time.perf_counter()
        int8_dir = Path(work_dir) / "export-int8"
        export_checkpoint(checkpoint, int8_dir, models_dir, dataset=dataset, precision="int8",
                          calib_count=calib_count, crops_per_detection=tta)
        int8_man = load_manifest(int8_dir)
        say(f"exported ONNX int8 to {int8_dir} ({time.perf_counter() - t0:.1f} s)")
    trt = {}
    for prec in tensorrt_precisions:
        t0 = time.perf_counter()
        d = Path(work_dir) / f"export-tensorrt-{prec}"
        res = export_checkpoint(checkpoint, d, models_dir, dataset=dataset, backend="tensorrt", precision=prec,
                                max_detections=max_detections, calib_count=calib_count)
        trt[prec] = load_manifest(d)
        say(f"exported TensorRT {prec} to {d} ({time.perf_counter() - t0:.1f} s)"
            + "".join(f"; {n}" for n in res.notes))
    return BenchExport(load_manifest(onnx_dir), trt, int8_man)


def open_backends(export: BenchExport, torch_model, keys: Sequence[str], device: str, threads: int) -> dict:
    """{key: backend} for the requested BACKEND_KEYS that this machine and the exports can run; a
    skipped key maps to the reason (str)."""
    out: dict = {}
    for key in keys:
        try:
            if key == "torch":
                if torch_model is None:
                    out[key] = "no checkpoint (--checkpoint) for the torch reference"
                    continue
                out[key] = TorchBackend(torch_model, device)
            elif key.startswith("ort-"):
                m = export.onnx if key == "ort-fp32" else export.onnx_int8
                if m is None:
                    out[key] = "no int8 export (quantisation not asked for)"
                    continue
                suffix = "" if key == "ort-fp32" else ".int8"
                c, r = m.path(f"classifier{suffix}.onnx"), m.path(f"regressor{suffix}.onnx")
                if not (c.is_file() and r.is_file()):
                    out[key] = f"export has no {c.name} / {r.name}"
                    continue
                kind = "onnxruntime-cpu" if device == "cpu" else "auto"
                out[key] = OnnxRuntimeBackend(c, r, providers=ort_providers(kind), threads=threads)
            else:
                prec = key.split("-", 1)[1]
                m = export.tensorrt.get(prec, export.onnx)
                if not tensorrt_usable():
                    out[key] = "TensorRT or a CUDA GPU is not available"
                elif prec not in m.engines:
                    out[key] = f"export has no TensorRT {prec} engines"
                else:
                    out[key] = TensorRTBackend.from_manifest(m, prec)
        except BackendError as e:
            out[key] = str(e)
    return out

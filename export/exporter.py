"""Checkpoint -> self-contained export directory (the library behind ``mrcnet-export``).

:func:`export_checkpoint` loads a checkpoint (official or project format), keeps the requested
objects, writes ``classifier.onnx`` / ``regressor.onnx`` (checked, shape-inferred, annotated), copies
the objects' BOP meshes into ``models/``, measures ORT-vs-PyTorch parity, optionally quantises to
int8 (ONNX Runtime, QDQ), or for ``--backend tensorrt`` writes the precision's graphs
(:func:`precision_graphs`: the fp16 graph, or the TensorRT-style int8 QDQ graph) and builds the
engines where TensorRT and a GPU exist (elsewhere a one-line note says to build them on the target
with ``--engines-only``), and writes ``manifest.json`` last (atomically), so a directory with a
manifest is always complete.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mrcnet import __version__
from mrcnet.runtime.datasets import BOP_PATH_ENV, DatasetPathError, find_dataset, render_models_dir
from mrcnet.runtime.errors import ParameterError, error_line
from mrcnet.runtime.formats.files import OutputError, atomic_copy, prepare_out_dir
from mrcnet.runtime.geometry import TTA_GROUP
from mrcnet.runtime.assets import DEMO_CHECKPOINT, DEMO_MODELS
from mrcnet.runtime.preprocess import BOX_RULES
from mrcnet.runtime.presets import get_dataset
from mrcnet.runtime.render.mesh import MeshError, load_mesh

from .manifest import (
    CLASSIFIER_ONNX,
    ENGINES_DIR,
    MODELS_DIR,
    REGRESSOR_ONNX,
    build_manifest,
    sha256_file,
    write_manifest,
)
from .tensorrt import EngineBuildError, TensorRTUnavailable, build_engines, check_precision, check_tensorrt

BACKENDS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(RuntimeError):
    """A user-facing export failure: one line naming the input (checkpoint, objects, models...)."""


class ExportParameterError(ExportError, ParameterError):
    """An ExportError about one parameter of :func:`export_checkpoint` (``param``; ``mrcnet-export``
    names it by its flag)."""

    __init__ = ParameterError.__init__
    __reduce__ = ParameterError.__reduce__


def as_export_error(e: Exception) -> ExportError:
    """``e`` as an ExportError, keeping the parameter it names (an ExportParameterError then)."""
    if isinstance(e, ParameterError):
        return ExportParameterError(e.param, e.detail, e.value)
    return ExportError(str(e))


def default_checkpoint() -> Path:
    """The shipped demo model's checkpoint (``mrcnet.runtime.manifest.DEMO_CHECKPOINT``)."""
    return DEMO_CHECKPOINT


def default_models_dir() -> Path:
    """The shipped demo's BOP models (``mrcnet.runtime.manifest.DEMO_MODELS``)."""
    return DEMO_MODELS


#: the dataset whose default checkpoint is the shipped demo model (the others: the official layout)
DEMO_DATASET = "synth"


def official_checkpoint(dataset: str, cwd=None) -> Path:
    """``chkpt_<dataset>/<dataset>.pth`` relative to ``cwd`` (default: the working directory), where
    the official README puts the released weights; :class:`ExportError` (one line: where it looked,
    what to pass) when it is not there."""
    path = Path("." if cwd is None else cwd) / f"chkpt_{dataset}" / f"{dataset}.pth"
    if not path.is_file():
        raise ExportParameterError("checkpoint", f"not given and no {path} (the official layout chkpt_{dataset}/"
                                   f"{dataset}.pth in {Path(path.parent.parent).resolve()}); pass {{checkpoint}} FILE")
    return path


def dataset_models_dir(dataset: str, env=None) -> Path:
    """The models folder the dataset renders with in the BOP root (``$BOP_PATH/<dataset>/``, the
    preset's folder, e.g. T-LESS ``models_cad``: :func:`mrcnet.runtime.datasets.render_models_dir`);
    :class:`ExportError` (one line: where it looked, what to pass) when it is not there."""
    try:
        return render_models_dir(find_dataset(dataset, env=env), dataset, None)
    except DatasetPathError as e:
        raise ExportParameterError("models_dir", f"not given and no {dataset} models (looked in {', '.join(e.looked)}); "
                                   f"pass {{models_dir}} DIR, or set {BOP_PATH_ENV} to the folder holding {dataset}/") from None


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    out_dir: Path
    obj_ids: list[int]
    files: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes
    n_params: dict[str, int] = field(default_factory=dict)
    parity: dict[str, dict] = field(default_factory=dict)
    engines: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # one-line notices for the user (CLI prints them)


def load_model(checkpoint, dataset: str | None, object_ids: Sequence[int] | None = None):
    """Load ``checkpoint`` with :func:`mrcnet.checkpoint.load_checkpoint`.

    A checkpoint holding fewer objects than the dataset preset (e.g. a 2-object model of T-LESS)
    loads only with ``object_ids`` naming its objects in order (as many ids as it has objects:
    ``load_checkpoint(..., obj_ids=object_ids)``). Returns the model (``model.meta['obj_ids']`` =
    its BOP ids).
    """
    # torch-backed: importing the exporter stays torch-free (mrcnet-export --engines-only)
    from mrcnet.checkpoint import CheckpointError, CheckpointFileError, load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise ExportParameterError("checkpoint", f"file not found: {path}")
    try:
        return load_checkpoint(path, dataset=dataset)
    except CheckpointFileError as e:
        raise ExportParameterError("checkpoint", e.detail, path) from None
    except CheckpointError as e:
        first_error = str(e)
    except Exception as e:  # anything else from a non-checkpoint file: one line, even for an empty message
        raise ExportParameterError("checkpoint", f"cannot load ({error_line(e, 200)})", path) from None
    if object_ids is None or dataset is None:
        hint = "" if object_ids is not None else " (a checkpoint with fewer objects than the preset needs {object_ids})"
        raise ExportParameterError("checkpoint", f"{first_error}{hint}", path)
    try:
        return load_checkpoint(path, dataset=dataset, obj_ids=list(object_ids))
    except CheckpointError as e:  # load_checkpoint's obj_ids is this function's object_ids
        second = str(e).replace("obj_ids", "{object_ids}")
        raise ExportParameterError("checkpoint", f"{first_error}; {second}", path) from None


def check_models(models_dir, obj_ids: Sequence[int]) -> Path:
    """The models folder holds a valid ``obj_XXXXXX.ply`` for each of ``obj_ids``: each mesh is
    loaded (:func:`mrcnet.runtime.render.mesh.load_mesh`), so one without faces, with NaN vertices
    or with bad face indices raises ExportError here, not later on the device."""
    src = Path(models_dir)
    if not src.is_dir():
        raise ExportParameterError("models_dir", f"folder not found: {src}")
    names = [f"obj_{int(i):06d}.ply" for i in obj_ids]
    missing = [n for n in names if not (src / n).is_file()]
    if missing:
        raise ExportParameterError("models_dir", f"missing {', '.join(missing)}", src)
    for n in names:
        try:
            load_mesh(src / n)
        except MeshError as e:
            raise ExportParameterError("models_dir", str(e)) from None
    return src


def copy_models(models_dir, obj_ids: Sequence[int], out_dir) -> list[Path]:
    """Copy ``obj_XXXXXX.ply`` of ``obj_ids`` (and ``models_info.json`` when present) from
    ``models_dir`` into ``out_dir/models/`` (each file atomically, readable as a normal file),
    after :func:`check_models`."""
    src = check_models(models_dir, obj_ids)
    names = [f"obj_{int(i):06d}.ply" for i in obj_ids]
    if (src / "models_info.json").is_file():
        names.append("models_info.json")
    dst = Path(out_dir) / MODELS_DIR
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        atomic_copy(src / n, dst / n)
        out.append(dst / n)
    return out


#: what an export directory may hold (anything else: --out is some other folder, e.g. a dataset)
EXPORT_ENTRIES = ("manifest.json", MODELS_DIR, ENGINES_DIR)


def check_export_dir(out_dir) -> Path:
    """``out_dir`` may be written by the exporter: missing, empty, or an export directory (only
    the export's files: ``*.onnx``, ``manifest.json``, ``models/``, ``engines/``, temporary
    files). Anything else (a BOP dataset, a home folder) raises ExportError naming it: the
    export would overwrite its ``models/``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportParameterError("out_dir", "exists and is not a folder", out)
    if not out.is_dir():
        return out
    foreign = sorted(p.name for p in out.iterdir()
                     if not (p.name in EXPORT_ENTRIES or p.suffix == ".onnx" or p.name.startswith(".")))
    if foreign:
        raise ExportParameterError("out_dir", f"not an export directory (holds {', '.join(foreign[:3])}"
                                   f"{'...' if len(foreign) > 3 else ''}); choose an empty or new folder", out)
    return out


def export_checkpoint(checkpoint, out_dir, *, dataset: str | None = None, object_ids: Sequence[int] | None = None,
                      models_dir=None, backend: str = "onnx", precision: str = "fp32", max_detections: int = 8,
                      calib_data=None, calib_split: str | None = None, calib_count: int = 32,
                      parity_detections: int = 2, progress: Callable[[str], None] | None = None,
                      box_rule: str | None = None, crops_per_detection: int = TTA_GROUP) -> ExportResult:
    """Export a checkpoint to ``out_dir`` (see the module docstring).

    dataset: preset name (depth range, object ids of an official checkpoint); object_ids: BOP ids
    to keep (None = all of the checkpoint's); models_dir: BOP models folder (default: the demo's);
    backend ``onnx`` | ``tensorrt``; precision ``fp32`` | ``fp16`` (TensorRT only) | ``int8``;
    max_detections: TensorRT profile maximum (N = 4 x detections); calib_data: BOP dataset root
    (or split folder) for int8 calibration crops; box_rule: how the runtime turns detection boxes
    into crop squares (``clip`` | ``official``; None = the checkpoint's, ``official`` for official
    checkpoints); crops_per_detection: the TTA group (4 in-plane rotations, the BatchNorm group of
    a detection; 1 = one crop per detection, ONNX only). Raises :class:`ExportError` (one line).
    """
    from mrcnet.checkpoint import normalise_fov_variant  # torch-backed, as in load_model

    # torch-backed, as in load_model
    from .onnx_export import export_onnx, onnx_param_count, onnx_parity, example_inputs
    from .optimize import condconv_form, optimize_for_export
    from mrcnet.model.subset import SubsetError, resolve_object_ids, subset_model

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    if backend not in BACKENDS:
        raise ExportParameterError("backend", f"{backend!r} is not one of {BACKENDS}")
    if precision not in PRECISIONS:
        raise ExportParameterError("precision", f"{precision!r} is not one of {PRECISIONS}")
    if backend == "onnx" and precision == "fp16":
        raise ExportParameterError("precision", "needs {backend} tensorrt (ONNX Runtime CPU graphs are fp32 or int8)", "fp16")

    if box_rule is not None and box_rule not in BOX_RULES:
        raise ExportParameterError("box_rule", f"{box_rule!r} is not one of {BOX_RULES}")
    if max_detections < 1:
        raise ExportParameterError("max_detections", "must be >= 1", max_detections)
    if crops_per_detection not in (1, TTA_GROUP) or (crops_per_detection != TTA_GROUP and backend != "onnx"):
        raise ExportParameterError("crops_per_detection", f"must be {TTA_GROUP} (or 1 with {{backend}} onnx)",
                                   crops_per_detection)
    out = check_export_dir(out_dir)  # before anything slow: never write into a dataset or home folder
    try:
        prepare_out_dir(out)
    except OutputError as e:
        raise ExportError(str(e)) from None
    trt_missing = None
    if backend == "tensorrt":  # without TensorRT the precision graphs are written, engines built on the target

        try:
            check_precision(precision, check_tensorrt())
        except TensorRTUnavailable as e:
            trt_missing = str(e).split(": ", 1)[-1]
        except EngineBuildError as e:
            raise as_export_error(e) from None
    if dataset is not None:
        try:
            get_dataset(dataset)
        except KeyError as e:
            raise ExportParameterError("dataset", str(e.args[0])) from None

    ckpt_path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    say(f"loading {ckpt_path}")
    model = load_model(ckpt_path, dataset, object_ids)
    meta = model.meta
    try:
        keep = resolve_object_ids(object_ids, meta["obj_ids"])
    except SubsetError as e:
        raise ExportParameterError(e.param, e.detail, e.value) from None
    n_full = sum(p.numel() for p in model.parameters())
    if keep != list(meta["obj_ids"]):
        idx = [list(meta["obj_ids"]).index(i) for i in keep]
        say(f"keeping objects {keep} of {list(meta['obj_ids'])}")
        model = subset_model(model, idx, inplace=True)
    model.set_bn_group(crops_per_detection)
    target = "onnxruntime" if backend == "onnx" else "tensorrt"
    condconv = condconv_form(len(keep), target=target)
    optimize_for_export(model, condconv=condconv, target=target)
    models_src = check_models(models_dir if models_dir is not None else default_models_dir(), keep)
    stale = out / "manifest.json"
    if stale.exists():  # the manifest is written last: none while the directory is incomplete
        stale.unlink()
    copied = copy_models(models_src, keep, out)
    say(f"copied {len(copied)} model file(s) from {models_src}")

    manifest = build_manifest(
        dataset=meta.get("dataset") or dataset or "", preset=meta["preset"], obj_ids=keep,
        depth_range=meta["depth_range"], bins=model.cfg.bins,
        fov_variant=normalise_fov_variant(meta.get("fov_variant", "inference")),
        crop_size=model.cfg.crop_size, bn_group=crops_per_detection, n_rot=crops_per_detection,
        project_version=__version__,
        checkpoint_sha256=sha256_file(ckpt_path), box_rule=box_rule or meta.get("box_rule", "clip"))
    res = ExportResult(out, keep)
    paths = export_onnx(model, out, manifest, progress=say)
    res.files.update(paths)
    res.n_params = {"checkpoint": int(n_full), "exported_model": int(sum(p.numel() for p in model.parameters())),
                    **{g: onnx_param_count(p) for g, p in paths.items()}}

    n_crop = crops_per_detection * max(1, parity_detections)
    feeds = example_inputs(len(keep), n_crop, seed=1, crop_size=model.cfg.crop_size)
    res.parity["onnxruntime_fp32"] = onnx_parity(model, paths, feeds)
    say("parity ORT fp32 vs torch: max rel. error %.2e, argmax agreement %.3f"
        % (res.parity["onnxruntime_fp32"]["max"], res.parity["onnxruntime_fp32"]["argmax_agree"]))

    extras = {"condconv_form": condconv}  # engines_for_export refuses the ONNX Runtime-only "sorted" form
    if backend == "onnx" and precision == "int8":
        # imports onnx (the train extra): importing the exporter must not (--engines-only on a Jetson)
        from .quantize import calibration_feeds, quantize_graphs, quant_agreement

        calib = calibration_feeds(model, manifest, calib_data, split=calib_split, count=calib_count,
                                  models_dir=out / MODELS_DIR, progress=say)
        qpaths = quantize_graphs(paths, calib, progress=say)
        res.files.update({f"{g}_int8": p for g, p in qpaths.items()})
        res.parity["onnxruntime_int8"] = quant_agreement(paths, qpaths, calib.held_out)
        manifest.classifier.onnx = qpaths["classifier"].name
        manifest.regressor.onnx = qpaths["regressor"].name
        extras["onnx_fp32"] = {"classifier": CLASSIFIER_ONNX, "regressor": REGRESSOR_ONNX}
        extras["calibration"] = calib.describe()
    elif backend == "tensorrt":
        graphs = {"fp32": paths}
        if precision != "fp32":
            graphs[precision], res.parity[f"onnxruntime_{precision}_graph"], calib = precision_graphs(
                model, manifest, paths, precision, feeds, out, calib_data=calib_data, calib_split=calib_split,
                calib_count=calib_count, progress=say)
            res.files.update({f"{g}_{precision}": p for g, p in graphs[precision].items()})
            extras["precision_graphs"] = {precision: {g: p.name for g, p in graphs[precision].items()}}
            if calib is not None:
                extras["calibration"] = calib.describe()
        if trt_missing:
            res.notes.append(f"{trt_missing.split(' (')[0]} here: {precision} graphs written, no engines; build them "
                             f"on the target GPU with: mrcnet-export --engines-only --precision {precision} --out {out}")
        else:
            try:
                entry, parity = build_engines(graphs, out, precision=precision, max_detections=max_detections,
                                              check_feeds=feeds, progress=say)
            except (EngineBuildError, ValueError) as e:
                raise as_export_error(e) from None
            manifest.engines[precision] = entry
            res.engines[precision] = entry
            res.parity[f"tensorrt_{precision}"] = parity
    for k, p in res.files.items():
        res.sizes[k] = Path(p).stat().st_size
    res.seconds = time.perf_counter() - t0
    write_manifest(out, manifest, parity=res.parity, n_params=res.n_params,
                   sizes_bytes={k: int(v) for k, v in res.sizes.items()}, **extras)
    res.files["manifest"] = out / "manifest.json"
    return res


def precision_graphs(model, manifest, paths, precision: str, feeds, out_dir, *, calib_data=None,
                     calib_split: str | None = None, calib_count: int = 32, progress=None):
    """Write the TensorRT graphs of ``precision`` next to the fp32 ``paths`` and check them under ONNX
    Runtime CPU against the fp32 graphs. Returns ({graph: path}, agreement figures, CalibrationSet
    or None).

    fp16: :func:`mrcnet.export.fp16.convert_graphs` (``<graph>.fp16.onnx``); the check runs the
    float32 stand-in that rounds to float16 at the same points (ONNX Runtime CPU lacks float16
    kernels), on ``feeds``. int8: calibration crops (``calib_data`` or synthetic renderings) and
    TensorRT-style symmetric QDQ (``<graph>.trt-int8.onnx``), checked on the held-out detections."""
    from .quantize import calibration_feeds, quant_agreement, quantize_graphs  # imports onnx, as above

    say = progress or (lambda msg: None)
    if precision == "fp16":
        # onnx: the train extra (this module is imported on a Jetson for --engines-only)
        from .fp16 import convert_graphs

        out = convert_graphs(paths)
        with tempfile.TemporaryDirectory(prefix=".fp16emu.", dir=out_dir) as td:
            emu = convert_graphs(paths, emulate=True, folder=td)
            fig = quant_agreement(paths, emu, feeds)
        fig["check"] = "float32 graph rounded to float16 at the fp16 graph's points (ONNX Runtime CPU)"
        say(f"fp16 graphs: {', '.join(p.name for p in out.values())}")
        return out, fig, None
    calib = calibration_feeds(model, manifest, calib_data, split=calib_split, count=calib_count,
                              models_dir=Path(out_dir) / MODELS_DIR, progress=say)
    out = quantize_graphs(paths, calib, progress=say, style="tensorrt")
    fig = quant_agreement(paths, out, calib.held_out)
    return out, fig, calib


"""Static int8 quantisation (ONNX Runtime QDQ) and the calibration data shared with TensorRT int8.

Calibration crops (:func:`calibration_feeds`):

1. real crops from a BOP split (``--calib-data``: a dataset root, with ``--calib-split`` or the
   first split folder holding annotated scenes, or a split folder itself): every visible instance
   (``visib_fract >= 0.1``) of an exported object, box = ``bbox_visib``, preprocessed exactly as the
   runtime does (:func:`mrcnet.runtime.preprocess.prepare_detection`: ``TTA_GROUP`` = 4 in-plane rotations);
2. fallback without ``--calib-data``: synthetic crops — each exported mesh rendered at random
   poses (head-light Phong, :mod:`mrcnet.runtime.render`) over random-noise backgrounds, box = the
   render's mask box.

Stage-2 calibration inputs are what the runtime feeds the regressor: the classifier's tensors (from
the PyTorch model) and the rendering at the stage-1 pose with ``K_roi``. A quarter of the
detections (at least one) is held out for :func:`quant_agreement`.

Quantisation (:func:`quantize_graphs`): ``onnxruntime.quantization.quantize_static``, QDQ format,
Conv, MatMul and Gemm quantised, MinMax calibration over batches of one detection (4 crops:
BatchNorm groups), in one of two styles (:data:`QUANT_STYLES`; every key can be overridden per call):

- ``onnxruntime`` (``<graph>.int8.onnx``, the ONNX Runtime CPU graph): uint8 activations with
  zero points, int8 per-channel weights, int32 biases (U8S8, the VNNI path of x86 CPUs). ONNX
  Runtime fuses every ``DQ -> Conv -> Q`` into ``QLinearConv``, the heads into ``QGemm`` and the
  correlations into ``QLinearMatMul`` (:func:`optimized_op_counts` shows it). Chosen by
  measurement (``benchmarks/int8_variants.py``, AVX-512 VNNI CPU): int8 (S8S8) activations are not
  fused on x86 unless the session sets ``session.qdqisint8allowed``, and then run 4x slower than
  U8S8; per-tensor weights and 7-bit ranges (``reduce_range``) buy no speed with VNNI; quantising the
  residual Adds / Concats as well (``residual_adds``) added Q/DQ pairs and error; the QOperator
  format was slower. What stays float between the int8 convolutions is the batch-statistics
  normalisation, exported as one InstanceNormalization per layer
  (:class:`mrcnet.export.optimize.InstanceGroupBatchNorm2d`);
- ``tensorrt`` (``<graph>.trt-int8.onnx``, TensorRT explicit quantisation): symmetric int8 (zero
  point 0) activations and per-channel weights, biases left in float32, Percentile (99.99 %)
  calibration; besides the pose geometry, the layers the fp16 graph keeps in float32
  (:func:`mrcnet.export.fp16.fp32_nodes`: normalisation statistics, argmax / score path) and the
  heads (:data:`HEAD_SCOPES`) are not quantised. :func:`mrcnet.export.trt_support.check_qdq`
  verifies the result.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from mrcnet.data.bop import BopDataset, BopFormatError, scene_dirs, split_folders
from mrcnet.data.samples import MIN_BOX_PX, MIN_VISIB_FRACT  # the training rule (docs/MODEL.md §5), one place
from mrcnet.runtime.errors import ParameterError, error_line
from mrcnet.runtime.geometry import TTA_GROUP
from mrcnet.runtime.pipeline import render_inputs
from mrcnet.runtime.preprocess import mask_box_xyxy, prepare_detection
from mrcnet.runtime.render import Renderer, load_mesh
from mrcnet.runtime.rotations import random_rotation, rotation_angle_deg

from .fp16 import fp32_nodes
from .manifest import CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, REGRESSOR_INPUTS

log = logging.getLogger(__name__)


class CalibrationError(RuntimeError):
    """No usable calibration data (one line naming the input)."""


class CalibrationParameterError(CalibrationError, ParameterError):
    """A CalibrationError about one parameter (``calib_data``, ``calib_split``)."""

    __init__ = ParameterError.__init__
    __reduce__ = ParameterError.__reduce__


@dataclass
class CalibrationSet:
    """Calibration feeds, one dict per detection (4 crops): ``feeds`` hold the classifier inputs,
    ``render`` and the classifier outputs; ``held_out`` the concatenated held-out detections."""

    feeds: list[dict]
    held_out: dict
    source: str
    n_detections: int
    sha256: str = ""
    obj_counts: dict = field(default_factory=dict)

    def classifier_batches(self) -> list[dict]:
        return [{k: f[k] for k in CLASSIFIER_INPUTS} for f in self.feeds]

    def regressor_batches(self) -> list[dict]:
        return [{k: f[k] for k in REGRESSOR_INPUTS} for f in self.feeds]

    def describe(self) -> dict:
        return {"source": self.source, "detections": self.n_detections, "held_out_detections":
                len(self.held_out["crops"]) // TTA_GROUP, "objects": self.obj_counts, "sha256": self.sha256}


# ------------------------------------------------------------------------------- detections
def _find_split(root: Path, split: str | None) -> tuple[Path, str]:
    """(dataset root, split folder name) of ``root`` (a dataset root or a split folder)."""
    if split:
        if not (root / split).is_dir():
            raise CalibrationParameterError("calib_split", f"{root / split} not found")
        return root, split
    if scene_dirs(root):  # a split folder itself
        return root.parent, root.name
    prefer = ("test_primesense", "test", "val", "train_real", "train_pbr", "train")
    cands = split_folders(root)
    if not cands:
        raise CalibrationParameterError("calib_data", "no BOP split folder (with scene folders) found", root)
    cands.sort(key=lambda n: prefer.index(n) if n in prefer else len(prefer))
    return root, cands[0]


def bop_detections(calib_data, obj_ids: Sequence[int], count: int, split: str | None = None, models_dir=None):
    """Up to ``count`` (image, K, box_xyxy, obj_id) of exported objects from a BOP split, spread
    evenly over the split's visible instances."""
    root = Path(calib_data)
    if not root.is_dir():
        raise CalibrationParameterError("calib_data", f"folder not found: {root}")
    root, split_name = _find_split(root, split)
    models = "models"
    if not (root / "models" / "models_info.json").is_file() and models_dir is not None:
        models = str(Path(models_dir).resolve())
    try:
        ds = BopDataset(root, split_name, models=models)
    except BopFormatError as e:
        raise CalibrationParameterError("calib_data", str(e)) from None
    wanted = set(int(i) for i in obj_ids)
    rows = [(rec, inst) for rec, inst in ds.instances(MIN_VISIB_FRACT) if inst.obj_id in wanted
            and inst.info is not None and inst.info.get("bbox_visib") is not None
            and min(inst.info["bbox_visib"][2:]) > MIN_BOX_PX]
    if not rows:
        raise CalibrationParameterError("calib_data", f"no visible instance of objects {sorted(wanted)}", root / split_name)
    pick = np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int))
    out, cache = [], {}
    for i in pick:
        rec, inst = rows[i]
        key = (rec.scene_id, rec.im_id)
        if key not in cache:
            cache.clear()
            cache[key] = rec.load_image("bgr")
        x, y, w, h = inst.info["bbox_visib"]
        out.append((cache[key], rec.K, np.array([x, y, x + w, y + h], float), inst.obj_id))
    return out, f"BOP {root.name}/{split_name} ({len(rows)} visible instances)"


def synthetic_detections(renderer, obj_ids: Sequence[int], count: int, seed: int = 0, width: int = 640,
                         height: int = 480, depth_range=(0.3, 1.0)):
    """``count`` synthetic (image, K, box, obj_id): a mesh at a random pose over a noise background.

    depth_range: t_z in units of the focal length / 1000 (so about 300..1000 mm at f = 1000 px)."""
    rng = np.random.default_rng(seed)
    f = 1000.0 * width / 1280.0 * 2
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    out = []
    tries = 0
    while len(out) < count and tries < 20 * count:
        tries += 1
        oid = int(obj_ids[len(out) % len(obj_ids)])
        R = random_rotation(rng)
        tz = rng.uniform(*depth_range) * f
        t = np.array([rng.uniform(-0.15, 0.15) * tz, rng.uniform(-0.1, 0.1) * tz, tz])
        res = renderer.render([oid], R[None], t[None], K, width=width, height=height)
        mask = res.mask[0]
        if mask.sum() < 200:
            continue
        bg = rng.uniform(0, 255, (height // 8, width // 8, 3)).astype(np.float32)
        bg = np.kron(bg, np.ones((8, 8, 1), np.float32)) * rng.uniform(0.3, 1.0)
        img = np.where(mask[..., None], res.rgb[0][..., ::-1] * 255.0, bg).astype(np.float32)
        out.append((img, K, mask_box_xyxy(mask), oid))
    if not out:
        raise CalibrationError("synthetic calibration: the meshes are not visible in any rendering")
    return out, f"synthetic renderings ({len(out)} views)"


def calibration_feeds(model, manifest, calib_data=None, *, split: str | None = None, count: int = 32,
                      models_dir=None, seed: int = 0, progress: Callable[[str], None] | None = None) -> CalibrationSet:
    """Build the :class:`CalibrationSet` for ``model`` (PyTorch, the exported objects) and its manifest."""
    import torch  # torch only here: trt_support and mrcnet.export.tensorrt (Jetson) import this module torch-free

    from .onnx_export import ClassifierGraph  # imports torch, as above

    say = progress or (lambda m: None)
    obj_ids = list(manifest.obj_ids)
    models_dir = Path(models_dir) if models_dir is not None else manifest.path(manifest.models_dir)
    renderer = Renderer()
    for oid in obj_ids:
        renderer.add_object(oid, load_mesh(models_dir / f"obj_{oid:06d}.ply"))
    count = max(2, int(count))
    if calib_data is not None:
        dets, source = bop_detections(calib_data, obj_ids, count, split, models_dir)
    else:
        dets, source = synthetic_detections(renderer, obj_ids, count, seed)
    say(f"calibration: {len(dets)} detections from {source}")
    feeds, counts = [], {}
    h = hashlib.sha256()
    for img, K, box, oid in dets:
        b = prepare_detection(img, K, box, TTA_GROUP, manifest.fov_variant, manifest.crop_size,
                              box_rule=manifest.box_rule)
        f = {"crops": b.crops.astype(np.float32), "obj_index": np.full(TTA_GROUP, obj_ids.index(oid), np.int64),
             "fov": b.fov.astype(np.float32), "K_roi": b.K_roi.astype(np.float32)}
        with torch.no_grad():
            s1 = ClassifierGraph(model)(*(torch.from_numpy(f[k]) for k in CLASSIFIER_INPUTS))
        f.update({k: v.numpy() for k, v in zip(CLASSIFIER_OUTPUTS, s1)})
        f["render"] = render_inputs(renderer, obj_ids, f["obj_index"], f["R_init"], f["t_init"], f["K_roi"],
                                    manifest.crop_size)
        h.update(f["crops"].tobytes()[:: 4096])
        feeds.append(f)
        counts[oid] = counts.get(oid, 0) + 1
    n_hold = max(1, len(feeds) // 4)
    held = {k: np.concatenate([f[k] for f in feeds[-n_hold:]]) for k in (*CLASSIFIER_INPUTS, "render")}
    return CalibrationSet(feeds[:-n_hold], held, source, len(feeds), h.hexdigest(), counts)


# ------------------------------------------------------------------------------ quantisation
#: module scopes of the heads kept in float by the TensorRT style: the fully connected layers that
#: produce the logits / residuals and the decoder's output convolution. With symmetric int8 there,
#: the demo model's stage-2 translation moved by 12.6 mm (median, held-out synthetic crops) against
#: 2.8 mm with them in float (Percentile calibration; see README "Accuracy parity").
HEAD_SCOPES = ("linear1/", "linear2/", "conv_last/")

class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, batches: Sequence[Mapping[str, np.ndarray]]):
        from onnxruntime.quantization import CalibrationDataReader  # onnxruntime: an optional extra (cpu / gpu)

        class R(CalibrationDataReader):
            def __init__(self):
                self.it = iter(batches)

            def get_next(self):
                return next(self.it, None)

            def rewind(self):
                self.it = iter(batches)

        self.reader = R()


def geometry_nodes(model_path, min_k: int = 16) -> list[str]:
    """MatMul nodes that are pose geometry, not network layers: contracted dimension known and
    < ``min_k`` (e.g. ``R6D @ R_init``, (N,3,3) x (N,3,3)), or unknown and outside every module scope
    (the TorchScript exporter names layer nodes ``/module/path/MatMul``; the decoding functions'
    nodes have no scope: ``/MatMul``). Quantising them would break the rotations."""
    m = onnx.load(str(model_path), load_external_data=False)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    out = []
    for n in m.graph.node:
        if n.op_type != "MatMul":
            continue
        b = shapes.get(n.input[1])
        k = b[-2] if b and len(b) >= 2 else None
        scoped = n.name.count("/") >= 2
        if (k is not None and k < min_k) or (k is None and not scoped):
            out.append(n.name)
    return out


#: quantisation styles: file suffix, activation / weight types, activation symmetry, bias
#: quantisation, calibration (MinMax, or Percentile with ``CalibPercentile``), module scopes left in
#: float, the op types quantised, per-channel weights, 7-bit ranges, the ONNX format (``QDQ`` or
#: ``QOperator``) and ``residual_adds`` (also quantise the Adds and Concats of two activations so
#: the chains between convolutions stay int8). Every key can be overridden per call
#: (:func:`quantize_graph` ``options``; ``benchmarks/int8_variants.py`` measures the variants).
QUANT_STYLES = {
    "onnxruntime": {"suffix": "int8", "activation": "QUInt8", "weight": "QInt8", "ActivationSymmetric": False,
                    "QuantizeBias": True, "calibration": "MinMax", "float_scopes": (),
                    "op_types": ("Conv", "MatMul", "Gemm"), "per_channel": True, "reduce_range": False,
                    "format": "QDQ", "residual_adds": False},
    "tensorrt": {"suffix": "trt-int8", "activation": "QInt8", "weight": "QInt8", "ActivationSymmetric": True,
                 "QuantizeBias": False, "calibration": "Percentile", "CalibPercentile": 99.99,
                 "float_scopes": HEAD_SCOPES, "op_types": ("Conv", "MatMul", "Gemm"), "per_channel": True,
                 "reduce_range": False, "format": "QDQ", "residual_adds": False},
}


def _excluded_nodes(model_path, style: str, float_scopes: Sequence[str] = ()) -> list[str]:
    """Nodes left in float: the geometry MatMuls, the nodes under ``float_scopes``; for TensorRT
    also the fp16 graph's float32 set."""
    out = set(geometry_nodes(model_path))
    m = onnx.load(str(model_path), load_external_data=False)
    out |= {n.name for n in m.graph.node if any(f"/{s}" in n.name for s in float_scopes)}
    if style == "tensorrt":
        out |= fp32_nodes(m)
    return sorted(out)


def activation_joins(model_path) -> list[str]:
    """Add and Concat nodes whose inputs are all activations (no initializer / Constant): the
    residual sums and the feature concatenations between convolutions, not the normalisation's
    ``var + eps`` / ``x * w + b`` (one constant input each)."""
    m = onnx.load(str(model_path), load_external_data=False)
    consts = {t.name for t in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in m.graph.node if n.op_type in ("Add", "Concat") and len(n.input) >= 2
            and not any(i in consts for i in n.input)]


def quantize_graph(fp32_path, int8_path, batches: Sequence[Mapping[str, np.ndarray]],
                   op_types: Sequence[str] | None = None, style: str = "onnxruntime",
                   options: Mapping | None = None) -> Path:
    """Static quantisation of one graph in ``style`` (see the module docstring), ``options``
    overriding the style's keys (:data:`QUANT_STYLES`); atomic write. The pose geometry MatMuls
    (:func:`geometry_nodes`) stay float."""
    # onnxruntime: an optional extra (cpu / gpu; not in gpu-trt11)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if style not in QUANT_STYLES:
        raise ValueError(f"quantisation style {style!r} is not one of {sorted(QUANT_STYLES)}")
    st = {**QUANT_STYLES[style], **(options or {})}
    unknown = set(options or {}) - set(QUANT_STYLES[style]) - {"CalibPercentile"}
    if unknown:
        raise ValueError(f"quantisation options: unknown keys {sorted(unknown)}")
    ops = list(op_types or st["op_types"])
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as td:
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # pre-processing is an optimisation; quantise the raw graph then
            log.warning("quant_pre_process failed (%s); quantising the raw graph", error_line(e))
            pre = Path(fp32_path)
        excluded = _excluded_nodes(pre, style, st["float_scopes"])
        nodes = None
        if st["residual_adds"]:  # the listed op types plus the activation joins, nothing else
            m = onnx.load(str(pre), load_external_data=False)
            nodes = [n.name for n in m.graph.node if n.op_type in ops] + activation_joins(pre)
            ops = sorted(set(ops) | {"Add", "Concat"})
        tmp = Path(td) / "q.onnx"
        quantize_static(str(pre), str(tmp), _Reader(batches).reader,
                        quant_format=getattr(QuantFormat, st["format"]),
                        nodes_to_quantize=nodes, nodes_to_exclude=excluded,
                        activation_type=getattr(QuantType, st["activation"]),
                        weight_type=getattr(QuantType, st["weight"]),
                        per_channel=st["per_channel"], reduce_range=st["reduce_range"], op_types_to_quantize=ops,
                        calibrate_method=getattr(CalibrationMethod, st["calibration"]),
                        extra_options={"ActivationSymmetric": st["ActivationSymmetric"], "WeightSymmetric": True,
                                       "QuantizeBias": st["QuantizeBias"],
                                       **({"CalibPercentile": st["CalibPercentile"]} if "CalibPercentile" in st
                                          else {})})
        os.replace(tmp, int8_path)
    return int8_path


def quantize_graphs(paths: Mapping[str, Path], calib: CalibrationSet,
                    progress: Callable[[str], None] | None = None, style: str = "onnxruntime") -> dict[str, Path]:
    """``classifier.int8.onnx`` and ``regressor.int8.onnx`` next to the fp32 graphs (``style``
    ``tensorrt``: ``classifier.trt-int8.onnx`` and ``regressor.trt-int8.onnx``)."""
    say = progress or (lambda m: None)
    out = {}
    suffix = QUANT_STYLES[style]["suffix"] if style in QUANT_STYLES else style
    for graph, batches in (("classifier", calib.classifier_batches()), ("regressor", calib.regressor_batches())):
        t0 = time.perf_counter()
        p = Path(paths[graph])
        out[graph] = quantize_graph(p, p.with_name(f"{graph}.{suffix}.onnx"), batches, style=style)
        say(f"quantised {graph}: {out[graph].name} ({out[graph].stat().st_size / 2**20:.1f} MiB, "
            f"{time.perf_counter() - t0:.0f} s)")
    return out


def quant_agreement(fp32_paths: Mapping[str, Path], int8_paths: Mapping[str, Path], feeds: Mapping[str, np.ndarray],
                    threads: int | None = None, reference: Mapping[str, np.ndarray] | None = None) -> dict:
    """int8 vs fp32 ONNX Runtime on held-out detections (both chained stage 1 -> 2, the same
    renders): argmax agreement per head, logits error, final rotation / translation differences.
    ``reference``: the fp32 outputs on ``feeds`` when already computed (then ``fp32_paths`` is unused)."""
    from .onnx_export import ort_session, run_ort  # imports torch (this module is torch-free)

    ref = reference if reference is not None else run_ort(
        {g: ort_session(p, threads) for g, p in fp32_paths.items()}, feeds)
    got = run_ort({g: ort_session(p, threads) for g, p in int8_paths.items()}, feeds)
    return output_agreement(ref, got)


def output_agreement(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict:
    """Chained outputs ``got`` against ``ref`` (same crops): argmax agreement per head, pose logits
    relative error, median rotation (degrees) / translation (mm) differences, shares within 5 deg / 5 mm."""
    from .onnx_export import rel_err  # imports torch (this module is torch-free)

    out = {f"{k}_argmax_agree": float((got[k].argmax(1) == ref[k].argmax(1)).mean())
           for k in ("pose_logits", "depth_logits", "trans_logits")}
    out["pose_logits_err"] = rel_err(got["pose_logits"], ref["pose_logits"])
    ang = rotation_angle_deg(got["R"], ref["R"])
    dt = np.linalg.norm(got["t"] - ref["t"], axis=-1)
    out["rot_diff_deg_median"] = float(np.median(ang))
    out["t_diff_mm_median"] = float(np.median(dt))
    out["rot_agree_5deg"] = float((ang < 5).mean())
    out["t_agree_5mm"] = float((dt < 5).mean())
    out["crops"] = int(len(ref["R"]))
    return out


def optimized_op_counts(path, session_config: Mapping[str, str] | None = None) -> dict[str, int]:
    """{op type: count} of ``path`` after ONNX Runtime CPU's graph optimisations (all levels, the
    QDQ fusions: ``DequantizeLinear -> Conv -> QuantizeLinear`` becomes ``QLinearConv``, etc.), read
    from the optimised model ORT writes (``SessionOptions.optimized_model_filepath``)."""
    import onnxruntime as ort  # an optional extra (cpu / gpu; not in gpu-trt11)

    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        for k, v in (session_config or {}).items():
            so.add_session_config_entry(k, v)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath, load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts

"""PyTorch MRC-Net -> two ONNX graphs (classifier = stage 1, regressor = stage 2), checked and annotated.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. With torch 2.13 the default
is the torch.export-based exporter, which needs ``onnxscript`` (not a project dependency); the
TorchScript exporter gives a clean opset-17 graph with a dynamic batch (Conv, MatMul, Gather,
Pad/Slice, ReduceMean...; no custom ops) in well under a second for the small preset.

Graph names and shapes are those of :mod:`mrcnet.export.manifest` (``CLASSIFIER_INPUTS`` ...).
N (crops) is dynamic and must be a multiple of the model's ``bn_group`` (4: BatchNorm statistics per
detection's TTA group); the detections of one batch may be of different objects.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper
from torch import Tensor

from mrcnet.inference import TorchBackend
from mrcnet.runtime.backends import OnnxRuntimeBackend, compare_backends, rel_err, run_backend  # noqa: F401  (rel_err: re-exported)
from mrcnet.runtime.formats.files import atomic_open
from mrcnet.runtime.geometry import TTA_GROUP

from .manifest import (
    CLASSIFIER_INPUTS,
    CLASSIFIER_ONNX,
    CLASSIFIER_OUTPUTS,
    REGRESSOR_INPUTS,
    REGRESSOR_ONNX,
    REGRESSOR_OUTPUTS,
    metadata_props,
)

OPSET = 17


class ClassifierGraph(nn.Module):
    """Stage 1 with the contract I/O: ``forward(crops, obj_index, fov, K_roi)`` -> the tuple
    ``CLASSIFIER_OUTPUTS`` of ``model.stage1``. Shapes: crops (N,4,S,S) f32, obj_index (N,) int64,
    fov (N,3) f32, K_roi (N,3,3) f32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, crops: Tensor, obj_index: Tensor, fov: Tensor, K_roi: Tensor):
        out = self.model.stage1(crops, obj_index, fov, K_roi)
        return tuple(out[k] for k in CLASSIFIER_OUTPUTS)


class RegressorGraph(nn.Module):
    """Stage 2 with the contract I/O: ``forward(*REGRESSOR_INPUTS)`` -> (R (N,3,3), t (N,3) mm,
    persp (N,3)) per crop, in the rotated crop frame."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, render: Tensor, obj_index: Tensor, fov: Tensor, K_roi: Tensor, feat_x4: Tensor,
                feat_x8: Tensor, feat_x16: Tensor, R_init: Tensor, t_init: Tensor, persp_init: Tensor):
        out = self.model.stage2(render, obj_index, fov, K_roi, feat_x4, feat_x8, feat_x16, R_init, t_init,
                                persp_init)
        return tuple(out[k] for k in REGRESSOR_OUTPUTS)


# ------------------------------------------------------------------------------------- inputs
def example_inputs(n_obj: int, n: int = TTA_GROUP, obj_index: Sequence[int] | None = None, seed: int = 0,
                   crop_size: int = 256) -> dict[str, np.ndarray]:
    """Plausible classifier inputs (numpy, the graph dtypes) for ``n`` crops (a multiple of ``TTA_GROUP``, 4).

    crops: uniform BGR noise + a box map (1 inside a box around the centre); obj_index: given, or
    detection g uses object ``g % n_obj``; fov (N,3) small offsets and a size ratio; K_roi (N,3,3)
    crop cameras with fx, fy ~ 700 px and the principal point near the crop centre.
    Also returns ``render`` (N,4,S,S): a second, independent image batch for stage 2.
    """
    rng = np.random.default_rng(seed)
    s = crop_size
    crops = rng.random((n, 4, s, s), dtype=np.float32)
    crops[:, 3] = 0.0
    crops[:, 3, s // 6: 5 * s // 6, s // 6: 5 * s // 6] = 1.0
    render = rng.random((n, 4, s, s), dtype=np.float32) * 0.7
    render[:, 3] = 0.0
    render[:, 3, s // 5: 4 * s // 5, s // 5: 4 * s // 5] = 1.0
    if obj_index is None:
        obj_index = [(i // TTA_GROUP) % n_obj for i in range(n)]
    obj = np.asarray(obj_index, dtype=np.int64)
    if obj.shape != (n,):
        raise ValueError(f"obj_index: expected {n} entries, got {obj.shape}")
    fov = np.stack([rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.1, 0.4, n)], 1)
    K = np.zeros((n, 3, 3), np.float32)
    K[:, 0, 0] = rng.uniform(600, 800, n)
    K[:, 1, 1] = K[:, 0, 0] * rng.uniform(0.98, 1.02, n)
    K[:, 0, 2] = s / 2 + rng.uniform(-20, 20, n)
    K[:, 1, 2] = s / 2 + rng.uniform(-20, 20, n)
    K[:, 2, 2] = 1.0
    return {"crops": crops, "obj_index": obj, "fov": fov.astype(np.float32), "K_roi": K, "render": render}


def _torch_feeds(feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> tuple[Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in names)


def run_torch(model: nn.Module, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Both stages in PyTorch on numpy feeds (classifier inputs + ``render``): the classifier
    outputs, then the regressor outputs with the torch stage-1 tensors. Returns numpy arrays by name."""
    with torch.no_grad():
        s1 = ClassifierGraph(model)(*_torch_feeds(feeds, CLASSIFIER_INPUTS))
        out = {k: v.numpy() for k, v in zip(CLASSIFIER_OUTPUTS, s1)}
        reg_feeds = {**feeds, **out}
        s2 = RegressorGraph(model)(*_torch_feeds(reg_feeds, REGRESSOR_INPUTS))
        out.update({k: v.numpy() for k, v in zip(REGRESSOR_OUTPUTS, s2)})
    return out


# ------------------------------------------------------------------------------------- export
def _export_one(module: nn.Module, args: tuple, input_names, output_names, path: Path, opset: int) -> None:
    dyn = {k: {0: "N"} for k in (*input_names, *output_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation + constant-folding notes
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dyn, do_constant_folding=True)


def slim_graph(path: Path) -> dict[str, int]:
    """Constant folding, shape-op removal and dead-node elimination (onnxslim) on ``path``, in place:
    the export's Shape/Gather/Unsqueeze/Concat chains for static sizes, the Constants and the
    exporter's identity ops go; the arithmetic is kept, so the numbers are unchanged (the export
    parity checks this). Returns {"before": nodes, "after": nodes}."""
    import onnxslim  # onnxslim: slow to import (about 0.35 s), only for the clean-up

    m = onnx.load(str(path))
    before = len(m.graph.node)
    m = onnxslim.slim(m)
    onnx.save(m, str(path))
    return {"before": before, "after": len(m.graph.node)}


def _ensure_inputs(model_proto, input_names: Sequence[str], example: Mapping[str, np.ndarray]) -> None:
    """Re-declare contract inputs the exporter dropped because the graph does not read them (e.g.
    ``obj_index`` of a single-object subset), so every graph keeps the contract's inputs."""
    present = [i.name for i in model_proto.graph.input]
    for pos, name in enumerate(input_names):
        if name in present:
            continue
        arr = example[name]
        elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        shape = ["N"] + list(arr.shape[1:])
        vi = helper.make_tensor_value_info(name, elem, shape)
        model_proto.graph.input.insert(min(pos, len(model_proto.graph.input)), vi)


def finalize_graph(path: Path, manifest, graph: str, input_names: Sequence[str],
                   example: Mapping[str, np.ndarray]) -> None:
    """Add metadata_props (manifest facts), restore dropped inputs, infer shapes, run the full
    ``onnx.checker`` and rewrite ``path`` in place (atomically)."""
    m = onnx.load(str(path))
    _ensure_inputs(m, input_names, example)
    del m.metadata_props[:]
    for k, v in metadata_props(manifest, graph).items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name = "mrcnet-export"
    m.doc_string = f"MRC-Net {graph} ({manifest.dataset}, objects {manifest.obj_ids})"
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    with atomic_open(path, "wb") as f:
        f.write(m.SerializeToString())


def export_onnx(model: nn.Module, out_dir, manifest, *, example_n: int = 4, opset: int = OPSET,
                progress=None) -> dict[str, Path]:
    """Export ``model`` (an ``MRCNet``, BatchNorm group = manifest ``bn_group``) to
    ``out_dir/classifier.onnx`` and ``out_dir/regressor.onnx``.

    Each file is traced with ``example_n`` crops, written to a temporary name, slimmed
    (:func:`slim_graph`), annotated (:func:`finalize_graph`) and moved into place, so a failed
    export never leaves a partial graph.
    Returns {"classifier": path, "regressor": path}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    model = model.eval()
    if getattr(model, "bn_group", manifest.bn_group) != manifest.bn_group:
        model.set_bn_group(manifest.bn_group)
    feeds = example_inputs(model.n_obj, example_n, crop_size=manifest.crop_size)
    ref = run_torch(model, feeds)
    paths = {}
    specs = [
        ("classifier", ClassifierGraph(model), CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, CLASSIFIER_ONNX, feeds),
        ("regressor", RegressorGraph(model), REGRESSOR_INPUTS, REGRESSOR_OUTPUTS, REGRESSOR_ONNX,
         {**feeds, **ref}),
    ]
    for graph, module, ins, outs, name, example in specs:
        t0 = time.perf_counter()
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        tmp = Path(tmp)
        try:
            with torch.no_grad():
                _export_one(module, _torch_feeds(example, ins), ins, outs, tmp, opset)
            nodes = slim_graph(tmp)
            finalize_graph(tmp, manifest, graph, ins, example)
            os.replace(tmp, out_dir / name)
        finally:
            if tmp.exists():
                tmp.unlink()
        paths[graph] = out_dir / name
        say(f"exported {graph}: {out_dir / name} ({(out_dir / name).stat().st_size / 2**20:.1f} MiB, "
            f"{nodes['after']} nodes (slimmed from {nodes['before']}), {time.perf_counter() - t0:.1f} s)")
    return paths


# ---------------------------------------------------------------------------------- inspection
def onnx_param_count(path) -> int:
    """Number of weight elements (initializers) in an ONNX file."""
    m = onnx.load(str(path))
    return int(sum(int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer))


def read_metadata(path) -> dict:
    """An ONNX graph's metadata_props, JSON-decoded: {key: value}."""
    m = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in m.metadata_props}


def ort_session(path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An ONNX Runtime session (all graph optimisations) on ``path``."""
    import onnxruntime as ort  # onnxruntime: the cpu / gpu extra

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=list(providers))


def run_ort(sessions: Mapping, feeds: Mapping[str, np.ndarray], chain: bool = True) -> dict[str, np.ndarray]:
    """Run the classifier then the regressor session (``mrcnet.runtime.backends.run_backend``).
    ``chain=True`` feeds the regressor the ORT classifier outputs (what the runtime does); otherwise
    ``feeds`` must hold the stage-1 tensors (e.g. PyTorch's) and the regressor sees those. Inputs a
    session does not declare are dropped."""
    be = OnnxRuntimeBackend.from_sessions(sessions["classifier"], sessions["regressor"])
    return run_backend(be, feeds, stage1=None if chain else feeds)


PARITY_KEYS = ("pose_logits", "depth_logits", "trans_logits", "R_init", "t_init", "feat_x4", "feat_x16", "R", "t")


def onnx_parity(model: nn.Module, paths: Mapping[str, Path], feeds: Mapping[str, np.ndarray] | None = None,
                n: int = 8, seed: int = 1, threads: int | None = None) -> dict[str, float]:
    """ORT (CPU) against PyTorch on the same inputs (``mrcnet.runtime.backends.compare_backends``).

    The classifier graph gets ``feeds``; the regressor graph gets PyTorch's stage-1 tensors (so a
    near-tie argmax cannot hide or fake a stage-2 error). Returns {output: max rel. error} for
    ``PARITY_KEYS`` plus ``argmax_agree`` (fraction of crops whose three argmax bins agree),
    ``max`` (the largest float error) and ``rot_agree_5deg`` / ``t_agree_5mm``.
    """
    if feeds is None:
        feeds = example_inputs(model.n_obj, n, seed=seed, crop_size=model.cfg.crop_size)
    sessions = {g: ort_session(paths[g], threads) for g in ("classifier", "regressor")}
    ort_be = OnnxRuntimeBackend.from_sessions(sessions["classifier"], sessions["regressor"])
    return compare_backends(TorchBackend(model), ort_be, feeds, keys=PARITY_KEYS, shared_stage1=True)

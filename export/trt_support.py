"""TensorRT conformance of an ONNX graph, checked without TensorRT: operator support as data + a check.

:data:`SUPPORTED_OPS` is onnx-tensorrt's operator support matrix (``docs/operators.md`` of the
TensorRT 10 parser) for the ops a model of this kind uses, with the element types and the
restrictions that can be decided from the graph: inputs that must be constants (initializers or
``Constant`` outputs), Resize modes, zero points of 0 in Q/DQ. :data:`TRT_VERSIONS` holds what
differs between TensorRT 10.3 and 11.x (opset range, weak typing). :func:`check_graph` returns the
problems of one graph (empty = conformant) and :func:`check_export` those of every graph of an export
directory. Checked:

- every node's op is in the matrix for the version, with its input/output element types;
- the restrictions of :data:`SUPPORTED_OPS` (constant inputs, attribute values);
- the opset is within the version's range;
- dynamic shapes: only the batch axis (0) of the graph inputs is dynamic, and with the inputs fixed
  to the optimisation profile's smallest and largest batch (4 and 4 x max detections) shape
  inference gives every output a static shape with that batch;
- int8 (TensorRT explicit quantisation): every QuantizeLinear / DequantizeLinear has an int8 zero
  point equal to 0 (no uint8), constant positive scales, DequantizeLinear never reads int32 (no
  quantised biases), per-channel weight scales along axis 0 of a Conv weight;
- the pose outputs (``R``, ``t``, ``R_init``, ``t_init``) are float32;
- precision carried by the graph (TensorRT 11 has no FP16 / INT8 flags): a ``fp16`` graph has
  float16 Conv / Gemm / MatMul inputs, an ``int8`` graph has every Conv's data and weight dequantised
  from int8 (but the heads' convolutions, kept in float by design: ``QUANT_STYLES``).

Torch-free; needs the ``onnx`` package.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from mrcnet.runtime.manifest import load_manifest

from .fp16 import elem_types
from .quantize import QUANT_STYLES
from .tensorrt import precision_graphs

F32, F16, BF16 = "FP32", "FP16", "BF16"
I32, I64, I8, U8, BOOL = "INT32", "INT64", "INT8", "UINT8", "BOOL"
_FLOAT = (F32, F16, BF16)
_NUM = (*_FLOAT, I32, I64)
_ANY = (*_NUM, BOOL)
ELEM_NAMES = {TensorProto.FLOAT: F32, TensorProto.FLOAT16: F16, TensorProto.BFLOAT16: BF16, TensorProto.INT32: I32,
              TensorProto.INT64: I64, TensorProto.INT8: I8, TensorProto.UINT8: U8, TensorProto.BOOL: BOOL,
              TensorProto.DOUBLE: "DOUBLE"}


@dataclass(frozen=True)
class OpSupport:
    """One row of the matrix: element types of the data tensors, inputs (by index) that must be
    constant, allowed attribute values ({attr: allowed}), a note for the docs."""

    types: tuple
    const_inputs: tuple = ()
    attrs: dict = field(default_factory=dict)
    note: str = ""


#: onnx-tensorrt (TensorRT 10 parser) operator support for the ops of these graphs and their kin
SUPPORTED_OPS = {
    "Abs": OpSupport(_NUM), "Add": OpSupport(_NUM), "And": OpSupport((BOOL,)), "ArgMax": OpSupport(_NUM),
    "ArgMin": OpSupport(_NUM), "AveragePool": OpSupport(_FLOAT), "BatchNormalization": OpSupport(_FLOAT),
    "Cast": OpSupport((*_ANY, U8)), "Ceil": OpSupport(_FLOAT), "Clip": OpSupport(_FLOAT),
    "Concat": OpSupport(_ANY), "Constant": OpSupport((*_ANY, I8)), "ConstantOfShape": OpSupport(_ANY),
    "Conv": OpSupport(_FLOAT, note="weights an initializer, or dequantised from one"),
    "ConvTranspose": OpSupport(_FLOAT), "Cos": OpSupport(_FLOAT), "CumSum": OpSupport(_FLOAT, const_inputs=(1,)),
    "DequantizeLinear": OpSupport((I8,), const_inputs=(1, 2), note="x_zero_point must be zero"),
    "Div": OpSupport(_NUM), "Einsum": OpSupport(_FLOAT), "Equal": OpSupport(_NUM), "Erf": OpSupport(_FLOAT),
    "Exp": OpSupport(_FLOAT), "Expand": OpSupport(_ANY), "Flatten": OpSupport(_ANY), "Floor": OpSupport(_FLOAT),
    "Gather": OpSupport(_ANY), "GatherElements": OpSupport(_ANY), "Gemm": OpSupport(_FLOAT),
    "GlobalAveragePool": OpSupport(_FLOAT), "Greater": OpSupport(_NUM), "GroupNormalization": OpSupport(_FLOAT),
    "Identity": OpSupport(_ANY), "InstanceNormalization": OpSupport(_FLOAT, const_inputs=(1, 2)),
    "LayerNormalization": OpSupport(_FLOAT), "LeakyRelu": OpSupport(_FLOAT), "Less": OpSupport(_NUM),
    "Log": OpSupport(_FLOAT), "LpNormalization": OpSupport(_FLOAT), "MatMul": OpSupport(_FLOAT),
    "Max": OpSupport(_NUM), "MaxPool": OpSupport(_FLOAT), "Min": OpSupport(_NUM), "Mod": OpSupport(_NUM),
    "Mul": OpSupport(_NUM), "Neg": OpSupport(_NUM), "Not": OpSupport((BOOL,)), "Or": OpSupport((BOOL,)),
    "Pad": OpSupport(_NUM, const_inputs=(3,), attrs={"mode": ("constant", "reflect", "edge", "wrap")}),
    "Pow": OpSupport(_FLOAT), "QuantizeLinear": OpSupport(_FLOAT, const_inputs=(1, 2), note="y_zero_point must be 0"),
    "Range": OpSupport(_NUM), "Reciprocal": OpSupport(_FLOAT),
    "ReduceL2": OpSupport(_NUM, const_inputs=(1,)), "ReduceMax": OpSupport(_NUM, const_inputs=(1,)),
    "ReduceMean": OpSupport(_NUM, const_inputs=(1,)), "ReduceMin": OpSupport(_NUM, const_inputs=(1,)),
    "ReduceSum": OpSupport(_NUM, const_inputs=(1,)), "Relu": OpSupport(_NUM), "Reshape": OpSupport(_ANY),
    "Resize": OpSupport(_FLOAT, const_inputs=(1, 2, 3), attrs={
        "mode": ("nearest", "linear"), "antialias": (0,), "keep_aspect_ratio_policy": ("stretch",),
        "coordinate_transformation_mode": ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                           "align_corners"),
        "nearest_mode": ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")}),
    "Round": OpSupport(_FLOAT), "ScatterND": OpSupport(_NUM, attrs={"reduction": ("none",)}),
    "Shape": OpSupport(_ANY), "Sigmoid": OpSupport(_FLOAT), "Sign": OpSupport(_NUM), "Sin": OpSupport(_FLOAT),
    "Slice": OpSupport(_ANY, const_inputs=(3,)), "Softmax": OpSupport(_FLOAT), "Softplus": OpSupport(_FLOAT),
    "Split": OpSupport(_ANY), "Sqrt": OpSupport(_FLOAT), "Squeeze": OpSupport(_ANY, const_inputs=(1,)),
    "Sub": OpSupport(_NUM), "Tanh": OpSupport(_FLOAT), "Tile": OpSupport(_ANY),
    "TopK": OpSupport(_NUM, const_inputs=(1,), attrs={"sorted": (1,)}), "Transpose": OpSupport(_ANY),
    "Unsqueeze": OpSupport(_ANY, const_inputs=(1,)), "Where": OpSupport(_ANY), "Xor": OpSupport((BOOL,)),
}

#: per TensorRT major: ONNX opsets the parser takes; whether weak typing (FP16 / INT8 builder
#: flags, calibrators) exists: without it precision must come from the graph
TRT_VERSIONS = {
    "10.3": {"opsets": (9, 20), "weak_typing": True},
    "11": {"opsets": (9, 24), "weak_typing": False},
}
POSE_OUTPUTS = ("R", "t", "R_init", "t_init")
GEMM_OPS = ("Conv", "Gemm", "MatMul")


def _consts(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _data_type(node, types) -> str | None:
    """Element type the matrix's 'Supported Types' refers to: the first input's (the output's for
    ops without inputs, and for Cast both ends are checked)."""
    t = node.input[0] if node.input and node.input[0] else (node.output[0] if node.output else "")
    return ELEM_NAMES.get(types.get(t))


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return None


def _fixed_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        d = vi.type.tensor_type.shape.dim
        if d:
            d[0].Clear()
            d[0].dim_value = n
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    return m


def check_shapes(model: onnx.ModelProto, profile: Sequence[int] = (4, 32)) -> list[str]:
    """Dynamic shapes within the optimisation profile (see the module docstring); an empty
    ``profile`` checks the inputs' axes only (the same for every TensorRT version)."""
    problems = []
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            problems.append(f"input {vi.name}: batch axis 0 is not dynamic")
        for k, d in enumerate(dims[1:], 1):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                problems.append(f"input {vi.name}: axis {k} is not static ({d.dim_param or '?'})")
    if problems:
        return problems
    for n in profile:
        inferred = onnx.shape_inference.infer_shapes(_fixed_batch(model, n), data_prop=True)
        for o in inferred.graph.output:
            dims = o.type.tensor_type.shape.dim
            static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            if not dims or None in static or static[0] != n:
                problems.append(f"output {o.name}: shape {static} at batch {n} (want static, batch first)")
    return problems


def check_qdq(model: onnx.ModelProto, types=None, consts=None) -> list[str]:
    """TensorRT explicit quantisation rules for every Q/DQ node (see the module docstring)."""
    types = types if types is not None else elem_types(onnx.shape_inference.infer_shapes(model))
    consts = consts if consts is not None else _consts(model)
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    problems = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{n.op_type} {n.name!r}"
        zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            problems.append(f"{where}: no zero point (ONNX default uint8; TensorRT needs int8 0)")
        elif types.get(zp) != TensorProto.INT8:
            problems.append(f"{where}: zero point type {ELEM_NAMES.get(types.get(zp), types.get(zp))}, not INT8")
        elif zp not in consts or np.any(consts[zp] != 0):
            problems.append(f"{where}: zero point is not a constant 0")
        scale = n.input[1]
        if scale not in consts:
            problems.append(f"{where}: scale is not a constant")
        elif not np.all(consts[scale] > 0):
            problems.append(f"{where}: scale has values <= 0")
        if n.op_type == "DequantizeLinear":
            x_type = types.get(n.input[0])
            if x_type != TensorProto.INT8:
                problems.append(f"{where}: dequantises {ELEM_NAMES.get(x_type, x_type)} (int32 bias or uint8?), "
                                "TensorRT takes int8 only")
            if scale in consts and np.asarray(consts[scale]).size > 1:
                axis = _attr(n, "axis")
                for c, i in consumers.get(n.output[0], []):
                    if c.op_type == "Conv" and i == 1 and (axis if axis is not None else 1) != 0:
                        problems.append(f"{where}: per-channel Conv weight scales on axis {axis}, TensorRT needs 0")
    return problems


def check_graph(path_or_model, version: str = "11", *, precision: str | None = None,
                profile: Sequence[int] = (4, 32)) -> list[str]:
    """Problems of one graph for TensorRT ``version`` ("10.3" | "11"); empty list = conformant.
    ``precision``: "fp32" | "fp16" | "int8" to also check that the graph carries it."""
    if version not in TRT_VERSIONS:
        raise ValueError(f"TensorRT version {version!r}: checked versions are {sorted(TRT_VERSIONS)}")
    spec = TRT_VERSIONS[version]
    model = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types, consts = elem_types(model), _consts(model)
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = spec["opsets"]
    if opset is None or not lo <= opset <= hi:
        problems.append(f"opset {opset} outside TensorRT {version}'s {lo}..{hi}")
    for n in model.graph.node:
        where = f"node {n.name!r} ({n.op_type})"
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {n.domain!r} (needs a plugin)")
            continue
        sup = SUPPORTED_OPS.get(n.op_type)
        if sup is None:
            problems.append(f"{where}: op not in onnx-tensorrt's supported list")
            continue
        dt = _data_type(n, types)
        if dt is not None and dt not in sup.types:
            problems.append(f"{where}: type {dt} not supported ({', '.join(sup.types)})")
        if n.op_type == "Cast":
            to = ELEM_NAMES.get(_attr(n, "to"))
            if to not in sup.types:
                problems.append(f"{where}: cast to {to or _attr(n, 'to')} not supported")
        for i in sup.const_inputs:
            if i < len(n.input) and n.input[i] and n.input[i] not in consts:
                problems.append(f"{where}: input {i} ({n.input[i]}) must be a constant")
        for a, allowed in sup.attrs.items():
            v = _attr(n, a)
            if v is not None and v not in allowed:
                problems.append(f"{where}: {a}={v!r} not supported ({', '.join(map(str, allowed))})")
    problems += check_shapes(model, profile)
    problems += check_qdq(model, types, consts)
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    for name in POSE_OUTPUTS:
        if name in outs and outs[name] != TensorProto.FLOAT:
            problems.append(f"output {name}: {ELEM_NAMES.get(outs[name], outs[name])}, not FP32")
    if precision is not None:
        problems += check_precision(model, precision, types, version)
    return problems


def check_precision(model: onnx.ModelProto, precision: str, types, version: str = "11") -> list[str]:
    """The graph carries ``precision`` (TensorRT 11 takes it from the graph, not from flags)."""
    gemm = [n for n in model.graph.node if n.op_type in GEMM_OPS]
    producers = {o: n for n in model.graph.node for o in n.output}
    if precision == "fp16":
        half = [n for n in gemm if types.get(n.input[0]) == TensorProto.FLOAT16]
        if not gemm or len(half) < 0.9 * len(gemm):
            return [f"fp16 graph: only {len(half)} of {len(gemm)} Conv/Gemm/MatMul take float16"]
    if precision == "int8":  # every Conv but the heads the TensorRT style keeps in float
        convs = [n for n in model.graph.node if n.op_type == "Conv"
                 and not any(f"/{s}" in n.name for s in QUANT_STYLES["tensorrt"]["float_scopes"])]
        bad = [n.name for n in convs if not all(
            producers.get(n.input[i]) is not None and producers[n.input[i]].op_type == "DequantizeLinear"
            for i in (0, 1))]
        out = [f"int8 graph: {len(bad)} of {len(convs)} Conv not quantised (e.g. {bad[:2]})"] if bad else []
        if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
            out.append("int8 graph: no Q/DQ nodes")
        return out
    if precision == "fp32" and any(types.get(n.input[0]) == TensorProto.FLOAT16 for n in gemm):
        return ["fp32 graph holds float16 layers"]
    return []


def op_counts(path_or_model) -> Counter:
    model = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    return Counter(n.op_type for n in model.graph.node)


def export_graphs(export_dir) -> dict[str, dict[str, Path]]:
    """{precision: {graph: path}} of every TensorRT graph an export directory's manifest lists
    (:func:`mrcnet.export.tensorrt.precision_graphs`)."""
    return precision_graphs(load_manifest(export_dir))


def check_export(export_dir, versions: Iterable[str] = tuple(TRT_VERSIONS), profile: Sequence[int] = (4, 32)) -> dict:
    """{"version/precision/graph": problems} for every graph of an export and every version."""
    out = {}
    for prec, graphs in export_graphs(export_dir).items():
        for g, p in graphs.items():
            model = onnx.load(str(p))
            for i, v in enumerate(versions):  # shape inference once per graph: it is version-free
                out[f"{v}/{prec}/{g}"] = check_graph(model, v, precision=prec, profile=profile if i == 0 else ())
    return out

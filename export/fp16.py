"""The fp16 graph: weights and activations in float16, with float32 islands held by explicit Casts.

TensorRT 11 builds strongly typed networks (precision comes from the graph, there is no FP16 builder
flag), and TensorRT 10 builds them too (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``). So the
exporter writes ``classifier.fp16.onnx`` / ``regressor.fp16.onnx`` from the fp32 graphs with
:func:`convert_graph`:

- every float tensor of a network layer becomes float16 (initializers converted, ``Cast(to=float)``,
  ``ConstantOfShape`` values and ``Constant`` values switched to float16);
- the nodes named by :func:`fp32_nodes` stay float32, with a ``Cast`` on each edge that crosses the
  boundary (one per tensor and direction):

  * the **pose geometry**: nodes outside every module scope (the TorchScript exporter names layer
    nodes ``/module/path/Op``; the decoding of bins and residuals into R and t, the logits' argmax
    and score path (ArgMax, ReduceMax) are functions, named ``/Op_k``);
  * the **normalisation statistics**: every node of a module scope that computes batch statistics
    (``GroupBatchNorm2d`` in its ReduceMean form: ReduceMean ... Sqrt, i.e. the scope holds both a
    ReduceMean and a Sqrt) and every ``InstanceNormalization`` (GroupNorm, and the export form of
    ``GroupBatchNorm2d``, :class:`mrcnet.export.optimize.InstanceGroupBatchNorm2d`);
  * the ops of ``FP32_OPS`` wherever they are (argmax / max scores, L2 norms of the geometry);

- graph inputs and outputs keep their float32 type (the runtime and the TensorRT backend chain the
  two graphs by name with float32 tensors; R and t leave the graph in float32).

ONNX Runtime's CPU provider has no float16 kernel for most of these ops (Conv among them), so the
CPU check uses :func:`convert_graph` with ``emulate=True``: the same graph in float32 where every
float16 value is rounded to float16 at the same points (initializers rounded; every output of a
float16 node and every float32 -> float16 boundary goes through ``Cast(float16)`` then
``Cast(float)``). Accumulation inside an op is float32 there, as in TensorRT's fp16 kernels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

#: ops kept in float32 wherever they are: the logits' argmax / score path and norms of geometry
FP32_OPS = frozenset({"ArgMax", "ArgMin", "ReduceMax", "ReduceMin", "TopK", "ReduceL2", "InstanceNormalization",
                      "LpNormalization"})
#: a module scope holding all of these ops computes normalisation statistics (kept in float32)
NORM_STAT_OPS = frozenset({"ReduceMean", "Sqrt"})
#: float inputs that keep their original type whatever the node's precision (ONNX requires float)
TYPE_FIXED_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


def scope(node_name: str) -> str:
    """Module scope of a TorchScript-exported node name: ``/a/b/Conv`` -> ``/a/b``; ``/Add_3`` -> ``''``."""
    return node_name.rsplit("/", 1)[0] if node_name.count("/") >= 2 else ""


def fp32_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes kept in float32 (see the module docstring): geometry (unscoped), the
    normalisation statistics scopes, ``FP32_OPS``."""
    ops_by_scope: dict[str, set[str]] = {}
    for n in model.graph.node:
        ops_by_scope.setdefault(scope(n.name), set()).add(n.op_type)
    stat_scopes = {s for s, ops in ops_by_scope.items() if s and NORM_STAT_OPS <= ops}
    keep = set()
    for n in model.graph.node:
        s = scope(n.name)
        if not s or s in stat_scopes or n.op_type in FP32_OPS:
            keep.add(n.name)
    return keep


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """{tensor name: ONNX element type} from value_info, graph I/O, initializers and Constants."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _to_fp16_tensor(t: TensorProto, emulate: bool) -> TensorProto:
    a = numpy_helper.to_array(t)
    a16 = a.astype(np.float16)
    if emulate:
        a16 = a16.astype(np.float32)
    return numpy_helper.from_array(a16, t.name)


def convert_graph(src, dst=None, *, keep: Iterable[str] | None = None, emulate: bool = False) -> onnx.ModelProto:
    """fp32 ONNX graph (path or ModelProto, shape-inferred) -> the fp16 graph (see the module
    docstring). ``keep``: node names kept in float32 (default :func:`fp32_nodes`); ``emulate``:
    the float32 stand-in that rounds to float16 at the same points. Writes ``dst`` atomically when
    given; returns the checked model."""
    model = onnx.load(str(src)) if not isinstance(src, onnx.ModelProto) else src
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    keep = fp32_nodes(model) if keep is None else set(keep)
    types = elem_types(model)
    half = FLOAT if emulate else FLOAT16
    is_fp16 = {n.name: n.name not in keep for n in g.node}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i, t in enumerate(n.input):
            if t:
                consumers.setdefault(t, []).append((n, i))
    graph_outputs = {o.name for o in g.output}

    def wants(node, i) -> int | None:
        """float type input ``i`` of ``node`` needs (None: not a float input)."""
        t = node.input[i]
        if types.get(t) != FLOAT:
            return None
        if i in TYPE_FIXED_INPUTS.get(node.op_type, ()):
            return FLOAT
        return FLOAT16 if is_fp16[node.name] else FLOAT

    # constants (initializers, Constant nodes) become float16 when every float consumer wants float16
    init = {t.name: t for t in g.initializer}
    const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    produced: dict[str, int] = {i.name: i.type.tensor_type.elem_type for i in g.input}
    for name in list(init) + list(const_nodes):
        if types.get(name) != FLOAT:
            continue
        want = {wants(n, i) for n, i in consumers.get(name, [])} - {None}
        if name in graph_outputs:
            want.add(FLOAT)
        if want == {FLOAT16}:
            if name in init:
                init[name].CopyFrom(_to_fp16_tensor(init[name], emulate))
            else:
                a = const_nodes[name].attribute[0]
                a.t.CopyFrom(_to_fp16_tensor(a.t, emulate))
            produced[name] = FLOAT16
        else:
            produced[name] = FLOAT
    new_nodes, casts = [], {}

    def cast(t: str, to: int) -> str:
        """Name of ``t`` converted to ``to`` (emulate: float16 = float32 rounded to float16)."""
        key = (t, to)
        if key not in casts:
            tag = "fp16" if to == FLOAT16 else "fp32"
            out = f"{t}__{tag}"
            if emulate and to == FLOAT16:
                mid = f"{t}__h"
                new_nodes.append(helper.make_node("Cast", [t], [mid], name=f"{out}/CastH", to=FLOAT16))
                new_nodes.append(helper.make_node("Cast", [mid], [out], name=f"{out}/Cast", to=FLOAT))
            else:
                new_nodes.append(helper.make_node("Cast", [t], [out], name=f"{out}/Cast", to=half if to == FLOAT16
                                                  else FLOAT))
            casts[key] = out
        return casts[key]

    for n in g.node:
        if n.op_type == "Constant" and n.output[0] in produced:
            new_nodes.append(n)
            continue
        for i, t in enumerate(n.input):
            w = wants(n, i) if t else None
            if w is None:
                continue
            have = produced.get(t, FLOAT)
            if have != w:
                n.input[i] = cast(t, w)
        fp16 = is_fp16[n.name]
        if fp16:
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = half
                if n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_to_fp16_tensor(a.t, emulate))
        new_nodes.append(n)
        for o in n.output:
            if not o or types.get(o) != FLOAT:
                continue
            if not fp16:
                produced[o] = FLOAT
                continue
            if emulate:  # round the float32 output of a float16 layer
                raw = f"{o}__raw"
                n.output[list(n.output).index(o)] = raw
                new_nodes.append(helper.make_node("Cast", [raw], [f"{o}__h"], name=f"{o}/RoundH", to=FLOAT16))
                new_nodes.append(helper.make_node("Cast", [f"{o}__h"], [o], name=f"{o}/Round", to=FLOAT))
            produced[o] = FLOAT16
    # graph outputs in float32: rename the float16 producer's tensor and cast it back under the name
    for o in g.output:
        if o.type.tensor_type.elem_type != FLOAT or produced.get(o.name) != FLOAT16:
            continue
        src16 = f"{o.name}__out16"
        for n in new_nodes:
            for lst in (n.output, n.input):
                for k, t in enumerate(lst):
                    if t == o.name:
                        lst[k] = src16
        new_nodes.append(helper.make_node("Cast", [src16], [o.name], name=f"{o.name}/CastOut", to=FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    if dst is not None:
        dst = Path(dst)
        tmp = dst.with_name(f".{dst.name}.tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, dst)
    return model


def convert_graphs(paths, *, emulate: bool = False, folder=None) -> dict[str, Path]:
    """``{graph: fp32 path}`` -> ``{graph: <graph>.fp16.onnx}`` next to them or in ``folder``
    (``<graph>.fp16emu.onnx`` for the emulation)."""
    suffix = "fp16emu" if emulate else "fp16"
    out = {}
    for graph, p in paths.items():
        p = Path(p)
        out[graph] = (Path(folder) if folder is not None else p.parent) / f"{graph}.{suffix}.onnx"
        convert_graph(p, out[graph], emulate=emulate)
    return out


def float16_fraction(model: onnx.ModelProto) -> float:
    """Share of the float initializer elements stored in float16 (weights of the fp16 graph)."""
    n16 = n = 0
    for t in model.graph.initializer:
        if t.data_type in (FLOAT, FLOAT16):
            k = int(np.prod(t.dims, dtype=np.int64))
            n += k
            n16 += k if t.data_type == FLOAT16 else 0
    return n16 / max(n, 1)


def ops_by_precision(model: onnx.ModelProto, ops: Sequence[str] = ("Conv", "Gemm", "MatMul")) -> dict[str, dict]:
    """{op: {"float16": count, "float": count}} by the element type of each node's first input."""
    types = elem_types(onnx.shape_inference.infer_shapes(model))
    out = {op: {"float16": 0, "float": 0} for op in ops}
    for n in model.graph.node:
        if n.op_type in out:
            k = {FLOAT16: "float16", FLOAT: "float"}.get(types.get(n.input[0]))
            if k:
                out[n.op_type][k] += 1
    return out

"""TensorRT conformance of every graph the exporter writes, checked without TensorRT
(:mod:`mrcnet.export.trt_support`): fp32, fp16 and TensorRT-style int8 graphs of the shipped demo
model and of the paper preset with 1 and 3 objects, for TensorRT 10.3 and 11. Also: the checker
catches what TensorRT refuses (ONNX Runtime-style uint8 QDQ, int32 bias dequantisation, an
unsupported op, non-constant axes, a static batch, float16 pose outputs), the fp16 graph keeps the
geometry / statistics in float32 and runs under ONNX Runtime CPU, and ``--backend tensorrt`` without
TensorRT writes the graphs and says so in one line."""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from mrcnet.export.fp16 import convert_graph, convert_graphs, fp32_nodes, ops_by_precision
from mrcnet.export.manifest import CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, build_manifest
from mrcnet.export.trt_support import SUPPORTED_OPS, TRT_VERSIONS, check_export, check_graph, op_counts

VERSIONS = tuple(TRT_VERSIONS)
PRECISIONS = ("fp32", "fp16", "int8")
FIGURES: dict = {}  # graph -> (ops, nodes), printed by the last test (pytest -s)


# ------------------------------------------------------------------------------------ exports
@pytest.fixture(scope="module")
def demo_fp16(tmp_path_factory):
    """The CLI on a machine without TensorRT: fp32 + fp16 graphs, listed in the manifest."""
    from mrcnet.export.cli import main

    out = tmp_path_factory.mktemp("conf_demo_fp16")
    r = CliRunner().invoke(main, ["--backend", "tensorrt", "--precision", "fp16", "--out", str(out), "--quiet"])
    return out, r


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory):
    from mrcnet.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("conf_demo_int8")
    res = export_checkpoint(None, out, backend="tensorrt", precision="int8", calib_count=6)
    return out, res


def _random_calibration(model, n_obj, crop, n_batches=2):
    """A CalibrationSet of random feeds (the conformance check is structural)."""
    from mrcnet.export.onnx_export import example_inputs, run_torch
    from mrcnet.export.quantize import CalibrationSet

    feeds = []
    for b in range(n_batches + 1):
        f = example_inputs(n_obj, 4, obj_index=[b % n_obj] * 4, seed=b, crop_size=crop)
        ref = run_torch(model, f)
        feeds.append({**f, **{k: ref[k] for k in CLASSIFIER_OUTPUTS}})
    held = {k: feeds[-1][k] for k in (*CLASSIFIER_INPUTS, "render")}
    return CalibrationSet(feeds[:-1], held, "random", len(feeds))


@pytest.fixture(scope="module", params=[1, 3], ids=["paper-1obj", "paper-3obj"])
def paper_export(request, tmp_path_factory):
    """Paper preset (random weights) through the exporter's steps: fp32, fp16, TensorRT int8."""
    from mrcnet.export.onnx_export import export_onnx
    from mrcnet.export.optimize import optimize_for_export
    from mrcnet.export.quantize import quantize_graphs
    from mrcnet.export.subset import subset_model
    from mrcnet.model import build_model

    n_obj = request.param
    torch.manual_seed(0)
    model = build_model(max(n_obj, 2), (0.05, 1.7), "paper").eval()
    if n_obj == 1:
        model = subset_model(model, [0], inplace=True)  # single-object graphs (plain Conv decoder)
    model.set_bn_group(4)
    optimize_for_export(model)
    out = tmp_path_factory.mktemp(f"conf_paper{n_obj}")
    man = build_manifest(dataset="synth", preset="paper", obj_ids=list(range(1, n_obj + 1)), depth_range=(0.05, 1.7),
                         bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4,
                         project_version="0", checkpoint_sha256="")
    paths = export_onnx(model, out, man)
    graphs = {"fp32": paths, "fp16": convert_graphs(paths),
              "int8": quantize_graphs(paths, _random_calibration(model, n_obj, model.cfg.crop_size),
                                      style="tensorrt")}
    return n_obj, graphs


def _check(label, graphs):
    for prec, paths in graphs.items():
        for g, p in paths.items():
            model = onnx.load(str(p))
            FIGURES[f"{label}/{prec}/{g}"] = (len(op_counts(model)), len(model.graph.node))
            for i, v in enumerate(VERSIONS):  # the batch-profile shape check is version-free: once
                problems = check_graph(model, v, precision=prec, profile=(4, 32) if i == 0 else ())
                assert problems == [], (label, prec, g, v, problems[:10])


# ------------------------------------------------------------------------------- conformance
@pytest.mark.slow
def test_cli_without_tensorrt_writes_fp16_graphs(demo_fp16):
    out, r = demo_fp16
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "TensorRT" in line and "--engines-only" in line]
    assert len(notes) == 1 and "fp16 graphs written" in notes[0] and str(out) in notes[0]
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["precision_graphs"]["fp16"] == {"classifier": "classifier.fp16.onnx",
                                               "regressor": "regressor.fp16.onnx"}
    assert "engines" not in raw or not raw["engines"]
    fig = raw["parity"]["onnxruntime_fp16_graph"]  # the float32 stand-in rounding like fp16
    assert fig["rot_diff_deg_median"] < 0.5 and fig["t_diff_mm_median"] < 1.0, fig


@pytest.mark.slow
def test_demo_graphs_conform(demo_fp16, demo_int8):
    out16, _ = demo_fp16
    out8, res = demo_int8
    raw = json.loads((out8 / "manifest.json").read_text())
    assert raw["precision_graphs"]["int8"]["classifier"] == "classifier.trt-int8.onnx"
    assert raw["calibration"]["detections"] >= 2
    assert any("--engines-only --precision int8" in n for n in res.notes)
    for out in (out16, out8):
        report = check_export(out)
        assert report and all(v == [] for v in report.values()), {k: v[:5] for k, v in report.items() if v}
    _check("demo", {"fp32": {g: out16 / f"{g}.onnx" for g in ("classifier", "regressor")},
                    "fp16": {g: out16 / f"{g}.fp16.onnx" for g in ("classifier", "regressor")},
                    "int8": {g: out8 / f"{g}.trt-int8.onnx" for g in ("classifier", "regressor")}})


@pytest.mark.slow
def test_paper_graphs_conform(paper_export):
    n_obj, graphs = paper_export
    _check(f"paper-{n_obj}obj", graphs)
    assert set(graphs) == set(PRECISIONS)


# ------------------------------------------------------------------- the checker itself fails
def _tiny(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _x(name="x", shape=("N", 3)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def test_checker_flags_onnxruntime_style_qdq(demo_int8):
    """The ONNX Runtime CPU int8 graph (uint8 activations, int32 biases) is not TensorRT's."""
    from mrcnet.export.quantize import quantize_graph

    out, _ = demo_int8
    batch = {k: v for k, v in _demo_feeds(out).items() if k in CLASSIFIER_INPUTS}
    ort_q = quantize_graph(out / "classifier.onnx", out / "classifier.ortq.onnx", [batch], style="onnxruntime")
    problems = check_graph(ort_q, "11")
    assert any("UINT8" in p or "uint8" in p for p in problems), problems[:5]
    assert any("dequantises INT32" in p for p in problems), problems[:5]


def _demo_feeds(out):
    from mrcnet.export.onnx_export import example_inputs
    from mrcnet.runtime.manifest import load_manifest

    m = load_manifest(out)
    return example_inputs(len(m.obj_ids), 4, crop_size=m.crop_size)


def test_checker_flags_unsupported_op_and_non_constant_axes():
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    m = _tiny([helper.make_node("Hardmax", ["x"], ["h"], name="/head/Hardmax"),
               helper.make_node("ReduceSum", ["h", "axes"], ["y"], name="/ReduceSum", keepdims=1)],
              [_x(), axes], [_x("y", ("N", 1))])
    problems = check_graph(m, "10.3")
    assert any("'/head/Hardmax' (Hardmax): op not in" in p for p in problems)
    assert any("'/ReduceSum' (ReduceSum): input 1 (axes) must be a constant" in p for p in problems)
    assert any("input axes: batch axis 0 is not dynamic" in p for p in problems)


def test_checker_flags_static_batch_fp16_pose_and_opset():
    m = _tiny([helper.make_node("Cast", ["x"], ["t"], name="/Cast", to=TensorProto.FLOAT16)],
              [_x(shape=(4, 3))], [helper.make_tensor_value_info("t", TensorProto.FLOAT16, [4, 3])], opset=22)
    problems = check_graph(m, "10.3")
    assert any("batch axis 0 is not dynamic" in p for p in problems)
    assert any("output t: FP16, not FP32" in p for p in problems)
    assert any("opset 22 outside TensorRT 10.3" in p for p in problems)
    assert not any("opset" in p for p in check_graph(m, "11"))


def test_checker_int8_precision_allows_only_the_float_heads():
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [0.5])
    for name, ok in (("/backbone/decoder/conv_last/conv/Conv", True), ("/backbone/layer1/conv/Conv", False)):
        m = _tiny([helper.make_node("Conv", ["x", "w"], ["y"], name=name)], [_x(shape=("N", 1, 2, 2))],
                  [_x("y", ("N", 1, 2, 2))], inits=[w])
        problems = check_graph(m, "11", precision="int8")
        assert "int8 graph: no Q/DQ nodes" in problems
        assert any("1 of 1 Conv not quantised" in p for p in problems) != ok, problems


def test_checker_flags_nonzero_zero_point():
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", TensorProto.INT8, [], [3])
    m = _tiny([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="/Q"),
               helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="/DQ")],
              [_x()], [_x("y")], inits=[scale, zp])
    problems = check_graph(m, "11")
    assert sum("zero point is not a constant 0" in p for p in problems) == 2


def test_supported_ops_cover_every_exported_op(demo_fp16):
    out, _ = demo_fp16
    used = set()
    for f in ("classifier.onnx", "regressor.onnx", "classifier.fp16.onnx", "regressor.fp16.onnx"):
        used |= set(op_counts(out / f))
    assert used <= set(SUPPORTED_OPS), used - set(SUPPORTED_OPS)


# ------------------------------------------------------------------------------- the fp16 graph
STAT_OPS = ("Sqrt", "InstanceNormalization")


def test_fp16_graph_keeps_geometry_and_statistics_in_float32(demo_fp16):
    out, _ = demo_fp16
    src = onnx.load(str(out / "regressor.onnx"))
    keep = fp32_nodes(src)
    names = {n.name: n for n in src.graph.node}
    assert any(names[k].op_type == "MatMul" and k.count("/") == 1 for k in keep)  # R6D @ R_init
    # batch statistics: InstanceNormalization (the export form of GroupBatchNorm2d) or Sqrt (ReduceMean form)
    assert any(names[k].op_type in STAT_OPS for k in keep)
    assert all(names[k].op_type != "Conv" for k in keep)
    m16 = onnx.load(str(out / "regressor.fp16.onnx"))
    counts = ops_by_precision(m16)
    assert counts["Conv"]["float"] == 0 and counts["Conv"]["float16"] > 10
    assert counts["MatMul"]["float"] >= 1  # the geometry MatMul
    types = {o.name: o.type.tensor_type.elem_type for o in m16.graph.output}
    assert types["R"] == types["t"] == TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(m16)
    vt = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    stat_in = [n.input[0] for n in inferred.graph.node if n.op_type in STAT_OPS]
    assert stat_in and all(vt.get(t) == TensorProto.FLOAT for t in stat_in)


def test_fp16_emulation_rounds_where_the_fp16_graph_does():
    """A float32 stand-in: a Conv's output rounded to float16 exactly, the geometry Add untouched."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0 / 3.0])
    m = _tiny([helper.make_node("Conv", ["x", "w"], ["c"], name="/layer/conv/Conv"),
               helper.make_node("Add", ["c", "x"], ["y"], name="/Add")],
              [_x(shape=("N", 1, 2, 2))], [_x("y", ("N", 1, 2, 2))], inits=[w])
    import onnxruntime as ort

    x = np.array([[[[1000.1, 3.3], [0.7, -2.5]]]], np.float32)
    emu = convert_graph(m, emulate=True)
    real = convert_graph(m)
    y = ort.InferenceSession(emu.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    w16 = np.float32(np.float16(1.0 / 3.0))
    conv16 = (np.float16(x) .astype(np.float32) * w16).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(y, conv16 + x)
    assert ops_by_precision(real)["Conv"] == {"float16": 1, "float": 0}
    assert check_graph(real, "11", precision="fp16") == []


@pytest.mark.slow
def test_conformance_figures(demo_fp16, demo_int8):
    """Prints the conformance figures (graphs checked, distinct ops / nodes per graph)."""
    if not FIGURES:
        pytest.skip("run with the conformance tests above")
    print(f"\nconformance: {len(FIGURES)} graphs x {len(VERSIONS)} TensorRT versions, 0 problems")
    for k, (ops, nodes) in sorted(FIGURES.items()):
        print(f"  {k}: {ops} op types, {nodes} nodes")
    assert all(n > 0 for _, n in FIGURES.values())

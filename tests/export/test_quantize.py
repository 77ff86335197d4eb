"""ONNX Runtime int8 placement (mrcnet.export.quantize): the default ``onnxruntime`` style's QDQ
pattern is fused by ONNX Runtime CPU into int8 kernels (QLinearConv, QLinearMatMul, QGemm: no float
convolution left), per-call options change the placement as asked, bad options are refused, and
signed-int8 activations are not fused on x86 without ``session.qdqisint8allowed`` (why the CPU
style keeps uint8 activations; ``benchmarks/int8_variants.py`` measures the variants)."""
import platform

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mrcnet.export.manifest import CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, build_manifest  # noqa: E402
from mrcnet.export.onnx_export import example_inputs, export_onnx, ort_session, run_ort, run_torch  # noqa: E402
from mrcnet.export.optimize import optimize_for_export  # noqa: E402
from mrcnet.export.quantize import (  # noqa: E402
    CalibrationSet,
    activation_joins,
    optimized_op_counts,
    output_agreement,
    quantize_graph,
    quantize_graphs,
)
from mrcnet.model import build_model  # noqa: E402

DEPTH = (0.05, 1.7)
X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture(scope="module")
def one_obj(tmp_path_factory):
    """A 1-object small-preset export (the export forms) and a CalibrationSet of random feeds."""
    torch.manual_seed(3)
    model = optimize_for_export(build_model(1, DEPTH, "small").eval())
    out = tmp_path_factory.mktemp("q1")
    man = build_manifest(dataset="synth", preset="small", obj_ids=[1], depth_range=DEPTH, bins=model.cfg.bins,
                         fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4, project_version="0",
                         checkpoint_sha256="")
    paths = export_onnx(model, out, man)
    feeds = []
    for b in range(3):
        f = example_inputs(1, 4, seed=b, crop_size=model.cfg.crop_size)
        ref = run_torch(model, f)
        feeds.append({**f, **{k: ref[k] for k in CLASSIFIER_OUTPUTS}})
    cal = CalibrationSet(feeds[:-1], {k: feeds[-1][k] for k in (*CLASSIFIER_INPUTS, "render")}, "random", 3)
    return paths, cal


@pytest.fixture(scope="module")
def default_int8(one_obj):
    paths, cal = one_obj
    return quantize_graphs(paths, cal)


def test_default_style_is_fused_into_int8_kernels(one_obj, default_int8):
    """After ORT's optimisations every convolution is a QLinearConv, the heads QGemm, the
    correlations QLinearMatMul; only the pose geometry MatMul stays float."""
    paths, _ = one_obj
    fp32 = {g: optimized_op_counts(p) for g, p in paths.items()}
    for g, p in default_int8.items():
        c = optimized_op_counts(p)
        n_conv = fp32[g].get("Conv", 0) + fp32[g].get("FusedConv", 0)
        assert c.get("QLinearConv", 0) == n_conv > 0, (g, c)
        assert c.get("Conv", 0) == 0 and c.get("FusedConv", 0) == 0, (g, c)
        assert c.get("QGemm", 0) == fp32[g].get("Gemm", 0) + fp32[g].get("FusedGemm", 0), (g, c)
    reg = optimized_op_counts(default_int8["regressor"])
    assert reg.get("QLinearMatMul", 0) == 3 and reg.get("MatMul", 0) == 1, reg  # 3 correlations; R6D @ R_init


def test_default_int8_tracks_fp32(one_obj, default_int8):
    paths, cal = one_obj
    ref = run_ort({g: ort_session(p, 2) for g, p in paths.items()}, cal.held_out)
    got = run_ort({g: ort_session(p, 2) for g, p in default_int8.items()}, cal.held_out)
    agree = output_agreement(ref, got)
    assert agree["crops"] == 4 and agree["pose_logits_err"] < 0.35, agree
    assert np.allclose(got["R"] @ got["R"].transpose(0, 2, 1), np.eye(3), atol=1e-4)
    same = output_agreement(ref, ref)
    assert same["rot_diff_deg_median"] == 0 and same["pose_logits_argmax_agree"] == 1.0


def test_options_change_the_placement(one_obj, tmp_path):
    """float_scopes keeps the correlation MatMuls float; op_types limits what is quantised;
    per_channel=False gives one weight scale per tensor; unknown keys are refused."""
    paths, cal = one_obj
    batches = cal.regressor_batches()
    corr = quantize_graph(paths["regressor"], tmp_path / "corr.onnx", batches,
                          options={"float_scopes": ("corr_x4/MatMul", "corr_x8/MatMul", "corr_x16/MatMul")})
    c = optimized_op_counts(corr)
    assert c.get("QLinearMatMul", 0) == 0 and c.get("MatMul", 0) == 4 and c.get("QLinearConv", 0) > 0, c
    conv = quantize_graph(paths["regressor"], tmp_path / "conv.onnx", batches, options={"op_types": ("Conv",)})
    c = optimized_op_counts(conv)
    assert c.get("QGemm", 0) == 0 and c.get("QLinearMatMul", 0) == 0 and c.get("QLinearConv", 0) > 0, c
    pt = quantize_graph(paths["classifier"], tmp_path / "pt.onnx", cal.classifier_batches(),
                        options={"per_channel": False})
    scales = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(pt)).graph.initializer
              if t.name.endswith("_scale")]
    assert scales and all(s.size == 1 for s in scales)
    with pytest.raises(ValueError, match="unknown keys.*'per_chanel'"):
        quantize_graph(paths["classifier"], tmp_path / "x.onnx", cal.classifier_batches(),
                       options={"per_chanel": False})


def test_activation_joins_are_two_activation_adds(one_obj):
    """Residual sums / feature concatenations qualify; an Add with a constant (var + eps, bias) not."""
    paths, _ = one_obj
    m = onnx.load(str(paths["classifier"]), load_external_data=False)
    joins = set(activation_joins(paths["classifier"]))
    consts = {t.name for t in m.graph.initializer}
    by_name = {n.name: n for n in m.graph.node}
    assert joins and all(by_name[j].op_type in ("Add", "Concat") for j in joins)
    assert all(not (set(by_name[j].input) & consts) for j in joins)
    with_const = [n.name for n in m.graph.node if n.op_type == "Add" and set(n.input) & consts]
    assert with_const and not joins & set(with_const)


@pytest.mark.skipif(not X86, reason="ONNX Runtime fuses signed-int8 activations by default on ARM")
def test_signed_activations_stay_unfused_on_x86(one_obj, tmp_path):
    """int8 (S8S8) activations: ORT's x86 QDQ fusion leaves most convolutions float unless
    ``session.qdqisint8allowed=1`` (whose S8S8 kernels measured slower than U8S8 here)."""
    paths, cal = one_obj
    s8 = quantize_graph(paths["classifier"], tmp_path / "s8.onnx", cal.classifier_batches(),
                        options={"activation": "QInt8", "ActivationSymmetric": True})
    plain = optimized_op_counts(s8)
    n_float = plain.get("Conv", 0) + plain.get("FusedConv", 0)
    assert n_float > 2 * plain.get("QLinearConv", 0), plain  # most convolutions stay float
    allowed = optimized_op_counts(s8, {"session.qdqisint8allowed": "1"})
    assert allowed.get("QLinearConv", 0) > 0 and allowed.get("Conv", 0) == 0, allowed


def test_tensorrt_style_unchanged_by_options_defaults(one_obj, tmp_path):
    """The TensorRT style still keeps its float heads and symmetric int8 activations."""
    paths, cal = one_obj
    q = quantize_graph(paths["regressor"], tmp_path / "trt.onnx", cal.regressor_batches(), style="tensorrt")
    m = onnx.load(str(q))
    qtypes = {onnx.numpy_helper.to_array(t).dtype for t in m.graph.initializer if t.name.endswith("_zero_point")}
    assert qtypes == {np.dtype("int8")}, qtypes
    heads = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert heads  # the heads' Gemms stay float (no DequantizeLinear-fed weight)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not any(n.input[1] in dq_out for n in heads)

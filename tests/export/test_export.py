"""mrcnet.export: PyTorch -> ONNX (classifier + regressor), ORT parity, subsets, golden case, CLI.

Small preset with random weights (fast); the golden deterministic-weight paper model (n_obj = 2)
is exported once per session (module fixture, marked slow).
"""
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from mrcnet.export.cli import main as cli_main  # noqa: E402
from mrcnet.export.manifest import (  # noqa: E402
    CLASSIFIER_INPUTS,
    CLASSIFIER_OUTPUTS,
    METADATA_KEYS,
    REGRESSOR_INPUTS,
    REGRESSOR_OUTPUTS,
    build_manifest,
)
from mrcnet.export.onnx_export import (  # noqa: E402
    example_inputs as _example_inputs,
    export_onnx,
    onnx_parity,
    ort_session,
    read_metadata,
    rel_err,
    run_ort,
    run_torch,
)
from mrcnet.export.subset import SingleObjectConv2d, SubsetError, parse_object_ids, subset_model  # noqa: E402
from mrcnet.model import CondConv2d, build_model, get_config  # noqa: E402
from mrcnet.runtime.manifest import load_manifest  # noqa: E402
from mrcnet.testing import write_box_ply  # noqa: E402

TOL = 1e-3
CROP = get_config("small").crop_size


def example_inputs(*args, **kw):
    """The exporter's example feeds at the small preset's crop size."""
    return _example_inputs(*args, crop_size=CROP, **kw)
OBJ_IDS = [1, 2, 3]
DEPTH = (0.05, 1.7)


def _manifest(model, obj_ids, dataset="synth", sha="ab" * 32):
    return build_manifest(dataset=dataset, preset=model.cfg.name, obj_ids=obj_ids, depth_range=DEPTH,
                          bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4,
                          project_version="0.1.0", checkpoint_sha256=sha)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(1234)
    return build_model(3, DEPTH, "small").eval()


@pytest.fixture(scope="module")
def small_export(small_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_small")
    paths = export_onnx(small_model, out, _manifest(small_model, OBJ_IDS))
    return paths


@pytest.fixture(scope="module")
def sessions(small_export):
    return {g: ort_session(p, threads=2) for g, p in small_export.items()}


# ------------------------------------------------------------------------------ graph structure
def test_graph_io_names_and_dynamic_batch(small_export):
    for graph, ins, outs in (("classifier", CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS),
                             ("regressor", REGRESSOR_INPUTS, REGRESSOR_OUTPUTS)):
        m = onnx.load(str(small_export[graph]))
        assert [i.name for i in m.graph.input] == list(ins)
        assert [o.name for o in m.graph.output] == list(outs)
        for v in list(m.graph.input) + list(m.graph.output):
            dim0 = v.type.tensor_type.shape.dim[0]
            assert dim0.dim_param == "N", (graph, v.name)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert all(n.domain in ("", "ai.onnx") for n in m.graph.node), "custom-domain op in the graph"
        onnx.checker.check_model(m, full_check=True)
        assert len(m.graph.value_info) > 50  # shapes were inferred and stored
    cls = onnx.load(str(small_export["classifier"]))
    types = {i.name: i.type.tensor_type.elem_type for i in cls.graph.input}
    assert types["obj_index"] == onnx.TensorProto.INT64 and types["crops"] == onnx.TensorProto.FLOAT


def test_metadata_present(small_export):
    for graph in ("classifier", "regressor"):
        md = read_metadata(small_export[graph])
        assert set(METADATA_KEYS) <= set(md)
        assert md["graph"] == graph
        assert md["obj_ids"] == OBJ_IDS and md["dataset"] == "synth" and md["preset"] == "small"
        assert md["bins"] == {"n_side": 2, "n_depth": 100, "n_cells": 32}
        assert md["depth_range"] == list(DEPTH) and md["crop_size"] == CROP and md["bn_group"] == 4
        assert md["checkpoint_sha256"] == "ab" * 32 and md["fov_variant"] == "inference"


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("objs", [[1, 1, 1, 1], [2] * 4 + [0] * 4 + [1] * 4])
def test_ort_matches_torch(small_model, small_export, objs):
    """N = 4 and N = 12 (three detections of different objects): logits, R, t within 1e-3 of scale."""
    feeds = example_inputs(3, len(objs), obj_index=objs, seed=len(objs))
    errs = onnx_parity(small_model, small_export, feeds, threads=2)
    for k in ("pose_logits", "depth_logits", "trans_logits", "R_init", "t_init", "feat_x4", "feat_x16", "R", "t"):
        assert errs[k] < TOL, (k, errs[k])
    assert errs["argmax_agree"] == 1.0


def test_ort_chained_matches_torch(small_model, sessions):
    """Regressor fed by the ORT classifier (as the runtime does) gives torch's final R, t."""
    feeds = example_inputs(3, 8, obj_index=[0] * 4 + [2] * 4, seed=5)
    ref = run_torch(small_model, feeds)
    got = run_ort(sessions, feeds, chain=True)
    for k in ("R_init", "t_init", "rot_score", "depth_score", "R", "t", "persp"):
        assert rel_err(got[k], ref[k]) < TOL, k
    assert np.allclose(np.linalg.det(got["R"]), 1.0, atol=1e-4)


def test_batched_groups_equal_single_detections(sessions):
    """Per-detection BatchNorm statistics survive in the graph: a batch of 3 detections gives what
    each detection alone gives (and the result does depend on the grouping: group 1 differs
    when the other crops change)."""
    feeds = example_inputs(3, 12, obj_index=[1] * 4 + [0] * 4 + [2] * 4, seed=9)
    full = run_ort(sessions, feeds)
    for g in range(3):
        sl = slice(4 * g, 4 * g + 4)
        one = run_ort(sessions, {k: v[sl] for k, v in feeds.items()})
        for k in ("pose_logits", "R", "t"):
            assert rel_err(full[k][sl], one[k]) < 1e-4, (g, k)
    # a different partner crop inside the group changes the group's output (batch statistics)
    f2 = {k: v[:4].copy() for k, v in feeds.items()}
    f2["crops"][3] = feeds["crops"][5]
    other = run_ort(sessions, f2)
    assert rel_err(other["pose_logits"][:3], full["pose_logits"][:3]) > 1e-3


def test_batch_not_multiple_of_group_rejected(sessions):
    feeds = example_inputs(3, 8, seed=2)
    with pytest.raises(Exception):
        sessions["classifier"].run(None, {k: feeds[k][:6] for k in CLASSIFIER_INPUTS})


# -------------------------------------------------------------------------------------- subsets
@pytest.mark.parametrize("keep", [[2], [2, 0]])
def test_subset_equals_full_model(small_model, small_export, keep, tmp_path):
    sub = subset_model(small_model, keep)
    assert sub.n_obj == len(keep) and small_model.n_obj == 3  # original untouched
    if len(keep) == 1:
        assert not any(isinstance(m, CondConv2d) for m in sub.modules())
        assert sum(isinstance(m, SingleObjectConv2d) for m in sub.modules()) == 6
    paths = export_onnx(sub, tmp_path, _manifest(sub, [OBJ_IDS[i] for i in keep]))
    sess = {g: ort_session(p, threads=2) for g, p in paths.items()}
    assert [i.name for i in sess["classifier"].get_inputs()] == list(CLASSIFIER_INPUTS)
    for pos, obj in enumerate(keep):
        feeds = example_inputs(3, 4, obj_index=[obj] * 4, seed=11 + pos)
        ref = run_torch(small_model, feeds)
        got = run_ort(sess, {**feeds, "obj_index": np.full(4, pos, np.int64)})
        for k in ("pose_logits", "depth_logits", "trans_logits", "R", "t"):
            assert rel_err(got[k], ref[k]) < TOL, (keep, obj, k)
    m = onnx.load(str(paths["classifier"]))
    five_d = [t.name for t in m.graph.initializer if len(t.dims) == 5]
    if len(keep) == 1:
        assert not five_d  # no per-object weight tables left
        full = onnx.load(str(small_export["classifier"]))
        convs = lambda g: sum(n.op_type == "Conv" for n in g.graph.node)  # noqa: E731
        assert convs(m) == convs(full) + 6  # the six CondConvs became Conv nodes
    else:
        assert five_d and all(t.dims[0] == 2 for t in m.graph.initializer if len(t.dims) == 5)


def test_subset_errors(small_model):
    with pytest.raises(SubsetError, match="outside"):
        subset_model(small_model, [3])
    assert parse_object_ids("5, 7") == [5, 7] and parse_object_ids(None) is None
    with pytest.raises(SubsetError, match="'x'"):
        parse_object_ids("5,x")


# ---------------------------------------------------------------------------------------- golden
@pytest.fixture(scope="module")
def golden_export(tmp_path_factory):
    from mrcnet.testing import golden_model

    model = golden_model(2)
    out = tmp_path_factory.mktemp("export_golden")
    paths = export_onnx(model, out, _manifest(model, [1, 2], dataset="tless"))
    sessions = {g: ort_session(p, threads=2) for g, p in paths.items()}
    del model
    return sessions


GOLDEN_MAP = {  # golden key -> (graph output, channels kept)
    "pose_logits": ("pose_logits", None), "depth_logits": ("depth_logits", None),
    "trans_logits": ("trans_logits", None), "rot_init": ("R_init", None), "trans_3d_init": ("t_init", None),
    "trans_xy_init": ("persp_init", 2), "rot_final": ("R", None), "translation_persp": ("persp", None),
    "trans_3d_final": ("t", None),
}


@pytest.fixture(scope="module")
def golden_ort(golden_export):
    from mrcnet.testing import load_golden

    z = load_golden("golden_model_n2.npz")
    feeds = {"crops": z["input_real"], "obj_index": z["obj_cls"].astype(np.int64), "fov": z["fov"],
             "K_roi": z["intrinsics"].astype(np.float32), "render": z["input_synt"]}
    return z, run_ort(golden_export, feeds, chain=True)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(GOLDEN_MAP))
def test_golden_export_outputs(golden_ort, key):
    z, out = golden_ort
    name, keep = GOLDEN_MAP[key]
    a = out[name] if keep is None else out[name][:, :keep]
    assert rel_err(a, z[key]) < TOL, (key, rel_err(a, z[key]))


@pytest.mark.slow
def test_golden_export_argmax(golden_ort):
    z, out = golden_ort
    np.testing.assert_array_equal(out["pose_logits"].argmax(1), z["pose_id"])
    np.testing.assert_array_equal(out["depth_logits"].argmax(1), z["depth_id"])


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def small_ckpt(small_model, tmp_path_factory):
    from mrcnet.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    path = d / "small.pth"
    save_checkpoint(path, small_model, dataset="synth", obj_ids=OBJ_IDS, depth_range=DEPTH)
    models = d / "models"
    models.mkdir()
    for i in OBJ_IDS:
        write_box_ply(models / f"obj_{i:06d}.ply")
    (models / "models_info.json").write_text(json.dumps({str(i): {"diameter": 14.1} for i in OBJ_IDS}))
    return path, models


def _cli(args):
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def test_cli_export_subset(small_ckpt, tmp_path):
    ckpt, models = small_ckpt
    out = tmp_path / "out"
    r = _cli(["--checkpoint", ckpt, "--models", models, "--out", out, "--object-ids", "3,1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "classifier.onnx" in r.output and "parity onnxruntime_fp32" in r.output
    m = load_manifest(out)  # the runtime's parser accepts it
    assert m.obj_ids == [3, 1] and m.dataset == "synth" and m.preset == "small"
    assert m.model_path(3).is_file() and m.model_path(1).is_file() and not (out / "models/obj_000002.ply").exists()
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["parity"]["onnxruntime_fp32"]["max"] < TOL
    assert raw["n_params"]["classifier"] > 0 and raw["checkpoint_sha256"] and len(raw["checkpoint_sha256"]) == 64
    assert read_metadata(out / "classifier.onnx")["obj_ids"] == [3, 1]
    assert not list(out.glob(".*tmp"))  # no temporaries left


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{d}/missing.pth"], "--checkpoint: file not found"),
    (["--object-ids", "4"], "object(s) [4] not in the checkpoint"),
    (["--object-ids", "1,x"], "'x' is not an integer"),
    (["--dataset", "tless"], "needs --object-ids"),
    (["--dataset", "nosuch"], "unknown dataset preset"),
    (["--models", "{d}/nomodels"], "--models: folder not found"),
    (["--precision", "fp16"], "needs --backend tensorrt"),
])
def test_cli_errors(small_ckpt, tmp_path, args, message):
    ckpt, models = small_ckpt
    base = {"--checkpoint": str(ckpt), "--models": str(models), "--out": str(tmp_path / "o")}
    extra = [a.format(d=tmp_path) for a in args]
    for k in list(base):
        if k in extra:
            base.pop(k)
    full = [x for kv in base.items() for x in kv] + extra
    r = _cli(full)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("mrcnet-export: error:") and message in err[-1], err[-1]
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_cli_tensorrt_absent_or_no_gpu(small_ckpt, tmp_path):
    """Without TensorRT / a GPU, --backend tensorrt writes the graphs and says in one line where
    the engines get built (--engines-only on the target)."""
    from mrcnet.export.tensorrt import TensorRTUnavailable, check_tensorrt

    try:
        check_tensorrt()
    except TensorRTUnavailable as e:
        expected = str(e).split(": ", 1)[-1].split(" (")[0]
    else:
        pytest.skip("TensorRT and a GPU are present")
    ckpt, models = small_ckpt
    r = _cli(["--checkpoint", ckpt, "--models", models, "--out", tmp_path / "o", "--backend", "tensorrt"])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stdout.splitlines() if "--engines-only" in line]
    assert len(notes) == 1 and notes[0].startswith(expected) and "fp32 graphs written" in notes[0]
    assert not load_manifest(tmp_path / "o").engines


def test_cli_engines_only(small_ckpt, tmp_path):
    """--engines-only works on an existing TensorRT export without torch: a missing export, an
    ONNX Runtime export (its sorted per-object convolutions are no TensorRT layers) or an int8
    request is a one-line error; without TensorRT / a GPU, that is the one line."""
    from mrcnet.export.tensorrt import TensorRTUnavailable, check_tensorrt

    r = _cli(["--engines-only", "--out", tmp_path / "none", "--backend", "tensorrt"])
    assert r.exit_code == 2 and "export directory not found" in r.stderr.strip().splitlines()[-1]
    ckpt, models = small_ckpt
    ort_out = tmp_path / "ort"
    assert _cli(["--checkpoint", ckpt, "--models", models, "--out", ort_out, "--quiet"]).exit_code == 0
    r = _cli(["--engines-only", "--out", ort_out, "--precision", "fp16"])
    last = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 2 and "an ONNX Runtime export" in last and "--backend tensorrt" in last, r.stderr
    out = tmp_path / "o"
    assert _cli(["--checkpoint", ckpt, "--models", models, "--out", out, "--backend", "tensorrt",
                 "--quiet"]).exit_code == 0
    r = _cli(["--engines-only", "--out", out, "--precision", "int8"])
    assert r.exit_code == 2 and "no TensorRT int8 graphs" in r.stderr.strip().splitlines()[-1]
    try:
        check_tensorrt()
    except TensorRTUnavailable as e:
        r = _cli(["--engines-only", "--out", out, "--precision", "fp16"])
        from mrcnet.runtime.cliopts import cli_message

        assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == f"mrcnet-export: error: {cli_message(e)}"
        assert cli_message(e).startswith("--backend tensorrt: ")
    else:
        r = _cli(["--engines-only", "--out", out, "--precision", "fp16"])
        assert r.exit_code == 0, r.output
        assert "fp16" in load_manifest(out).engines


def test_cli_out_required_with_checkpoint(small_ckpt):
    ckpt, models = small_ckpt
    r = _cli(["--checkpoint", ckpt, "--models", models])
    assert r.exit_code == 2 and "--out" in r.output


# ------------------------------------------------------------------------------------------ int8
@pytest.fixture(scope="module")
def bop_calib(tmp_path_factory):
    """A tiny BOP dataset: 2 box-shaped objects, one test scene of 3 images with one instance each."""
    import cv2

    from mrcnet.runtime.render import Renderer, load_mesh

    root = tmp_path_factory.mktemp("bop")
    (root / "models").mkdir()
    info = {}
    for oid in (1, 2):
        write_box_ply(root / "models" / f"obj_{oid:06d}.ply")
        info[str(oid)] = {"diameter": 74.8, "min_x": -30.0, "min_y": -20.0, "min_z": -10.0,
                          "size_x": 60.0, "size_y": 40.0, "size_z": 20.0}
    (root / "models" / "models_info.json").write_text(json.dumps(info))
    scene = root / "test" / "000001"
    (scene / "rgb").mkdir(parents=True)
    r = Renderer()
    for oid in (1, 2):
        r.add_object(oid, load_mesh(root / "models" / f"obj_{oid:06d}.ply"))
    K = np.array([[600.0, 0, 320], [0, 600.0, 240], [0, 0, 1]])
    rng = np.random.default_rng(0)
    cams, gts, infos = {}, {}, {}
    for im in range(3):
        oid = 1 + im % 2
        a = 0.4 + im
        R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]]) @ np.array(
            [[1, 0, 0], [0, np.cos(0.7), -np.sin(0.7)], [0, np.sin(0.7), np.cos(0.7)]])
        t = np.array([20.0 * im - 20, 10.0, 400.0 + 50 * im])
        res = r.render([oid], R[None], t[None], K, width=640, height=480)
        img = rng.uniform(0, 255, (480, 640, 3))
        img[res.mask[0]] = res.rgb[0][res.mask[0]] * 255
        cv2.imwrite(str(scene / "rgb" / f"{im:06d}.png"), img.astype(np.uint8))
        ys, xs = np.nonzero(res.mask[0])
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        cams[str(im)] = {"cam_K": K.ravel().tolist(), "depth_scale": 1.0}
        gts[str(im)] = [{"cam_R_m2c": R.ravel().tolist(), "cam_t_m2c": t.tolist(), "obj_id": oid}]
        infos[str(im)] = [{"bbox_obj": box, "bbox_visib": box, "px_count_all": int(res.mask[0].sum()),
                           "px_count_valid": int(res.mask[0].sum()), "px_count_visib": int(res.mask[0].sum()),
                           "visib_fract": 1.0}]
    for name, content in (("scene_camera", cams), ("scene_gt", gts), ("scene_gt_info", infos)):
        (scene / f"{name}.json").write_text(json.dumps(content))
    return root


@pytest.fixture(scope="module")
def ckpt2(tmp_path_factory):
    from mrcnet.checkpoint import save_checkpoint

    torch.manual_seed(77)
    model = build_model(2, DEPTH, "small").eval()
    path = tmp_path_factory.mktemp("ckpt2") / "small2.pth"
    save_checkpoint(path, model, dataset="synth", obj_ids=[1, 2], depth_range=DEPTH)
    return path


def test_cli_int8_bop_calibration(ckpt2, bop_calib, tmp_path):
    """--precision int8: QDQ graphs calibrated on BOP crops, referenced by the manifest, close to fp32."""
    out = tmp_path / "q"
    r = _cli(["--checkpoint", ckpt2, "--models", bop_calib / "models", "--out", out, "--precision", "int8",
              "--calib-data", bop_calib, "--calib-count", "3", "--quiet"])
    assert r.exit_code == 0, r.output + r.stderr
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["calibration"]["source"].startswith("BOP") and raw["calibration"]["detections"] == 3
    assert raw["calibration"]["held_out_detections"] == 1
    m = load_manifest(out)
    assert m.classifier.onnx == "classifier.int8.onnx" and m.regressor.onnx == "regressor.int8.onnx"
    assert raw["onnx_fp32"] == {"classifier": "classifier.onnx", "regressor": "regressor.onnx"}
    for g in ("classifier", "regressor"):
        q = onnx.load(str(out / f"{g}.int8.onnx"))
        ops = {n.op_type for n in q.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert (out / f"{g}.int8.onnx").stat().st_size < 0.5 * (out / f"{g}.onnx").stat().st_size
    agree = raw["parity"]["onnxruntime_int8"]
    # a random-weight network has nearly flat logits: int8 must still track fp32 (logit error well
    # below the logits' scale) and give proper rotations
    assert agree["pose_logits_err"] < 0.35 and agree["crops"] == 4
    feeds = example_inputs(2, 4, seed=4)
    sess = {g: ort_session(out / f"{g}.int8.onnx", threads=2) for g in ("classifier", "regressor")}
    got = run_ort(sess, feeds)
    assert np.isfinite(got["t"]).all()
    assert np.allclose(got["R"] @ got["R"].transpose(0, 2, 1), np.eye(3), atol=1e-4)


def test_synthetic_calibration_fallback(small_model, bop_calib):
    from mrcnet.export.quantize import calibration_feeds

    man = _manifest(small_model, [1, 2, 3])
    with pytest.raises(Exception):  # obj 3 has no mesh in this folder
        calibration_feeds(small_model, man, None, count=2, models_dir=bop_calib / "models")
    sub = subset_model(small_model, [0, 1])
    man = _manifest(sub, [1, 2])
    cal = calibration_feeds(sub, man, None, count=3, models_dir=bop_calib / "models")
    assert cal.source.startswith("synthetic") and cal.n_detections == 3 and len(cal.feeds) == 2
    f = cal.feeds[0]
    assert f["crops"].shape == (4, 4, CROP, CROP) and f["render"].shape == (4, 4, CROP, CROP)
    assert f["render"][:, :3].max() > 0.3 and f["render"][:, 3].sum() > 0  # the object is rendered
    assert f["crops"][:, 3].sum() > 0 and set(np.unique(f["obj_index"])) <= {0, 1}
    assert set(cal.regressor_batches()[0]) == set(REGRESSOR_INPUTS)


def test_cli_checkpoint_with_fewer_objects_than_preset(small_ckpt, tmp_path):
    """A 3-object checkpoint exported as T-LESS objects 5, 7, 9 (named by --object-ids, in order)."""
    ckpt, _ = small_ckpt
    models = tmp_path / "models"
    models.mkdir()
    for oid in (5, 7, 9):
        write_box_ply(models / f"obj_{oid:06d}.ply")
    r = _cli(["--checkpoint", ckpt, "--models", models, "--out", tmp_path / "o", "--dataset", "tless",
              "--object-ids", "5,7", "--quiet"])
    assert r.exit_code == 2 and "holds 3 objects, --object-ids names 2" in r.stderr
    r = _cli(["--checkpoint", ckpt, "--models", models, "--out", tmp_path / "o", "--dataset", "tless",
              "--object-ids", "5,7,9", "--quiet"])
    assert r.exit_code == 0, r.output + r.stderr
    m = load_manifest(tmp_path / "o")
    assert m.dataset == "tless" and m.obj_ids == [5, 7, 9] and m.depth_range == (0.05, 1.7)


def test_unfold_condconv_same_numbers(small_model):
    """The export-time CondConv rewrite (one-hot depthwise im2col) keeps the outputs and names."""
    import copy

    from mrcnet.export.optimize import UnfoldCondConv2d, optimize_for_export

    opt = optimize_for_export(copy.deepcopy(small_model))
    assert sum(isinstance(m, UnfoldCondConv2d) for m in opt.modules()) == 2  # the two 3x3 CondConvs
    assert list(opt.state_dict()) == list(small_model.state_dict())
    feeds = example_inputs(3, 8, obj_index=[2] * 4 + [0] * 4, seed=21)
    a, b = run_torch(small_model, feeds), run_torch(opt, feeds)
    for k in ("feat_x4", "pose_logits", "R", "t"):
        assert rel_err(b[k], a[k]) < 1e-5, k


@pytest.mark.parametrize("n_obj", [1, 3])
@pytest.mark.parametrize("k", [1, 3])
def test_stacked_condconv_same_numbers(n_obj, k):
    """One convolution over all objects' weights + each sample's slice equals the per-object conv."""
    from mrcnet.export.optimize import StackedCondConv2d

    torch.manual_seed(n_obj + k)
    cond = CondConv2d(n_obj, 5, 7, k)
    with torch.no_grad():
        cond.bias.normal_()
    x, obj = torch.randn(8, 5, 6, 9), torch.randint(0, n_obj, (8,))
    assert rel_err(StackedCondConv2d(cond)(x, obj).detach().numpy(), cond(x, obj).detach().numpy()) < 1e-6


def test_condconv_form_choice(small_model):
    """TensorRT graphs: one object the stacked (plain Conv) form, several gather + matmul; bad names refused."""
    import copy

    from mrcnet.export.optimize import StackedCondConv2d, UnfoldCondConv2d, condconv_form, optimize_for_export

    assert condconv_form(1) == "stacked" and condconv_form(3) == "gather" and condconv_form(3, "stacked") == "stacked"
    assert condconv_form(2, "gather", target="onnxruntime") == "gather"
    with pytest.raises(ValueError, match="'fast'"):
        condconv_form(2, "fast")
    torch.manual_seed(5)
    one = build_model(1, DEPTH, "small").eval()
    opt = optimize_for_export(copy.deepcopy(one))
    assert sum(isinstance(m, StackedCondConv2d) for m in opt.modules()) == 6
    assert list(opt.state_dict()) == list(one.state_dict())
    feeds = example_inputs(1, 4, seed=22)
    a, b = run_torch(one, feeds), run_torch(opt, feeds)
    for key in ("feat_x4", "pose_logits", "R", "t"):
        assert rel_err(b[key], a[key]) < 1e-5, key
    multi = optimize_for_export(copy.deepcopy(small_model))
    assert not any(isinstance(m, StackedCondConv2d) for m in multi.modules())
    assert sum(isinstance(m, UnfoldCondConv2d) for m in multi.modules()) == 2


@pytest.mark.parametrize("obj_index", [[2] * 4 + [0] * 4 + [2] * 4, [1] * 4, [0, 2, 1, 0, 2, 2, 1, 0]])
def test_sorted_decoder_same_numbers(small_model, obj_index):
    """The ONNX Runtime form (rows sorted by object, one static convolution per object's rows,
    absent objects' slices empty, rows put back) keeps the outputs, in torch and in the graph."""
    import copy

    from mrcnet.export.optimize import SlicedCondConv2d, SortedPoseDecoder, optimize_for_export

    opt = optimize_for_export(copy.deepcopy(small_model), target="onnxruntime")
    assert isinstance(opt.backbone.decoder, SortedPoseDecoder)
    assert sum(isinstance(m, SlicedCondConv2d) for m in opt.modules()) == 6
    assert list(opt.state_dict()) == list(small_model.state_dict())
    feeds = example_inputs(3, len(obj_index), obj_index=obj_index, seed=23)
    a, b = run_torch(small_model, feeds), run_torch(opt, feeds)
    for k in ("feat_x4", "pose_logits", "R", "t"):
        assert rel_err(b[k], a[k]) < 1e-5, k


def test_sorted_form_is_onnxruntime_only(demo_export):
    """auto: sorted for ONNX Runtime exports, stacked / gather for TensorRT; the demo export (the
    CLI's defaults) records its form and holds the sorting TopK; engines_for_export refuses it in
    one line."""
    from mrcnet.export.optimize import condconv_form
    from mrcnet.export.tensorrt import engines_for_export
    from mrcnet.export.trt_support import check_graph

    assert condconv_form(3, target="onnxruntime") == "sorted" == condconv_form(1, target="onnxruntime")
    assert condconv_form(3, target="tensorrt") == "gather"
    with pytest.raises(ValueError, match="ONNX Runtime only"):
        condconv_form(3, "sorted", target="tensorrt")
    with pytest.raises(ValueError, match="'cuda'"):
        condconv_form(3, target="cuda")
    assert json.loads((demo_export / "manifest.json").read_text())["condconv_form"] == "sorted"
    for g in ("classifier", "regressor"):
        ops = [n.op_type for n in onnx.load(demo_export / f"{g}.onnx").graph.node]
        assert ops.count("TopK") == 2, g  # the sort and its inverse
        assert any("(TopK): input 1" in p and "must be a constant" in p
                   for p in check_graph(demo_export / f"{g}.onnx", "11")), g  # the TensorRT check says no
    with pytest.raises(ValueError, match="ONNX Runtime export.*--backend tensorrt"):
        engines_for_export(demo_export, precision="fp16")


@pytest.mark.parametrize("group", [4, 1, 0])
def test_instance_group_batchnorm_same_numbers(group):
    """The export form of the batch-statistics normalisation (Transpose + InstanceNorm) gives the
    GroupBatchNorm2d numbers for TTA groups, per-sample and whole-batch statistics."""
    from mrcnet.export.optimize import InstanceGroupBatchNorm2d
    from mrcnet.model import GroupBatchNorm2d

    torch.manual_seed(group)
    bn = GroupBatchNorm2d(6, group_size=group)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    x = torch.randn(8, 6, 5, 7) * 3 + 1
    inst = InstanceGroupBatchNorm2d.of(bn)
    assert inst.weight is bn.weight and inst.group_size == group
    assert rel_err(inst(x).detach().numpy(), bn(x).detach().numpy()) < 1e-5


def test_norm_form_choice_and_graph(small_model, tmp_path):
    """optimize_for_export swaps every GroupBatchNorm2d (names kept, set_bn_group still reaches
    them, same outputs); the exported graph normalises with InstanceNormalization, not ReduceMeans."""
    import copy

    from mrcnet.export.optimize import InstanceGroupBatchNorm2d, optimize_for_export
    from mrcnet.model import GroupBatchNorm2d

    with pytest.raises(ValueError, match="'fused'"):
        optimize_for_export(copy.deepcopy(small_model), norm="fused")
    n_bn = sum(type(m) is GroupBatchNorm2d for m in small_model.modules())
    kept = optimize_for_export(copy.deepcopy(small_model), norm="reduce")
    assert sum(type(m) is GroupBatchNorm2d for m in kept.modules()) == n_bn
    opt = optimize_for_export(copy.deepcopy(small_model))
    assert sum(type(m) is InstanceGroupBatchNorm2d for m in opt.modules()) == n_bn > 0
    assert not any(type(m) is GroupBatchNorm2d for m in opt.modules())
    assert list(opt.state_dict()) == list(small_model.state_dict())
    opt.set_bn_group(1)
    assert {m.group_size for m in opt.modules() if isinstance(m, GroupBatchNorm2d)} == {1}
    opt.set_bn_group(4)
    feeds = example_inputs(3, 8, seed=24)
    a, b = run_torch(small_model, feeds), run_torch(opt, feeds)
    for k in ("feat_x4", "pose_logits", "R", "t"):
        assert rel_err(b[k], a[k]) < 1e-5, k
    paths = export_onnx(opt, tmp_path, _manifest(small_model, OBJ_IDS))
    ops = [n.op_type for n in onnx.load(str(paths["classifier"]), load_external_data=False).graph.node]
    assert ops.count("InstanceNormalization") >= n_bn // 2 and ops.count("ReduceMean") < 10, ops.count("ReduceMean")
    got = run_ort({g: ort_session(p, threads=2) for g, p in paths.items()}, feeds)
    for k in ("pose_logits", "R", "t"):
        assert rel_err(got[k], a[k]) < 1e-4, k


def test_export_graphs_are_lean(small_model, small_export, sessions):
    """The exported graphs are slimmed (no Shape / Constant chains) and the correlations are a few
    large ops: the regressor stays far below the per-displacement form's ~3000 nodes."""
    reg = onnx.load(str(small_export["regressor"]))
    ops = [n.op_type for n in reg.graph.node]
    assert len(ops) < 700, len(ops)
    # per-displacement correlations alone would be 3 x 49 Slices + 3 x 49 ReduceSums
    assert ops.count("Slice") < 40 and ops.count("ReduceSum") < 20 and ops.count("Constant") == 0
    assert ops.count("MatMul") >= 3  # one per correlation scale (plus the per-object convs)


def test_slim_graph_keeps_numbers(small_model, tmp_path):
    """onnxslim's clean-up removes nodes and leaves the outputs as they were."""
    import shutil

    from mrcnet.export.onnx_export import RegressorGraph, _export_one, _torch_feeds, slim_graph

    feeds = example_inputs(3, 4, seed=23)
    ref = run_torch(small_model, feeds)
    full = {**feeds, **ref}
    raw = tmp_path / "raw.onnx"
    with torch.no_grad():
        _export_one(RegressorGraph(small_model), _torch_feeds(full, REGRESSOR_INPUTS), REGRESSOR_INPUTS,
                    REGRESSOR_OUTPUTS, raw, 17)
    slim = tmp_path / "slim.onnx"
    shutil.copy(raw, slim)
    nodes = slim_graph(slim)
    assert nodes["after"] < nodes["before"] / 2
    outs = []
    for p in (raw, slim):
        s = ort_session(p, threads=2)
        outs.append(s.run(None, {i.name: full[i.name] for i in s.get_inputs()}))
    for a, b in zip(*outs):
        assert rel_err(b, a) < 1e-6

"""TensorRT engines (mrcnet.export.tensorrt): cache keys, build plans and one-line failures for
TensorRT 10.3 and 11 with fake ``tensorrt`` modules (tests/trt_fakes.py) everywhere; engine builds,
engine cache and TensorRT-vs-ONNX-Runtime parity (R and t of fp16 and int8 against fp32) only with
TensorRT and a CUDA GPU (skipped otherwise)."""
import json

import numpy as np
import pytest

from mrcnet.export import tensorrt as T
from mrcnet.export.tensorrt import (
    BuildPlan,
    EngineBuildError,
    TensorRTUnavailable,
    build_plan,
    check_tensorrt,
    engine_key,
    key_hash,
    profile_crops,
)
from trt_fakes import fake_tensorrt

ENV = {"name": "NVIDIA H100", "compute_capability": "9.0", "tensorrt": "10.9.0"}


def test_profile_crops():
    assert profile_crops(1) == (4, 4, 4)
    assert profile_crops(8) == (4, 16, 32)
    assert profile_crops(5) == (4, 12, 20)


def test_engine_key_changes_with_every_fact():
    base = engine_key(ENV, "a" * 64, "fp16", (4, 16, 32))
    h = key_hash(base)
    assert key_hash(engine_key(dict(ENV), "a" * 64, "fp16", [4, 16, 32])) == h  # stable
    variants = [
        engine_key({**ENV, "name": "NVIDIA A100"}, "a" * 64, "fp16", (4, 16, 32)),
        engine_key({**ENV, "compute_capability": "8.0"}, "a" * 64, "fp16", (4, 16, 32)),
        engine_key({**ENV, "tensorrt": "10.8.0"}, "a" * 64, "fp16", (4, 16, 32)),
        engine_key(ENV, "b" * 64, "fp16", (4, 16, 32)),
        engine_key(ENV, "a" * 64, "fp32", (4, 16, 32)),
        engine_key(ENV, "a" * 64, "fp16", (4, 16, 48)),
        engine_key(ENV, "a" * 64, "fp16", (4, 16, 32), plan=BuildPlan("fp32", False, ("FP16",), pin_fp32=True)),
        engine_key(ENV, "a" * 64, "fp16", (4, 16, 32), graph_sha="d" * 64),
    ]
    assert len({h, *map(key_hash, variants)}) == len(variants) + 1


def _gpu_or_skip():
    pytest.importorskip("tensorrt")
    try:
        return check_tensorrt()
    except TensorRTUnavailable as e:
        pytest.skip(str(e))


def test_unavailable_message_is_one_line():
    try:
        check_tensorrt()
    except TensorRTUnavailable as e:
        msg = str(e)
        assert "\n" not in msg and ("TensorRT" in msg or "GPU" in msg)
    else:
        pytest.skip("TensorRT and a GPU are present")


# --------------------------------------------------------------- TensorRT 10 / 11 build plans
ALL = ("fp32", "fp16", "int8")


@pytest.mark.parametrize("version", ["11.0.0", "11.5.1"])
def test_plan_tensorrt_11_is_strongly_typed_without_flags(version):
    for prec in ALL:
        p = build_plan(version, prec, ALL)
        assert p.strongly_typed and p.graph == prec and not p.set_flags and not p.pin_fp32
    with pytest.raises(ValueError, match="no fp16 graphs") as e:
        build_plan(version, "fp16", ("fp32",))
    assert "\n" not in str(e.value) and "--precision fp16" in str(e.value)


def test_plan_tensorrt_10():
    v = "10.3.0.26"
    assert build_plan(v, "fp32", ("fp32",)) == BuildPlan("fp32", False, clear_flags=("TF32",))
    assert build_plan(v, "fp16", ALL) == BuildPlan("fp16", True)  # the fp16 graph, strongly typed
    old = build_plan(v, "fp16", ("fp32",))  # an export without fp16 graphs: flag + pinning
    assert old.graph == "fp32" and set(old.set_flags) == {"FP16", "OBEY_PRECISION_CONSTRAINTS"} and old.pin_fp32
    q = build_plan(v, "int8", ALL)  # explicit quantisation, no calibrator
    assert q.graph == "int8" and "INT8" in q.set_flags and "OBEY_PRECISION_CONSTRAINTS" in q.set_flags and q.pin_fp32
    for ver in (v, "11.1.0"):
        with pytest.raises(ValueError, match="no TensorRT int8 graphs"):
            build_plan(ver, "int8", ("fp32", "fp16"))


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
@pytest.mark.parametrize("precision", ALL)
def test_build_engine_with_fake_tensorrt(tmp_path, version, precision):
    """The exact builder calls per version: nothing TensorRT 11 removed is touched there."""
    trt = fake_tensorrt(version, layers=(("/Add_3", ("float32",)), ("/backbone/conv/Conv", ("float32",)),
                                         ("/Shape_1", ("int64",))))
    plan = build_plan(version, precision, ("fp32",) if precision == "fp16" and version.startswith("10") else ALL)
    out = T.build_engine(tmp_path / "g.onnx", tmp_path / "g.engine", precision=precision, plan=plan,
                         keep_fp32={"/Add_3", "/Shape_1"}, max_detections=3, trt=trt)
    assert out.read_bytes() == b"ENGINE"
    net_flags = [c[1] for c in trt.calls if c[0] == "create_network"][0]
    set_flags = {c[1] for c in trt.calls if c[0] == "set_flag"}
    assert ("calibration_profile",) not in trt.calls
    if version.startswith("11"):
        assert net_flags == 1 << 1 and not set_flags  # STRONGLY_TYPED, precision from the graph
    elif precision == "fp32":
        assert net_flags == 0 and not set_flags and ("clear_flag", "TF32") in trt.calls
    elif precision == "fp16":
        assert net_flags == 0 and set_flags == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    else:
        assert net_flags == 0 and set_flags == {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"}


def test_pinning_on_tensorrt_10():
    trt = fake_tensorrt("10.3.0", layers=(("/Add_3", ("float32",)), ("/Add_3_cast", ("float32",)),
                                          ("/backbone/conv/Conv", ("float32",)), ("/Shape_1", ("int64",))))
    net = trt.Builder(None).create_network(0)
    assert T.pin_layers(trt, net, {"/Add_3", "/Shape_1"}) == 2  # the int64 shape layer is not pinned
    pinned = {layer.name for layer in net.layers if layer.precision == "float32"}
    assert pinned == {"/Add_3", "/Add_3_cast"}
    assert net.layers[0].out_types == {0: "float32"}


def test_tensorrt_11_without_strongly_typed_enum(tmp_path):
    trt = fake_tensorrt("11.2.0", strongly_typed_flag=False)
    T.build_engine(tmp_path / "g.onnx", tmp_path / "g.engine", precision="fp16", plan=build_plan("11.2", "fp16", ALL),
                   trt=trt)
    assert ("create_network", 0) in trt.calls  # strongly typed by default there


def test_apply_flags_refuses_a_missing_set_flag():
    trt = fake_tensorrt("11.0.0")
    with pytest.raises(EngineBuildError, match="no BuilderFlag.FP16"):
        T.apply_flags(trt, trt.Builder(None).create_builder_config(), BuildPlan("fp32", False, ("FP16",)))


def test_parse_failure_names_node_and_op(tmp_path):
    trt = fake_tensorrt("10.3.0", parse_ok=False)
    with pytest.raises(EngineBuildError) as e:
        T.build_engine(tmp_path / "regressor.onnx", tmp_path / "g.engine", precision="fp32", trt=trt)
    msg = str(e.value)
    assert "\n" not in msg and "'/backbone/Foo' (Foo)" in msg and "regressor.onnx" in msg and "10.3.0" in msg


@pytest.mark.parametrize("errors, expect", [
    (("[virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory (Requested size was 9 GiB)",),
     "ran out of GPU memory"),
    (("Error Code 10: Internal Error (Could not find any implementation for node /Conv)",), "built no engine"),
    ((), "no error was logged"),
])
def test_builder_returning_nothing_is_one_line(tmp_path, errors, expect):
    trt = fake_tensorrt("11.0.0", build_result=None, log_errors=errors)
    with pytest.raises(EngineBuildError) as e:
        T.build_engine(tmp_path / "classifier.fp16.onnx", tmp_path / "g.engine", precision="fp16",
                       plan=build_plan("11.0", "fp16", ALL), trt=trt)
    assert "\n" not in str(e.value) and expect in str(e.value) and "classifier.fp16.onnx" in str(e.value)


def test_unsupported_precision_on_gpu():
    with pytest.raises(EngineBuildError) as e:
        T.check_precision("int8", {"name": "Tesla K80", "compute_capability": "3.7"})
    assert "\n" not in str(e.value) and "K80" in str(e.value) and "use fp16" in str(e.value)
    T.check_precision("int8", {"name": "Orin", "compute_capability": "8.7"})
    T.check_precision("fp32", {"name": "K80", "compute_capability": "3.7"})


def test_tensorrt_too_old_or_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.6.1"))
    with pytest.raises(TensorRTUnavailable, match="10.3"):
        T._import_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable) as e:
        T._import_trt()
    assert "not installed" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_engines_for_export_uses_the_graph_of_the_version(tmp_path, monkeypatch, version):
    """engines_for_export on an export directory (no torch): the fp16 graph is what gets parsed."""
    from mrcnet.export.manifest import build_manifest, write_manifest
    from mrcnet.runtime.geometry import PAPER_BINS

    man = build_manifest(dataset="synth", preset="small", obj_ids=[1], depth_range=(0.05, 1.7), bins=PAPER_BINS,
                         fov_variant="inference", crop_size=128, bn_group=4, project_version="0", checkpoint_sha256="")
    for name in ("classifier.onnx", "regressor.onnx", "classifier.fp16.onnx", "regressor.fp16.onnx"):
        (tmp_path / name).write_bytes(name.encode())
    monkeypatch.setattr("mrcnet.runtime.manifest.Manifest.validate", lambda self: None, raising=False)
    write_manifest(tmp_path, man, precision_graphs={"fp16": {"classifier": "classifier.fp16.onnx",
                                                             "regressor": "regressor.fp16.onnx"}},
                   parity={"onnxruntime_fp32": {"max": 1e-6}})
    trt = fake_tensorrt(version)
    monkeypatch.setattr(T, "_import_trt", lambda: trt)
    monkeypatch.setattr(T, "gpu_info", lambda: {"name": "Orin", "compute_capability": "8.7"})
    monkeypatch.setenv("MRCNET_CACHE", str(tmp_path / "cache"))
    entry = T.engines_for_export(tmp_path, precision="fp16", max_detections=2)
    parsed = [c[1] for c in trt.calls if c[0] == "parse"]
    assert [p.rsplit("/", 1)[-1] for p in parsed] == ["classifier.fp16.onnx", "regressor.fp16.onnx"]
    assert entry["graph"] == "fp16" and entry["strongly_typed"] and entry["tensorrt"] == version
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["engines"]["fp16"]["classifier"] == "engines/classifier.fp16.engine"
    # one read of the manifest, written back whole: keys the runtime does not parse are kept
    assert raw["parity"] == {"onnxruntime_fp32": {"max": 1e-6}} and "fp16" in raw["precision_graphs"]
    assert raw["files"]["engines/classifier.fp16.engine"]["bytes"] == len(b"ENGINE")
    from mrcnet.export.manifest import sha256_file  # the runtime's load check compares the fp32 graph

    key = json.loads((tmp_path / "engines" / "classifier.fp16.json").read_text())["key"]
    assert key["onnx_sha256"] == sha256_file(tmp_path / "classifier.onnx")
    assert key["graph_sha256"] == sha256_file(tmp_path / "classifier.fp16.onnx")
    assert (tmp_path / "engines" / "classifier.fp16.engine").read_bytes() == b"ENGINE"


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_engines_only_cli_imports_no_torch(tmp_path, version):
    """``mrcnet-export --engines-only`` with torch blocked (meta_path finder) and a fake TensorRT:
    builds from the export's fp16 graphs, no torch module is ever imported."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    import runtime_fakes as F

    out = F.make_export(tmp_path / "export", obj_ids=(1,))
    raw = json.loads((out / "manifest.json").read_text())
    for g in ("classifier", "regressor"):
        (out / f"{g}.fp16.onnx").write_bytes((out / f"{g}.onnx").read_bytes())
    raw["precision_graphs"] = {"fp16": {g: f"{g}.fp16.onnx" for g in ("classifier", "regressor")}}
    (out / "manifest.json").write_text(json.dumps(raw))
    from conftest import TESTS as tests
    script = F.BLOCK_TORCH + textwrap.dedent(f"""
        sys.path.insert(0, {str(tests)!r})
        from trt_fakes import fake_tensorrt
        trt = fake_tensorrt({version!r})
        sys.modules["tensorrt"] = trt
        import mrcnet.export.tensorrt as T
        T.gpu_info = lambda: {{"name": "Orin", "compute_capability": "8.7"}}
        from mrcnet.export.cli import main
        try:
            main(["--engines-only", "--precision", "fp16", "--out", {str(out)!r}, "--quiet"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch imported"
        print("parsed", [c[1].rsplit("/", 1)[-1] for c in trt.calls if c[0] == "parse"])
    """)
    env = {**__import__("os").environ, "MRCNET_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parsed ['classifier.fp16.onnx', 'regressor.fp16.onnx']" in r.stdout
    assert "engines (fp16): engines/classifier.fp16.engine" in r.stdout
    assert json.loads((out / "manifest.json").read_text())["engines"]["fp16"]["tensorrt"] == version


# ------------------------------------------------------------------------------- GPU only
@pytest.fixture(scope="module")
def trt_export(tmp_path_factory):
    """The demo model's fp32, fp16 and TensorRT int8 graphs, plus real-looking held-out crops."""
    _gpu_or_skip()
    from mrcnet.checkpoint import load_checkpoint
    from mrcnet.export.fp16 import convert_graphs
    from mrcnet.export.manifest import build_manifest
    from mrcnet.export.onnx_export import export_onnx
    from mrcnet.export.optimize import optimize_for_export
    from mrcnet.export.quantize import calibration_feeds, quantize_graphs
    from mrcnet.runtime.assets import DEMO_CHECKPOINT, DEMO_MODELS

    model = load_checkpoint(DEMO_CHECKPOINT)
    model.set_bn_group(4)
    optimize_for_export(model)
    meta = model.meta
    man = build_manifest(dataset=meta.get("dataset") or "synth", preset=meta["preset"], obj_ids=meta["obj_ids"],
                         depth_range=meta["depth_range"], bins=model.cfg.bins, fov_variant="inference",
                         crop_size=model.cfg.crop_size, bn_group=4, project_version="0", checkpoint_sha256="")
    out = tmp_path_factory.mktemp("trt")
    paths = export_onnx(model, out, man)
    calib = calibration_feeds(model, man, None, count=8, models_dir=DEMO_MODELS)
    graphs = {"fp32": paths, "fp16": convert_graphs(paths), "int8": quantize_graphs(paths, calib, style="tensorrt")}
    return model, out, graphs, calib


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MRCNET_CACHE", str(tmp_path_factory.getbasetemp() / "mrcnet-cache"))


def _run_engines(out, entry, feeds):
    from mrcnet.runtime.backends import TensorRTBackend

    be = TensorRTBackend(out / entry["classifier"], out / entry["regressor"])
    try:
        c = be.run_classifier({k: feeds[k] for k in ("crops", "obj_index", "fov", "K_roi")})
        r = be.run_regressor({"render": feeds["render"]})
    finally:
        be.close()
    return {**c, **r}


@pytest.mark.gpu
def test_fp32_engines_match_onnxruntime(trt_export):
    from mrcnet.export.tensorrt import build_engines

    model, out, graphs, calib = trt_export
    entry, parity = build_engines(graphs, out, precision="fp32", max_detections=3, check_feeds=calib.held_out)
    assert (out / entry["classifier"]).is_file() and (out / entry["regressor"]).is_file()
    assert entry["max_detections"] == 3 and entry["profile_crops"] == [4, 8, 12]
    print("fp32", parity)
    for k in ("pose_logits", "depth_logits", "trans_logits", "R", "t"):
        assert parity[k] < 1e-3, (k, parity[k])
    assert parity["argmax_agree"] == 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("precision, max_deg, max_mm", [("fp16", 0.5, 1.0), ("int8", 5.0, 10.0)])
def test_reduced_precision_R_t_against_fp32(trt_export, precision, max_deg, max_mm):
    """R and t (not only logits) of the fp16 / int8 engines against the fp32 engines, chained
    stage 1 -> 2 on held-out crops: median gaps within the bounds measured under ONNX Runtime CPU."""
    from mrcnet.export.tensorrt import build_engines
    from mrcnet.runtime.geometry import rotation_angle_deg

    model, out, graphs, calib = trt_export
    feeds = calib.held_out
    e32, _ = build_engines(graphs, out, precision="fp32", max_detections=3)
    e, _ = build_engines(graphs, out, precision=precision, max_detections=3)
    assert e["graph"] == precision
    ref, got = _run_engines(out, e32, feeds), _run_engines(out, e, feeds)
    assert got["R"].dtype == np.float32 and got["t"].dtype == np.float32
    deg = rotation_angle_deg(got["R"], ref["R"])
    mm = np.linalg.norm(got["t"] - ref["t"], axis=-1)
    print(precision, "median deg", np.median(deg), "median mm", np.median(mm))
    assert np.all(np.isfinite(got["R"])) and np.all(np.isfinite(got["t"]))
    assert np.median(deg) < max_deg and np.median(mm) < max_mm


@pytest.mark.gpu
def test_engine_cache_rebuilds_stale(trt_export):
    from mrcnet.export.tensorrt import build_engines

    model, out, graphs, _ = trt_export
    msgs = []
    build_engines(graphs, out, precision="fp32", max_detections=3, progress=msgs.append)
    msgs.clear()
    build_engines(graphs, out, precision="fp32", max_detections=3, progress=msgs.append)
    assert all("up to date" in m for m in msgs) and len(msgs) == 2
    side = out / "engines" / "classifier.fp32.json"
    d = json.loads(side.read_text())
    d["key"]["gpu"] = "some other GPU"  # a foreign engine
    side.write_text(json.dumps(d))
    msgs.clear()
    build_engines(graphs, out, precision="fp32", max_detections=3, progress=msgs.append)
    assert any("classifier.fp32.engine: from the engine cache" in m for m in msgs)
    assert json.loads(side.read_text())["key"]["gpu"] != "some other GPU"
    msgs.clear()
    build_engines(graphs, out, precision="fp32", max_detections=2, progress=msgs.append)  # new profile
    assert any(m.startswith("building classifier.fp32.engine") for m in msgs)


def test_build_engines_older_call_writes_the_precision_graph(tmp_path, monkeypatch):
    """``build_engines({graph: fp32 path}, precision="fp16")`` (benchmarks/fps.py) converts first."""
    import runtime_fakes as F

    out = F.make_export(tmp_path / "export", obj_ids=(1,))
    trt = fake_tensorrt("11.0.0")
    monkeypatch.setattr(T, "_import_trt", lambda: trt)
    monkeypatch.setattr(T, "gpu_info", lambda: {"name": "Orin", "compute_capability": "8.7"})
    monkeypatch.setenv("MRCNET_CACHE", str(tmp_path / "cache"))
    entry, _ = T.build_engines({g: out / f"{g}.onnx" for g in ("classifier", "regressor")}, out, precision="fp16",
                               max_detections=1)
    assert (out / "classifier.fp16.onnx").is_file() and entry["graph"] == "fp16"
    assert [c[1].rsplit("/", 1)[-1] for c in trt.calls if c[0] == "parse"] == ["classifier.fp16.onnx",
                                                                              "regressor.fp16.onnx"]

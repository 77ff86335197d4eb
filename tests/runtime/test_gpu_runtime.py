"""The runtime's GPU paths, checked without a GPU: detections chunked to the backend's capacity,
ONNX Runtime provider options and IOBinding, TensorRT engine records checked at load (fake
engines), the renderer's EGL device choice (mocked device list), the backend comparator."""
import json
import os

import numpy as np
import pytest

from mrcnet.runtime.backends import (
    BackendError,
    OnnxRuntimeBackend,
    TensorRTBackend,
    compare_backends,
    create_backend,
    engine_mismatches,
    ensure_engines,
    provider_config,
    run_backend,
)
from mrcnet.runtime.backends import onnxruntime as ORT
from mrcnet.runtime.backends import tensorrt as TRT
from mrcnet.runtime.manifest import load_manifest, sha256_file
from mrcnet.runtime.pipeline import Pipeline, chunk_size
from mrcnet.runtime.render import context as C
from mrcnet.runtime.render.context import EGLDevice, RenderContextError

import runtime_fakes as F
from test_runtime import export_dir, manifest  # noqa: F401  (the fake export fixtures)

K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])
BOXES = [(100, 100, 200, 180), (300, 200, 380, 300), (20, 30, 90, 120), (400, 50, 520, 160), (250, 300, 330, 420)]
ENV = {"name": "NVIDIA RTX 4090", "compute_capability": "8.9", "tensorrt": "10.9.0.34"}


def scene():
    img = np.zeros((480, 640, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(BOXES):
        img[y1 + 5:y1 + 20, x1 + 5:x1 + 25] = 200 + 10 * i
        img[y2 - 20:y2 - 5, x2 - 20:x2 - 5] = 90 + 20 * i
    return img


class CapacityBackend:
    """A backend with TensorRT's hard limit: more than ``max_crops`` crops in one call fail."""

    def __init__(self, inner, max_crops):
        self.inner, self.max_crops, self.name = inner, max_crops, "capacity"
        self.sizes = []
        for a in ("classifier_inputs", "classifier_outputs", "regressor_inputs", "regressor_outputs"):
            setattr(self, a, getattr(inner, a))

    def run_classifier(self, feeds, fetch=None):
        n = len(feeds["crops"])
        if n > self.max_crops:
            raise BackendError(f"input 'crops' of {n} crops exceeds the engine profile maximum {self.max_crops}")
        self.sizes.append(n)
        return self.inner.run_classifier(feeds, fetch)

    def run_regressor(self, feeds, fetch=None):
        assert len(feeds["render"]) <= self.max_crops
        return self.inner.run_regressor(feeds, fetch)

    def close(self):
        self.inner.close()


# ------------------------------------------------------------------------------------ chunking
def test_chunks_fit_the_capacity_and_give_the_poses_of_one_batch(manifest):
    dets = [(1 + i % 2, b) for i, b in enumerate(BOXES)] + [(7, (0, 0, 20, 20))]
    one = OnnxRuntimeBackend.from_manifest(manifest, "onnxruntime-cpu", max_detections=None)
    assert one.max_crops is None
    ref = Pipeline(one, manifest, F.SilhouetteRenderer()).estimate_frame(scene(), K, dets)
    capped = CapacityBackend(create_backend(manifest, "onnxruntime-cpu", max_detections=None), max_crops=8)
    renderer = F.SilhouetteRenderer()
    got = Pipeline(capped, manifest, renderer).estimate_frame(scene(), K, dets)
    assert capped.sizes == [8, 8, 4]  # 5 detections -> 2 + 2 + 1
    assert [len(c[0]) for c in renderer.calls] == [8, 8, 4]
    assert len(got.poses) == len(ref.poses) == 5 and len(got.skipped) == len(ref.skipped) == 1
    for a, b in zip(got.poses, ref.poses):
        assert a.obj_id == b.obj_id
        np.testing.assert_array_equal(a.R, b.R)
        np.testing.assert_array_equal(a.t, b.t)
        np.testing.assert_array_equal(a.box, b.box)
        assert a.score == b.score
    assert got.timings["total"] >= got.timings["classifier"] > 0
    # the pipeline's own limit, below the capacity: one detection per call
    capped.sizes.clear()
    Pipeline(capped, manifest, F.SilhouetteRenderer(), max_detections=1).estimate_frame(scene(), K, dets)
    assert capped.sizes == [4] * 5


def test_chunk_size_rules(manifest):
    ort_be = create_backend(manifest, "onnxruntime-cpu")
    assert ort_be.max_crops == 4 * ORT.DEFAULT_MAX_DETECTIONS and chunk_size(ort_be, 4) == ORT.DEFAULT_MAX_DETECTIONS
    assert create_backend(manifest, "onnxruntime-cpu", max_detections=3).max_crops == 12
    assert chunk_size(CapacityBackend(ort_be, 32), 4, max_detections=50) == 8
    assert chunk_size(CapacityBackend(ort_be, 32), 4, max_detections=2) == 2
    with pytest.raises(ValueError, match="less than one detection"):
        chunk_size(CapacityBackend(ort_be, 3), 4)
    with pytest.raises(ValueError, match="max_detections"):
        chunk_size(ort_be, 4, max_detections=0)


# ------------------------------------------------------------------------- ONNX Runtime options
def test_provider_config_gpu_options(tmp_path):
    shapes = {"crops": ("N", 4, 256, 256), "obj_index": ("N",), "K_roi": ("N", 3, 3)}
    cfg = provider_config(list(ORT.ORT_PROVIDER_ORDER), 1, cache_dir=tmp_path, fp16=True, input_shapes=shapes,
                          crops=(4, 16, 32))
    assert [p for p, _ in cfg] == list(ORT.ORT_PROVIDER_ORDER)
    trt, cuda, cpu = (o for _, o in cfg)
    assert trt["device_id"] == "1" and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_enable"] == "True" and trt["trt_timing_cache_path"] == str(tmp_path)
    assert trt["trt_profile_min_shapes"] == "crops:4x4x256x256,obj_index:4,K_roi:4x3x3"
    assert trt["trt_profile_opt_shapes"] == "crops:16x4x256x256,obj_index:16,K_roi:16x3x3"
    assert trt["trt_profile_max_shapes"] == "crops:32x4x256x256,obj_index:32,K_roi:32x3x3"
    assert cuda == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "True"}
    assert cpu == {}
    assert provider_config(["TensorrtExecutionProvider"])[0][1]["trt_fp16_enable"] == "False"


def test_manifest_providers_from_the_export(export_dir, tmp_path):
    import shutil

    d = tmp_path / "exp"
    shutil.copytree(export_dir, d)
    raw = json.loads((d / "manifest.json").read_text())
    raw["engines"] = {"fp16": {"classifier": "engines/classifier.fp16.engine", "regressor": "engines/regressor.fp16.engine",
                               "max_detections": 6, "profile_crops": [4, 12, 24]}}
    (d / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(d)
    provs = ORT.manifest_providers(m, "auto", device_id=2, available=list(ORT.ORT_PROVIDER_ORDER))
    trt = dict(provs["classifier"])["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_path"] == str(d / ORT.ORT_TRT_CACHE_DIR) and (d / ORT.ORT_TRT_CACHE_DIR).is_dir()
    assert trt["trt_fp16_enable"] == "True" and trt["device_id"] == "2"
    assert trt["trt_profile_max_shapes"].startswith("crops:24x4x256x256,") and "K_roi:24x3x3" in trt["trt_profile_max_shapes"]
    reg = dict(provs["regressor"])["TensorrtExecutionProvider"]
    assert "render:12x4x256x256" in reg["trt_profile_opt_shapes"] and "feat:12x" in reg["trt_profile_opt_shapes"]
    assert dict(provs["regressor"])["CUDAExecutionProvider"]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert ORT.manifest_providers(m, "onnxruntime-cpu") == {"classifier": [("CPUExecutionProvider", {})],
                                                            "regressor": [("CPUExecutionProvider", {})]}
    # on the CPU nothing changes: no IOBinding, no CUDA device
    be = OnnxRuntimeBackend.from_manifest(m, "onnxruntime-cpu")
    assert be.providers == ["CPUExecutionProvider"] and not be.io_binding and be.cuda_device is None


def test_iobinding_path_gives_the_plain_results(manifest):
    """The GPU path (IOBinding: classifier outputs kept as OrtValues and bound by name into the
    regressor, only the fetched outputs copied back) run on CPU OrtValues."""
    plain = create_backend(manifest, "onnxruntime-cpu")
    bound = OnnxRuntimeBackend(manifest.path("classifier.onnx"), manifest.path("regressor.onnx"),
                               providers=["CPUExecutionProvider"], io_binding=True)
    rng = np.random.default_rng(3)
    n = 8
    feeds = {"crops": rng.random((n, 4, 256, 256), np.float32), "obj_index": np.arange(n) % 2,
             "fov": np.zeros((n, 3)), "K_roi": np.tile(K, (n, 1, 1)), "render": rng.random((n, 4, 256, 256), np.float32)}
    a, b = run_backend(plain, feeds), run_backend(bound, feeds)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    fetched = bound.run_regressor({"render": feeds["render"]}, fetch=["t"])
    assert list(fetched) == ["t"] and isinstance(fetched["t"], np.ndarray)
    assert all(type(v).__name__ == "OrtValue" for v in bound._last.values())


# ----------------------------------------------------------------------- TensorRT engine records
def fake_engines(export_dir, tmp_path, env=ENV, precision="fp16"):
    """Copy of the fake export with ``precision`` engine files and build records for ``env``."""
    import shutil

    d = tmp_path / f"trt-{precision}"
    shutil.copytree(export_dir, d)
    write_engines(d, env, precision)
    return load_manifest(d)


def write_engines(d, env, precision="fp16", calls=None):
    (d / "engines").mkdir(exist_ok=True)
    entry = {"max_detections": 8, "profile_crops": [4, 16, 32], "gpu": env["name"],
             "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"]}
    for g in ("classifier", "regressor"):
        (d / "engines" / f"{g}.{precision}.engine").write_bytes(b"not a real engine " + env["name"].encode())
        key = {"gpu": env["name"], "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"],
               "onnx_sha256": sha256_file(d / f"{g}.onnx"), "precision": precision, "profile_crops": [4, 16, 32]}
        (d / "engines" / f"{g}.{precision}.json").write_text(json.dumps({"key": key, "hash": "x"}))
        entry[g] = f"engines/{g}.{precision}.engine"
    raw = json.loads((d / "manifest.json").read_text())
    raw["engines"] = {precision: entry}
    (d / "manifest.json").write_text(json.dumps(raw))
    if calls is not None:
        calls.append(precision)
    return entry


def test_engine_records_match_only_their_machine(export_dir, tmp_path):
    m = fake_engines(export_dir, tmp_path)
    assert engine_mismatches(m, "fp16", ENV) == []
    other = {**ENV, "name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}
    probs = engine_mismatches(m, "fp16", other)
    assert any("gpu NVIDIA RTX 4090, running NVIDIA A100" in p for p in probs)
    assert any("compute capability 8.9, running 8.0" in p for p in probs)
    assert engine_mismatches(m, "fp16", {**ENV, "tensorrt": "11.0.0"})[0].endswith("tensorrt 10.9.0.34, running 11.0.0")
    # a changed ONNX graph makes its engine stale
    onnx_file = m.path("regressor.onnx")
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    assert engine_mismatches(m, "fp16", ENV) == ["regressor engine built from another regressor.onnx (sha256 differs)"]
    # no build record: not trusted
    os.unlink(m.path("engines/classifier.fp16.json"))
    assert "classifier engine has no build record" in engine_mismatches(m, "fp16", ENV)[0]


def test_mismatched_engines_are_rebuilt_when_the_builder_is_there(export_dir, tmp_path):
    m = fake_engines(export_dir, tmp_path, env={**ENV, "name": "NVIDIA A100"})
    calls, lines = [], []

    def builder(root, precision, max_detections, progress):
        assert (root, max_detections) == (m.root, 8)
        progress("built classifier.fp16.engine")
        write_engines(root, ENV, precision, calls)

    m2 = ensure_engines(m, "fp16", ENV, builder=builder, progress=lines.append)
    assert calls == ["fp16"] and engine_mismatches(m2, "fp16", ENV) == []
    assert lines[0].startswith("tensorrt: rebuilding the fp16 engines of") and "running NVIDIA RTX 4090" in lines[0]
    assert ensure_engines(m2, "fp16", ENV, builder=builder, progress=lines.append) is m2 and calls == ["fp16"]
    # a builder that leaves them foreign: stop
    m3 = fake_engines(export_dir, tmp_path / "b", env={**ENV, "name": "NVIDIA A100"})
    with pytest.raises(BackendError, match="still do not match"):
        ensure_engines(m3, "fp16", ENV, builder=lambda *a, **k: None, progress=lines.append)


def test_foreign_engines_never_run_without_a_builder(export_dir, tmp_path, monkeypatch):
    m = fake_engines(export_dir, tmp_path, env={**ENV, "tensorrt": "8.6.1"})
    ran = []
    monkeypatch.setattr(TensorRTBackend, "__init__", lambda self, *a, **k: ran.append(a))
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_manifest(m, "fp16", builder=False, env=ENV)
    msg = str(e.value)
    assert "\n" not in msg and ran == []
    assert "tensorrt 8.6.1, running 10.9.0.34" in msg
    assert f"mrcnet-export --engines-only --out {m.root} --precision fp16 --max-detections 8" in msg
    # int8 engines need calibration: never rebuilt here
    m8 = fake_engines(export_dir, tmp_path / "i8", env={**ENV, "tensorrt": "8.6.1"}, precision="int8")
    with pytest.raises(BackendError, match="need calibration"):
        TensorRTBackend.from_manifest(m8, "int8", builder=lambda *a, **k: None, env=ENV)
    # matching engines go on to load
    TensorRTBackend.from_manifest(fake_engines(export_dir, tmp_path / "ok"), "fp16", builder=False, env=ENV)
    assert len(ran) == 1 and str(ran[0][0]).endswith("engines/classifier.fp16.engine")


def test_default_builder_is_the_exporters():
    """The exporter registers its builder in setup.cfg's entry point group; the runtime finds it there."""
    from mrcnet.export.tensorrt import engines_for_export

    assert TRT.default_engine_builder() is engines_for_export


def test_no_registered_builder_means_none(monkeypatch):
    """A runtime-only install (no package registers a builder, or its dependencies are missing): None."""
    class EP:
        name = TRT.ENGINE_BUILDER_NAME

        def load(self):
            raise ImportError("no module named tensorrt")

    class EPs:
        def __init__(self, eps):
            self.eps = eps

        def select(self, group):
            return self.eps if group == TRT.ENGINE_BUILDERS_GROUP else []

    monkeypatch.setattr(TRT, "entry_points", lambda: EPs([]))
    assert TRT.default_engine_builder() is None
    monkeypatch.setattr(TRT, "entry_points", lambda: EPs([EP()]))
    assert TRT.default_engine_builder() is None


# ----------------------------------------------------------------------------------- renderer
DEVICES = [EGLDevice(0, "software"), EGLDevice(1, "cuda", cuda=1, drm="/dev/dri/card1"),
           EGLDevice(2, "cuda", cuda=0, drm="/dev/dri/card0"), EGLDevice(3, "drm", drm="/dev/dri/card2")]


def test_render_device_choice(monkeypatch):
    monkeypatch.setattr(C, "list_devices", lambda: list(DEVICES))
    assert C.resolve_device(None) == 2  # CUDA device 0, not EGL device 0 (the software one)
    assert C.resolve_device(None, cuda_device=1) == 1
    assert C.resolve_device(None, cuda_device=5) == 1  # no such CUDA device: the first NVIDIA one
    assert C.resolve_device("cuda:1") == 1 and C.resolve_device("cuda:0") == 2 and C.resolve_device("cuda") == 2
    assert C.resolve_device("3") == 3 and C.resolve_device(1) == 1
    assert C.resolve_device("cpu") == 0
    with pytest.raises(RenderContextError, match="no EGL device for CUDA device 4"):
        C.resolve_device("cuda:4")
    monkeypatch.setattr(C, "list_devices", lambda: [EGLDevice(0, "software")])
    assert C.resolve_device(None) == 0  # no NVIDIA EGL: the software rasteriser

    def broken():
        raise RenderContextError("libEGL lacks eglQueryDevicesEXT")

    monkeypatch.setattr(C, "list_devices", broken)
    assert C.resolve_device(None) == 0


def test_software_fallback_warning():
    llvm = "llvmpipe (LLVM 15.0.6, 256 bits), OpenGL 4.5 (Core Profile) Mesa 22.3.6"
    w = C.software_fallback_warning(llvm, gpu=True)
    assert w and "\n" not in w and "llvmpipe" in w and "graphics" in w
    assert C.software_fallback_warning(llvm, gpu=False) is None
    assert C.software_fallback_warning("NVIDIA H100 80GB HBM3/PCIe/SSE2, OpenGL 4.6.0 NVIDIA 550.54", gpu=True) is None


def test_render_network_input_equals_the_full_result():
    from mrcnet.runtime.render import Mesh, Renderer
    from mrcnet.testing import box_mesh

    r = Renderer()
    r.add_object(1, Mesh.from_arrays(*box_mesh((60.0, 40.0, 20.0))))
    n = 6
    ang = np.linspace(0, 1.5, n)
    R = np.stack([[[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]] for a in ang])
    t = np.stack([[10.0 * i - 20, 5.0, 400.0 + 30 * i] for i in range(n)])
    t[-1, 2] = -100.0  # behind the camera: an empty view
    Kc = np.array([[500.0, 0, 128], [0, 500, 128], [0, 0, 1]])
    a = r.render([1] * n, R, t, Kc, 256, 256).network_input()
    b = r.render_network_input([1] * n, R, t, Kc, 256)
    np.testing.assert_array_equal(a, b)
    assert b[:-1, 3].any(axis=(1, 2)).all() and not b[-1].any()
    assert "OpenGL" in r.description


# ---------------------------------------------------------------------------------- comparator
class Shifted:
    """A backend whose regressor t is off by ``dt`` mm (and which records its regressor feeds)."""

    def __init__(self, inner, dt):
        self.inner, self.dt, self.fed = inner, dt, []
        for a in ("classifier_inputs", "classifier_outputs", "regressor_inputs", "regressor_outputs"):
            setattr(self, a, getattr(inner, a))

    def run_classifier(self, feeds, fetch=None):
        return self.inner.run_classifier(feeds, fetch)

    def run_regressor(self, feeds, fetch=None):
        self.fed.append(dict(feeds))
        out = self.inner.run_regressor(feeds, fetch)
        if "t" in out:
            out["t"] = out["t"] + np.asarray(self.dt, np.float32)
        return out


def test_comparator_reports_the_differences(manifest):
    rng = np.random.default_rng(5)
    n = 8
    feeds = {"crops": rng.random((n, 4, 256, 256), np.float32), "obj_index": np.arange(n) % 2,
             "fov": np.zeros((n, 3), np.float32), "K_roi": np.tile(K, (n, 1, 1)).astype(np.float32),
             "render": rng.random((n, 4, 256, 256), np.float32)}
    a, b = create_backend(manifest, "onnxruntime-cpu"), create_backend(manifest, "onnxruntime-cpu")
    same = compare_backends(a, b, feeds)
    assert same["max"] == 0.0 and same["argmax_agree"] == 1.0 and same["rot_agree_5deg"] == 1.0
    assert set(same) >= {"R_init", "t_init", "rot_score", "R", "t", "t_agree_5mm"}
    shift = np.array([0.0, 0.0, 7.0])
    off = compare_backends(a, Shifted(b, shift), feeds, keys=["R", "t"])
    t_scale = np.abs(run_backend(a, feeds)["t"]).max()
    assert off["t"] == pytest.approx(7.0 / t_scale, rel=1e-5) and off["R"] == 0.0
    assert off["t_agree_5mm"] == 0.0 and off["rot_agree_5deg"] == 1.0 and off["max"] == off["t"]
    assert "argmax_agree" not in off
    # shared stage 1: the candidate's regressor gets the reference's classifier tensors
    cand = Shifted(b, 0.0)
    compare_backends(a, cand, feeds, shared_stage1=True)
    ref_t_init = run_backend(a, feeds)["t_init"]
    np.testing.assert_array_equal(cand.fed[-1]["t_init"], ref_t_init)
    assert set(cand.fed[-1]) == set(a.regressor_inputs)


# ------------------------------------------------------------------------------------------ CLI
def test_run_summary_names_the_renderer_and_cli_options():
    from click.testing import CliRunner

    from mrcnet.runtime import cli, runner

    s = runner.RunSummary(backend="onnxruntime-cpu", renderer="llvmpipe (LLVM 15), OpenGL 4.5")
    assert s.to_dict()["renderer"] == "llvmpipe (LLVM 15), OpenGL 4.5"
    assert "renderer llvmpipe" in s.format().splitlines()[0]
    r = cli.make_renderer("cpu")
    assert C.is_software(r.description)
    helptext = CliRunner().invoke(cli.main, ["--help"]).output
    assert "--chunk-size" in helptext and "cuda:K" in helptext
    with pytest.raises(RuntimeError, match="no EGL device for CUDA device 7"):
        cli.make_renderer("cuda:7")


def test_profile_needs_fixed_inner_dimensions():
    assert ORT.profile_shapes({"crops": ("N", 4, "H", 256)}, (4, 8, 16)) == {}
    assert ORT.profile_shapes({"crops": ("N", 4, 8, 8)}, (4, 8, 16))["trt_profile_opt_shapes"] == "crops:8x4x8x8"

"""The torch-free runtime: manifest, ONNX Runtime backend, pipeline (on a fake export whose graphs
have the contract I/O names), torch made unimportable."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mrcnet.runtime import preprocess as P
from mrcnet.runtime.backends import BackendError, OnnxRuntimeBackend, create_backend
from mrcnet.runtime.geometry import tta_rotations
from mrcnet.runtime.manifest import ManifestError, load_manifest
from mrcnet.runtime.pipeline import STAGES, Pipeline

import runtime_fakes as F
from conftest import DATA

K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return F.make_export(tmp_path_factory.mktemp("export"), obj_ids=(1, 2))


@pytest.fixture(scope="module")
def manifest(export_dir):
    return load_manifest(export_dir)


class Recording:
    """Backend wrapper that counts calls and keeps the feeds and fetched outputs."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls = []
        for a in ("classifier_inputs", "classifier_outputs", "regressor_inputs", "regressor_outputs"):
            setattr(self, a, getattr(inner, a))

    def run_classifier(self, feeds, fetch=None):
        out = self.inner.run_classifier(feeds, fetch)
        self.calls.append(("classifier", feeds, out))
        return out

    def run_regressor(self, feeds, fetch=None):
        out = self.inner.run_regressor(feeds, fetch)
        self.calls.append(("regressor", feeds, out))
        return out

    def close(self):
        self.inner.close()


def scene_image():
    """Black frame with bright patches: one at the top-left of box A, one at the bottom-right of
    box B, so the fake classifier's TTA scores pick different in-plane rotations."""
    img = np.zeros((480, 640, 3), np.uint8)
    img[105:120, 105:125] = 250  # box A = (100, 100, 200, 180)
    img[280:298, 362:378] = 230  # box B = (300, 200, 380, 300)
    img[60:400, 500:520] = 90
    return img


def expected_t(box, obj_index, K):
    x1, y1, x2, y2 = box
    c = np.array([(x1 + x2) / 2, (y1 + y2) / 2, 1.0])
    r = 256.0 / (1.5 * max(x2 - x1, y2 - y1))
    tz = (F.D0 + F.D_STEP * obj_index) * r * K[0, 0]
    return tz * np.linalg.inv(K) @ c


# ------------------------------------------------------------------------------------ manifest
def test_manifest_round_trip_and_paths(manifest, export_dir, tmp_path):
    assert manifest.obj_ids == [1, 2] and manifest.obj_index(2) == 1
    assert manifest.model_path(2) == export_dir.resolve() / "models" / "obj_000002.ply"
    manifest.save(tmp_path)
    d = json.loads((tmp_path / "manifest.json").read_text())
    assert d["bins"] == {"n_side": 2, "n_depth": 100, "n_cells": 32} and "root" not in d
    with pytest.raises(KeyError, match="object 9"):
        manifest.obj_index(9)


def test_manifest_errors_name_the_directory(tmp_path, export_dir):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    d = json.loads((export_dir / "manifest.json").read_text())
    del d["obj_ids"]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="lacks key 'obj_ids'"):
        load_manifest(tmp_path)
    d = json.loads((export_dir / "manifest.json").read_text())
    d["regressor"]["outputs"] = ["R"]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=r"contract tensors \['t'\]"):
        load_manifest(tmp_path)


# ------------------------------------------------------------------------------------- backend
def test_ort_backend_chains_classifier_tensors_by_name(manifest):
    be = create_backend(manifest, "onnxruntime-cpu")
    assert isinstance(be, OnnxRuntimeBackend) and be.name == "onnxruntime-cpu"
    assert set(be.regressor_inputs) == {"render", "feat", "R_init", "t_init"}
    n = 8
    rng = np.random.default_rng(0)
    feeds = {"crops": rng.random((n, 4, 256, 256), np.float32), "obj_index": np.arange(n) % 2,
             "fov": np.zeros((n, 3)), "K_roi": np.tile(K, (n, 1, 1))}
    out1 = be.run_classifier(feeds, fetch=["t_init", "rot_score"])
    assert set(out1) == {"t_init", "rot_score"} and out1["t_init"].shape == (n, 3)
    np.testing.assert_allclose(out1["t_init"][:, 2], (F.D0 + F.D_STEP * (np.arange(n) % 2)) * 600, rtol=1e-6)
    out2 = be.run_regressor({"render": np.zeros((n, 4, 256, 256), np.float32)})
    assert set(out2) == {"R", "t"}
    np.testing.assert_allclose(out2["t"], out1["t_init"], rtol=1e-6)
    with pytest.raises(BackendError, match="classifier inputs missing"):
        be.run_classifier({"crops": feeds["crops"]})
    with pytest.raises(BackendError, match="unknown regressor outputs"):
        be.run_regressor({"render": np.zeros((n, 4, 256, 256), np.float32)}, fetch=["nope"])
    be.close()


def test_backend_factory_errors(manifest):
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend(manifest, "cuda-magic")
    with pytest.raises(BackendError, match="no TensorRT engines|tensorrt"):
        create_backend(manifest, "tensorrt")


# ------------------------------------------------------------------------------------ pipeline
def test_pipeline_poses_one_call_per_stage_and_skips(manifest):
    be = Recording(create_backend(manifest, "onnxruntime-cpu"))
    renderer = F.SilhouetteRenderer()
    pipe = Pipeline(be, manifest, renderer)
    boxes = {"A": (100, 100, 200, 180), "B": (300, 200, 380, 300)}
    dets = [(1, boxes["A"]), (7, (0, 0, 20, 20)), (2, boxes["B"]), (1, (700, 10, 800, 50)), (2, (5, 5, 5, 40))]
    res = pipe.estimate_frame(scene_image(), K, dets)
    # bad detections reported, good ones run, in one classifier and one regressor call
    assert [p.obj_id for p in res.poses] == [1, 2]
    assert len(res.skipped) == 3
    assert "object 7 is not in the exported model" in res.skipped[0][1]
    assert "outside the 640x480 image" in res.skipped[1][1] and "empty" in res.skipped[2][1]
    assert [c[0] for c in be.calls] == ["classifier", "regressor"]
    assert be.calls[0][1]["crops"].shape == (8, 4, 256, 256)
    np.testing.assert_array_equal(be.calls[0][1]["obj_index"], [0] * 4 + [1] * 4)
    assert set(res.timings) == {*STAGES, "total"} and all(v >= 0 for v in res.timings.values())
    # expected poses of the fake graphs: R = Rz_k^T (k = argmax rot_score), t on the box-centre ray
    scores = be.calls[0][2]["rot_score"].reshape(2, 4)
    Rz = tta_rotations(4)
    ks = scores.argmax(1)
    assert set(ks) != {0}, "the test image should make the TTA pick a rotated crop"
    for i, (p, box) in enumerate(zip(res.poses, boxes.values())):
        np.testing.assert_allclose(p.R, Rz[ks[i]].T, atol=1e-6)
        np.testing.assert_allclose(p.t, expected_t(box, i, K), rtol=1e-5)
        assert p.score == pytest.approx(scores[i, ks[i]])
        np.testing.assert_array_equal(p.box, box)
    # the renderer drew each crop's object at its stage-1 pose with K_roi
    obj_ids, R, t, Kr = renderer.calls[-1]
    np.testing.assert_array_equal(obj_ids, [1] * 4 + [2] * 4)
    np.testing.assert_allclose(Kr, be.calls[0][1]["K_roi"], rtol=1e-6)
    np.testing.assert_allclose(R, np.tile(np.eye(3), (8, 1, 1)))
    # render tensor = grey render in [0, 1] + box map of the render's mask
    render = be.calls[1][1]["render"]
    assert render.shape == (8, 4, 256, 256) and render.dtype == np.float32
    mask = render[:, 0] > 0
    np.testing.assert_allclose(render[:, :3].max(axis=(2, 3)), 0.6, atol=1e-6)
    np.testing.assert_array_equal(render[:, 3], P.box_map(P.box_loc_from_masks(mask)))
    assert mask[:, 128, 128].all()  # the object sits at the crop centre


def test_pipeline_no_valid_detection_and_bad_inputs(manifest):
    pipe = Pipeline(create_backend(manifest, "onnxruntime-cpu"), manifest, F.SilhouetteRenderer())
    res = pipe.estimate_frame(scene_image(), K, [(3, (10, 10, 50, 50))])
    assert res.poses == [] and len(res.skipped) == 1
    assert pipe.estimate(scene_image(), K, []) == []
    with pytest.raises(P.InputError, match="camera"):
        pipe.estimate(scene_image(), np.eye(2), [(1, (10, 10, 50, 50))])
    with pytest.raises(P.InputError, match="frame"):
        pipe.estimate(np.zeros((4, 4, 5)), K, [(1, (10, 10, 50, 50))])


def test_pipeline_runs_with_torch_unimportable(export_dir):
    """Import every runtime module and run the pipeline with torch blocked (meta_path finder)."""
    script = F.BLOCK_TORCH + textwrap.dedent(f"""
        import json
        sys.path.insert(0, {str(DATA.parent)!r})
        import numpy as np
        import mrcnet.runtime
        from mrcnet.runtime import backends, cli, detections, manifest, overlay, pipeline, tracking, video_io
        import runtime_fakes as F
        m = manifest.load_manifest({str(export_dir)!r})
        pipe = pipeline.Pipeline(backends.create_backend(m, "onnxruntime-cpu"), m, F.SilhouetteRenderer())
        img = np.zeros((480, 640, 3), np.uint8); img[100:150, 100:150] = 200
        K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])
        poses = pipe.estimate(img, K, [(1, (100, 100, 200, 180))])
        assert "torch" not in sys.modules
        print(json.dumps([p.to_dict() for p in poses]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    poses = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(poses) == 1 and poses[0]["obj_id"] == 1
    np.testing.assert_allclose(poses[0]["t"], expected_t((100, 100, 200, 180), 0, K), rtol=1e-5)


def test_runtime_sources_never_import_torch():
    import pathlib

    root = DATA.parent.parent / "runtime"
    offenders = [str(p) for p in root.rglob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch"))
                        for line in p.read_text().splitlines())]
    assert offenders == []


@pytest.mark.gpu
def test_tensorrt_backend_matches_onnxruntime(export_dir, tmp_path):
    """TensorRT engines of the fake graphs: same poses as ONNX Runtime (skipped without a GPU)."""
    from mrcnet.runtime.backends import TensorRTBackend, tensorrt_available

    if not tensorrt_available():
        pytest.skip("needs tensorrt and a CUDA GPU")
    from mrcnet.export.tensorrt import build_engine

    m = load_manifest(export_dir)
    eng = {g: build_engine(export_dir / f"{g}.onnx", tmp_path / f"{g}.engine", precision="fp32", max_detections=4)
           for g in ("classifier", "regressor")}
    dets = [(1, (100, 100, 200, 180)), (2, (300, 200, 380, 300))]
    ref = Pipeline(create_backend(m, "onnxruntime-cpu"), m, F.SilhouetteRenderer()).estimate(scene_image(), K, dets)
    trt_be = TensorRTBackend(eng["classifier"], eng["regressor"])
    try:
        got = Pipeline(trt_be, m, F.SilhouetteRenderer()).estimate(scene_image(), K, dets)
    finally:
        trt_be.close()
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.R, b.R, atol=1e-5)
        np.testing.assert_allclose(a.t, b.t, rtol=1e-5)

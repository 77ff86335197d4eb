"""TensorRT engines (mrcnet.export.tensorrt): cache keys everywhere; engine builds, engine cache and
TensorRT-vs-ONNX-Runtime parity only with TensorRT and a CUDA GPU (skipped otherwise)."""
import json

import numpy as np
import pytest
import torch

from mrcnet.export.tensorrt import (
    TensorRTUnavailable,
    check_tensorrt,
    engine_key,
    key_hash,
    profile_crops,
)
from mrcnet.model import get_config

CROP = get_config("small").crop_size
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
        engine_key(ENV, "a" * 64, "fp16", (4, 16, 32), calib_sha="c" * 64),
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


# ------------------------------------------------------------------------------- GPU only
@pytest.fixture(scope="module")
def trt_export(tmp_path_factory):
    _gpu_or_skip()
    from mrcnet.export.manifest import build_manifest
    from mrcnet.export.onnx_export import export_onnx
    from mrcnet.model import build_model

    torch.manual_seed(5)
    model = build_model(2, (0.05, 1.7), "small").eval()
    man = build_manifest(dataset="synth", preset="small", obj_ids=[1, 2], depth_range=(0.05, 1.7),
                         bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4,
                         project_version="0.1.0", checkpoint_sha256="")
    out = tmp_path_factory.mktemp("trt")
    return model, out, export_onnx(model, out, man)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MRCNET_CACHE", str(tmp_path_factory.getbasetemp() / "mrcnet-cache"))


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 3e-2)])
def test_engines_match_onnxruntime(trt_export, precision, tol):
    from mrcnet.export.onnx_export import example_inputs
    from mrcnet.export.tensorrt import build_engines

    model, out, paths = trt_export
    feeds = example_inputs(2, 12, obj_index=[0] * 4 + [1] * 4 + [0] * 4, seed=3, crop_size=CROP)
    entry, parity = build_engines(paths, out, precision=precision, max_detections=3, check_feeds=feeds)
    assert (out / entry["classifier"]).is_file() and (out / entry["regressor"]).is_file()
    assert entry["max_detections"] == 3 and entry["profile_crops"] == [4, 8, 12]
    print(precision, parity)
    for k in ("pose_logits", "depth_logits", "trans_logits"):
        assert parity[k] < tol, (k, parity[k])
    if precision == "fp32":
        assert parity["R"] < tol and parity["t"] < tol and parity["argmax_agree"] == 1.0


@pytest.mark.gpu
def test_engine_cache_rebuilds_stale(trt_export):
    from mrcnet.export.tensorrt import build_engines

    model, out, paths = trt_export
    msgs = []
    build_engines(paths, out, precision="fp32", max_detections=3, progress=msgs.append)
    msgs.clear()
    build_engines(paths, out, precision="fp32", max_detections=3, progress=msgs.append)
    assert all("up to date" in m for m in msgs) and len(msgs) == 2
    side = out / "engines" / "classifier.fp32.json"
    d = json.loads(side.read_text())
    d["key"]["gpu"] = "some other GPU"  # a foreign engine
    side.write_text(json.dumps(d))
    msgs.clear()
    build_engines(paths, out, precision="fp32", max_detections=3, progress=msgs.append)
    assert any("classifier.fp32.engine: from the engine cache" in m for m in msgs)
    assert json.loads(side.read_text())["key"]["gpu"] != "some other GPU"
    msgs.clear()
    build_engines(paths, out, precision="fp32", max_detections=2, progress=msgs.append)  # new profile
    assert any(m.startswith("building classifier.fp32.engine") for m in msgs)


@pytest.mark.gpu
def test_int8_engine_with_calibration(trt_export, tmp_path):
    from mrcnet.export.manifest import build_manifest
    from mrcnet.export.onnx_export import example_inputs
    from mrcnet.export.quantize import calibration_feeds
    from mrcnet.export.tensorrt import build_engines

    model, out, paths = trt_export
    models = tmp_path / "models"
    models.mkdir()
    from mrcnet.testing import write_box_ply

    for oid in (1, 2):
        write_box_ply(models / f"obj_{oid:06d}.ply")
    man = build_manifest(dataset="synth", preset="small", obj_ids=[1, 2], depth_range=(0.05, 1.7),
                         bins=model.cfg.bins, fov_variant="inference", crop_size=model.cfg.crop_size, bn_group=4,
                         project_version="0.1.0", checkpoint_sha256="")
    cal = calibration_feeds(model, man, None, count=4, models_dir=models)
    entry, parity = build_engines(paths, out, precision="int8", max_detections=2, calib=cal,
                                  check_feeds=example_inputs(2, 8, seed=8, crop_size=CROP))
    print("int8", parity)
    assert np.isfinite(parity["max"]) and parity["pose_logits"] < 0.5

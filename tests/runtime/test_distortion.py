"""Lens distortion: camera files with distortion coefficients (project JSON, ROS CameraInfo-style
JSON/YAML, camera_calibration YAML), their one-line errors, and `mrcnet-run` on a synthetic
distorted clip (the demo clip's rendered frames, distorted with OpenCV): poses within tolerance of
the run on the undistorted frames."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from mrcnet.runtime import cli
from mrcnet.runtime import manifest as M
from mrcnet.runtime.formats.camera import Camera, CameraFileError
from mrcnet.runtime.geometry import rotation_angle_deg
from mrcnet.runtime.video_io import FrameSource, Undistorter, read_jsonl

import runtime_fakes as F

K = np.array([[576.0, 0, 320.0], [0, 576.0, 240.0], [0, 0, 1]])
D = np.array([-0.28, 0.09, 0.0015, -0.001, 0.0])  # strong barrel distortion, slight decentring
W, H = 640, 480


def distort(image, K, D):
    """The image a lens with (K, D) would see of the pinhole image ``image`` (same K): for every
    distorted pixel, its undistorted position (cv2.undistortPoints, P=K) is sampled (inverse mapping)."""
    h, w = image.shape[:2]
    uv = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1).reshape(-1, 1, 2)
    und = cv2.undistortPoints(uv, K, D, P=K, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-6))
    mx, my = und.reshape(h, w, 2).transpose(2, 0, 1)
    return cv2.remap(image, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR)


def write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- camera files
def test_project_json_with_dist_coeffs(tmp_path):
    cam = Camera.load(write(tmp_path / "c.json", json.dumps({"cam_K": K.ravel().tolist(), "width": W, "height": H,
                                                               "dist_coeffs": D.tolist()})))
    np.testing.assert_allclose(cam.fixed, K)
    np.testing.assert_allclose(cam.dist, D)
    assert cam.size == (W, H)


def test_ros_camerainfo_json_and_yaml(tmp_path):
    info = {"width": W, "height": H, "distortion_model": "plumb_bob", "K": K.ravel().tolist(), "D": D.tolist()}
    a = Camera.load(write(tmp_path / "info.json", json.dumps(info)))
    import yaml
    b = Camera.load(write(tmp_path / "info.yaml", yaml.safe_dump(info)))
    for cam in (a, b):
        np.testing.assert_allclose(cam.fixed, K)
        np.testing.assert_allclose(cam.dist, D)
        assert cam.size == (W, H)


def test_camera_calibration_yaml(tmp_path):
    text = f"""image_width: {W}
image_height: {H}
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [{', '.join(str(v) for v in K.ravel())}]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [{', '.join(str(v) for v in D)}]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
"""
    cam = Camera.load(write(tmp_path / "ost.yml", text))
    np.testing.assert_allclose(cam.fixed, K)
    np.testing.assert_allclose(cam.dist, D)
    assert cam.size == (W, H)


def test_zero_or_absent_distortion_is_none(tmp_path):
    assert Camera.load(write(tmp_path / "a.json", json.dumps({"K": K.tolist(), "D": [0, 0, 0, 0, 0]}))).dist is None
    assert Camera.load(write(tmp_path / "b.json", json.dumps({"K": K.tolist()}))).dist is None


@pytest.mark.parametrize("record,needle", [
    ({"K": K.ravel().tolist(), "D": [0.1, 0.2, 0.3]}, "D has 3 numbers"),
    ({"K": K.ravel().tolist(), "D": [0.1, float("nan"), 0, 0, 0]}, "not finite"),
    ({"K": K.ravel().tolist(), "D": [0.1, 0.0, 0, 0], "distortion_model": "equidistant"}, "equidistant"),
    ({"0": {"cam_K": K.ravel().tolist(), "dist_coeffs": D.tolist()}}, "one K for the whole sequence"),
])
def test_bad_distortion_is_a_one_line_error_naming_the_file(tmp_path, record, needle):
    p = write(tmp_path / "bad.json", json.dumps(record))  # json writes NaN as NaN (Python's json reads it)
    with pytest.raises(CameraFileError) as e:
        Camera.load(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and needle in msg, msg


def test_bad_yaml_is_a_one_line_error_naming_the_file(tmp_path):
    p = write(tmp_path / "bad.yaml", "K: [1, 2\nD: ]")
    with pytest.raises(CameraFileError) as e:
        Camera.load(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value) and "YAML" in str(e.value)


def test_undistorter_inverts_the_synthetic_distortion():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((H, W, 3)) * 255).astype(np.uint8), (0, 0), 4)
    dist = distort(img, K, D)
    und = Undistorter(K, D)
    back = und.undistort(dist)
    assert und.maps(W, H) is und.maps(W, H)  # computed once
    inner = (slice(60, H - 60), slice(80, W - 80))
    err_back = np.abs(back[inner].astype(int) - img[inner]).mean()
    err_dist = np.abs(dist[inner].astype(int) - img[inner]).mean()
    assert err_back < 2.0 and err_dist > 5 * err_back, (err_back, err_dist)


# ------------------------------------------------------------------------------- mrcnet-run
def _clip(tmp_path, name, frames):
    d = tmp_path / name
    d.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(d / f"{i:06d}.png"), f)
    return d


def _cam(tmp_path, name, dist=None):
    rec = {"cam_K": K.ravel().tolist(), "width": W, "height": H}
    if dist is not None:
        rec["dist_coeffs"] = np.asarray(dist).tolist()
    return write(tmp_path / name, json.dumps(rec))


def _run(args):
    r = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_run_undistorts_before_the_pipeline(tmp_path, monkeypatch):
    """With the fakes (no torch, no EGL): the frame the pipeline gets is the undistorted one."""
    export = F.make_export(tmp_path / "export", obj_ids=(1,))
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur((rng.random((H, W, 3)) * 255).astype(np.uint8), (0, 0), 4)
    clip = _clip(tmp_path, "clip", [distort(img, K, D)])
    dets = write(tmp_path / "dets.json", json.dumps([{"image_id": 0, "category_id": 1, "score": 1.0,
                                                      "bbox": [280, 200, 80, 80]}]))
    seen = []
    real = cli.Pipeline.prepare  # where the run hands the frame to the pipeline
    monkeypatch.setattr(cli.Pipeline, "prepare", lambda self, image, K_, dets_: seen.append(image.copy())
                        or real(self, image, K_, dets_))
    monkeypatch.setattr(cli, "make_renderer", lambda device=None: F.SilhouetteRenderer())
    _run([clip, "--model", export, "--camera", _cam(tmp_path, "cam.json", D), "--detections", dets,
          "--backend", "onnxruntime-cpu", "--out", tmp_path / "run", "--no-video", "-q"])
    assert len(seen) == 1
    inner = (slice(60, H - 60), slice(80, W - 80))
    assert np.abs(seen[0][inner].astype(int) - img[inner]).mean() < 2.0
    assert len(read_jsonl(tmp_path / "run" / "poses.jsonl")[0]["objects"]) == 1


N_FRAMES = 3


@pytest.mark.slow
def test_demo_poses_on_a_distorted_clip_match_the_undistorted_run(tmp_path, demo_export):
    """The shipped demo model on rendered frames (the demo clip), distorted with OpenCV: with the
    distortion in the camera file the poses match the run on the undistorted frames; without it
    they do not (the test can fail)."""
    src = FrameSource(M.DEMO_DIR / M.DEMO_CLIP)
    frames = [f.image for f, _ in zip(src, range(N_FRAMES))]
    assert json.loads((M.DEMO_DIR / M.DEMO_CAMERA).read_text())["cam_K"] == K.ravel().tolist()
    plain = _clip(tmp_path, "plain", frames)
    bent = _clip(tmp_path, "bent", [distort(f, K, D) for f in frames])
    common = ["--model", demo_export, "--detections", M.DEMO_DIR / M.DEMO_DETECTIONS,
              "--backend", "onnxruntime-cpu", "--no-video", "-q"]
    _run([plain, "--camera", _cam(tmp_path, "pin.json"), "--out", tmp_path / "ref", *common])
    _run([bent, "--camera", _cam(tmp_path, "lens.json", D), "--out", tmp_path / "und", *common])
    _run([bent, "--camera", _cam(tmp_path, "pin.json"), "--out", tmp_path / "raw", *common])

    def errors(run):
        rot, trans = [], []
        for a, b in zip(read_jsonl(tmp_path / "ref" / "poses.jsonl"), read_jsonl(tmp_path / run / "poses.jsonl")):
            pa = {o["obj_id"]: o for o in a["objects"]}
            pb = {o["obj_id"]: o for o in b["objects"]}
            assert pa.keys() == pb.keys() and pa
            for k in pa:
                rot.append(rotation_angle_deg(np.asarray(pa[k]["R"]), np.asarray(pb[k]["R"])))
                trans.append(float(np.linalg.norm(np.asarray(pa[k]["t"]) - np.asarray(pb[k]["t"]))))
        return float(np.median(rot)), float(np.median(trans))

    und, raw = errors("und"), errors("raw")
    print(f"distorted clip vs undistorted run, median rot deg / trans mm: undistorted {und}, not undistorted {raw}")
    assert und[0] < 3.0 and und[1] < 5.0, und
    assert raw[1] > 2 * und[1] or raw[0] > 2 * und[0], (und, raw)

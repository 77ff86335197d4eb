"""Reliability of a run (issue classes 1-8, library level; the CLIs are in tests/badinput/): damaged
graphs, one bad frame, damaged videos, results kept on re-runs / SIGTERM / resume, numeric frame ids."""
import json
import os
import signal

import cv2
import numpy as np
import pytest

from mrcnet.export.manifest import update_file_records
from mrcnet.runtime import runner
from mrcnet.runtime import video_io as V
from mrcnet.runtime.backends import create_backend
from mrcnet.runtime.detections import Detection, JsonDetections
from mrcnet.runtime.formats.camera import Camera
from mrcnet.runtime.formats.poses_jsonl import read_poses_jsonl
from mrcnet.runtime.manifest import ManifestError, load_manifest
from mrcnet.runtime.pipeline import Pipeline

import runtime_fakes as F

K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])


def hashed_export(root):
    """The fake export with the ``files`` records the exporter writes (sizes, SHA-256)."""
    d = F.make_export(root, obj_ids=(1, 2))
    raw = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(update_file_records(d, raw), indent=1))
    return d


@pytest.fixture()
def export_dir(tmp_path):
    return hashed_export(tmp_path / "export")


def frame_image(i=0):
    img = np.full((480, 640, 3), 20, np.uint8)
    img[100 + i:140 + i, 110:150] = 200
    return img


def write_frames(d, names):
    d.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        cv2.imwrite(str(d / n), frame_image(i))
    return d


def pipeline_of(export_dir):
    m = load_manifest(export_dir)
    return Pipeline(create_backend(m, "onnxruntime-cpu"), m, F.SilhouetteRenderer())


def one_box(i, img):
    return [Detection(1, (100, 90, 160, 150))]


# ------------------------------------------------------------------------------ class 1
def test_damaged_graph_is_refused_at_load(export_dir):
    m = load_manifest(export_dir)
    assert set(m.files) >= {"classifier.onnx", "regressor.onnx", "models/obj_000001.ply"}
    p = export_dir / "regressor.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # overwritten, size unchanged
    p.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="regressor.onnx is damaged .*SHA-256"):
        load_manifest(export_dir)
    p.write_bytes(bytes(data[:-10]))
    with pytest.raises(ManifestError, match=r"regressor.onnx is damaged \(\d+ bytes"):
        load_manifest(export_dir)


class NanBackend:
    """A backend whose regressor returns NaN translations (what a damaged graph produced)."""

    def __init__(self, be):
        self.be = be
        self.name = be.name
        self.classifier_outputs, self.regressor_outputs = be.classifier_outputs, be.regressor_outputs

    def run_classifier(self, feeds, fetch=None):
        return self.be.run_classifier(feeds, fetch)

    def run_regressor(self, feeds, fetch=None):
        out = dict(self.be.run_regressor(feeds, fetch))
        out["t"] = np.full_like(out["t"], np.nan)
        return out

    def close(self):
        self.be.close()


def test_non_finite_poses_are_skipped_not_written(export_dir, tmp_path):
    m = load_manifest(export_dir)
    pipe = Pipeline(NanBackend(create_backend(m, "onnxruntime-cpu")), m, F.SilhouetteRenderer())
    d = write_frames(tmp_path / "f", ["0.png", "1.png"])
    s = runner.run(V.FrameSource(d), pipe, Camera(K), one_box, tmp_path / "out", bop_csv=True, video=False,
                progress=False)
    assert s.poses == 0 and s.skipped_detections == 2
    recs = read_poses_jsonl(tmp_path / "out" / "poses.jsonl")  # strict JSON: no bare NaN token
    assert [r["objects"] for r in recs] == [[], []] and "non-finite pose" in recs[0]["skipped"][0]["error"]
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 1  # the header only


# ------------------------------------------------------------------------------ class 2
class FlakyBackend(NanBackend):
    """Fails the classifier calls whose number is in ``fail`` (0-based)."""

    def __init__(self, be, fail):
        super().__init__(be)
        self.calls, self.fail = 0, set(fail)

    def run_classifier(self, feeds, fetch=None):
        self.calls += 1
        if self.calls - 1 in self.fail:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions\nmore")
        return self.be.run_classifier(feeds, fetch)

    def run_regressor(self, feeds, fetch=None):
        return self.be.run_regressor(feeds, fetch)


def test_one_failing_frame_does_not_end_the_run(export_dir, tmp_path):
    m = load_manifest(export_dir)
    pipe = Pipeline(FlakyBackend(create_backend(m, "onnxruntime-cpu"), fail=[1]), m, F.SilhouetteRenderer())
    d = write_frames(tmp_path / "f", [f"{i}.png" for i in range(4)])
    s = runner.run(V.FrameSource(d), pipe, Camera(K), one_box, tmp_path / "out", video=False, progress=False)
    recs = read_poses_jsonl(tmp_path / "out" / "poses.jsonl")
    assert s.frames == 4 and s.frames_failed == 1 and s.poses == 3 and not s.aborted
    assert recs[1]["error"].startswith("RuntimeError: [ONNXRuntimeError]") and "\n" not in recs[1]["error"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames_failed"] == 1


def test_a_backend_failing_every_frame_stops_with_a_summary(export_dir, tmp_path):
    m = load_manifest(export_dir)
    pipe = Pipeline(FlakyBackend(create_backend(m, "onnxruntime-cpu"), fail=range(100)), m, F.SilhouetteRenderer())
    d = write_frames(tmp_path / "f", [f"{i}.png" for i in range(8)])
    s = runner.run(V.FrameSource(d), pipe, Camera(K), one_box, tmp_path / "out", video=False, progress=False,
                max_consecutive_errors=3)
    assert s.frames == 3 and "3 frames in a row failed" in s.aborted
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["aborted"] == s.aborted


def test_bad_per_frame_camera_skips_only_its_frame(export_dir, tmp_path):
    cam = tmp_path / "scene_camera.json"
    good = K.reshape(-1).tolist()
    cam.write_text(json.dumps({"0": {"cam_K": good}, "1": {"cam_K": [0.0] * 9}, "2": {"cam_K": good}}))
    d = write_frames(tmp_path / "f", ["000000.png", "000001.png", "000002.png"])
    s = runner.run(V.FrameSource(d), pipeline_of(export_dir), Camera.load(cam), one_box, tmp_path / "out",
                video=False, progress=False)
    recs = read_poses_jsonl(tmp_path / "out" / "poses.jsonl")
    assert s.poses == 2 and s.frames_failed == 1 and "scene_camera.json: frame 1" in recs[1]["error"]


# ------------------------------------------------------------------------------ class 3
class DamagedCapture:
    """cv2.VideoCapture double: 30 frames; reads 10..19 fail (a damaged stretch); seeks work."""

    def __init__(self, path):
        self.pos = 0

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_COUNT: 30, cv2.CAP_PROP_FPS: 10}.get(prop, 0)

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self.pos = int(value)

    def read(self):
        i = self.pos
        self.pos += 1
        if i >= 30 or 10 <= i < 20:
            return False, None
        return True, np.full((48, 64, 3), i, np.uint8)

    def release(self):
        pass


def test_damage_in_the_middle_of_a_video_does_not_end_it(tmp_path, monkeypatch):
    (tmp_path / "v.mp4").write_bytes(b"x")
    monkeypatch.setattr(V.cv2, "VideoCapture", DamagedCapture)
    frames = list(V.FrameSource(tmp_path / "v.mp4"))
    good = [f.index for f in frames if f.image is not None]
    bad = [f.index for f in frames if f.image is None]
    assert good == list(range(10)) + list(range(20, 30)) and bad == list(range(10, 20))
    assert all(int(f.image[0, 0, 0]) == f.index for f in frames if f.image is not None)


def test_a_video_that_stays_unreadable_says_why_it_stopped(tmp_path, monkeypatch):
    class Dead(DamagedCapture):
        def read(self):
            self.pos += 1
            return (True, np.zeros((4, 4, 3), np.uint8)) if self.pos <= 2 else (False, None)

        def get(self, prop):
            return {cv2.CAP_PROP_FRAME_COUNT: 1000}.get(prop, 0)

    (tmp_path / "v.mp4").write_bytes(b"x")
    monkeypatch.setattr(V.cv2, "VideoCapture", Dead)
    src = V.FrameSource(tmp_path / "v.mp4")
    n = sum(1 for _ in src)
    assert n < 1000 and "stopped reading at frame" in src.stopped_early and "of 1000 announced" in src.stopped_early


# ------------------------------------------------------------------------------ class 4
def test_rerun_into_an_earlier_run_is_refused_then_resumed(export_dir, tmp_path):
    d = write_frames(tmp_path / "f", [f"{i}.png" for i in range(5)])
    out = tmp_path / "out"

    def stop_at_3(i, img):
        if i == 3:
            raise KeyboardInterrupt
        return one_box(i, img)

    s1 = runner.run(V.FrameSource(d), pipeline_of(export_dir), Camera(K), stop_at_3, out, bop_csv=True, progress=False)
    assert s1.interrupted and s1.signal == "SIGINT"
    before = (out / "poses.jsonl").read_bytes()
    with open(out / "poses.jsonl", "ab") as f:
        f.write(b'{"frame": 3, "na')  # a torn last line (killed mid-write)
    with pytest.raises(runner.RunError, match="resume to continue it or overwrite"):
        runner.run(V.FrameSource(d), pipeline_of(export_dir), Camera(K), one_box, out, progress=False)
    assert (out / "poses.jsonl").read_bytes().startswith(before)  # untouched
    s2 = runner.run(V.FrameSource(d), pipeline_of(export_dir), Camera(K), one_box, out, bop_csv=True, progress=False,
                 resume=True)
    recs = read_poses_jsonl(out / "poses.jsonl")
    assert s2.resumed_frames == 3 and s2.frames == 2 and [r["frame"] for r in recs] == [0, 1, 2, 3, 4]
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[1]) for r in rows] == [0, 1, 2, 3, 4]
    assert (out / "overlay.mp4").is_file() and (out / "overlay.from-3.mp4").is_file()
    s3 = runner.run(V.FrameSource(d), pipeline_of(export_dir), Camera(K), one_box, out, progress=False, overwrite=True,
                 video=False)
    assert s3.frames == 5 and len(read_poses_jsonl(out / "poses.jsonl")) == 5


def test_sigterm_is_handled_like_ctrl_c(export_dir, tmp_path):
    d = write_frames(tmp_path / "f", [f"{i}.png" for i in range(5)])
    out = tmp_path / "out"

    def term_at_2(i, img):
        if i == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return one_box(i, img)

    old = signal.getsignal(signal.SIGTERM)
    # sequential: the signal interrupts frame 2 (pipelined runs finish the frames in flight:
    # tests/runtime/test_realtime.py)
    s = runner.run(V.FrameSource(d), pipeline_of(export_dir), Camera(K), term_at_2, out, progress=False,
                   pipelined=False)
    assert signal.getsignal(signal.SIGTERM) == old  # restored
    assert s.interrupted and s.signal == "SIGTERM"
    assert json.loads((out / "summary.json").read_text())["signal"] == "SIGTERM"
    assert [r["frame"] for r in read_poses_jsonl(out / "poses.jsonl")] == [0, 1]
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2 and cap.read()[0]  # finalised, playable


# ------------------------------------------------------------------------------ class 7
def test_bop_image_folders_keep_their_frame_ids(export_dir, tmp_path):
    d = write_frames(tmp_path / "rgb", ["000001.png", "000003.png", "000010.png"])
    src = V.FrameSource(d)
    assert [f.index for f in src] == [1, 3, 10]
    dets = tmp_path / "d.json"
    dets.write_text(json.dumps([{"scene_id": 0, "image_id": 3, "category_id": 1, "bbox": [100, 90, 60, 60],
                                 "score": 0.9}]))
    runner.run(src, pipeline_of(export_dir), Camera(K), JsonDetections(dets), tmp_path / "out", bop_csv=True,
            video=False, progress=False)
    recs = {r["frame"]: r for r in read_poses_jsonl(tmp_path / "out" / "poses.jsonl")}
    assert sorted(recs) == [1, 3, 10] and len(recs[3]["objects"]) == 1 and not recs[1]["objects"]
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["3"] and rows[0].split(",")[3] == "0.9"  # score: the detection's
    names = write_frames(tmp_path / "named", ["b.png", "a.png"])
    assert [(f.index, f.name) for f in V.FrameSource(names)] == [(0, "a.png"), (1, "b.png")]
    write_frames(tmp_path / "dup", ["1.png", "0001.jpg"])
    with pytest.raises(V.SourceError, match="several images with frame number 1"):
        V.FrameSource(tmp_path / "dup")

"""Runtime inputs and outputs: detection readers, ONNX detector, tracking, overlay, poses.jsonl,
BOP CSV, cameras and the mrcnet-run CLI (fake export, silhouette renderer double)."""
import json

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mrcnet.runtime import cli, runner
from mrcnet.runtime.backends import create_backend
from mrcnet.runtime.detections import (Detection, DetectionError, JsonDetections, OnnxDetector,
                                       parse_class_map)
from mrcnet.runtime.manifest import load_manifest
from mrcnet.runtime.overlay import colour, draw_frame, silhouette
from mrcnet.runtime.pipeline import Pipeline, Pose
from mrcnet.runtime.render.mesh import Mesh
from mrcnet.runtime.tracking import Tracker, projected_box, visible_fraction
from mrcnet.runtime.video_io import Camera, CameraFileError, FrameSource, JsonlWriter, SourceError, read_jsonl

import runtime_fakes as F

K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])
CUBE = Mesh.from_arrays(F.CUBE_V, F.CUBE_F)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return F.make_export(tmp_path_factory.mktemp("export"), obj_ids=(1, 2))


def frame_image(i=0):
    img = np.full((480, 640, 3), 20, np.uint8)
    img[100 + i:140 + i, 110:150] = 200
    return img


@pytest.fixture()
def frames_dir(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(4):
        cv2.imwrite(str(d / f"{i:04d}.png"), frame_image(i))
    (d / "0002.png").write_bytes(b"not a png at all")  # a corrupt frame
    return d


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


# ----------------------------------------------------------------------------------- detections
def test_json_detections_bop_list(tmp_path):
    recs = [
        {"scene_id": 1, "image_id": 0, "category_id": 5, "bbox": [10, 20, 30, 40], "score": 0.9},
        {"scene_id": 1, "image_id": 0, "category_id": 5, "bbox": [12, 20, 30, 40], "score": 0.7},
        {"scene_id": 1, "image_id": 0, "category_id": 6, "bbox": [0, 0, 5, 5], "score": 0.05},
        {"scene_id": 2, "image_id": 0, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 1.0},
        {"scene_id": 1, "image_id": 3, "category_id": 6, "bbox": [1, 2, 3, 4], "score": 0.8},
    ]
    p = write_json(tmp_path / "dets.json", recs)
    det = JsonDetections(p, scene_id=1, min_score=0.1, top_k_per_object=1)
    d0 = det(0)
    assert [(d.obj_id, d.score) for d in d0] == [(5, 0.9)]
    np.testing.assert_array_equal(d0[0].box, [10, 20, 40, 60])  # xywh -> xyxy
    assert det(1) == [] and det.frames == [0, 3] and det(3)[0].obj_id == 6
    assert {d.obj_id for d in JsonDetections(p)(0)} == {5, 6, 7}


def test_json_detections_coco_and_frame_keyed(tmp_path):
    coco = {"images": [], "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]}]}
    assert JsonDetections(write_json(tmp_path / "c.json", coco))(2)[0].score == 1.0
    keyed = {"0": [{"obj_id": 2, "box": [1, 2, 11, 22], "score": 0.5}], "4": [{"obj_id": 1, "bbox": [0, 0, 4, 4]}]}
    det = JsonDetections(write_json(tmp_path / "k.json", keyed))
    np.testing.assert_array_equal(det(0)[0].box, [1, 2, 11, 22])
    assert det(4)[0].obj_id == 1 and len(det) == 2


def test_json_detections_errors(tmp_path):
    with pytest.raises(DetectionError, match="not found"):
        JsonDetections(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{ nope")
    with pytest.raises(DetectionError, match="bad.json: malformed JSON"):
        JsonDetections(tmp_path / "bad.json")
    with pytest.raises(DetectionError, match="x.json: missing key 'image_id' in detection 0"):
        JsonDetections(write_json(tmp_path / "x.json", [{"category_id": 1, "bbox": [0, 0, 1, 1]}]))


def test_parse_class_map():
    assert parse_class_map("0:1, 1:5") == {0: 1, 1: 5}
    assert parse_class_map("") is None
    with pytest.raises(DetectionError, match="class:obj_id"):
        parse_class_map("0-1")


@pytest.mark.parametrize("with_num", [False, True])
def test_onnx_detector_letterbox_and_class_map(tmp_path, with_num):
    boxes = [[10, 50, 110, 150], [0, 40, 20, 60], [30, 60, 50, 80], [100, 100, 200, 200]]
    m = F.detector_model(boxes, [0.9, 0.1, 0.8, 0.95], [0, 0, 3, 1], input_hw=(320, 320), with_num=with_num)
    onnx.save(m, tmp_path / "yolo.onnx")
    det = OnnxDetector(tmp_path / "yolo.onnx", class_map={0: 1, 1: 5}, score_threshold=0.25)
    assert det.input_size == (320, 320)
    out = det(0, np.zeros((480, 640, 3), np.uint8))  # scale 0.5, pad (0, 40)
    # class 3 is not in the map, score 0.1 is below the threshold; num_dets = 3 drops the last
    assert [d.obj_id for d in out] == ([1] if with_num else [1, 5])
    np.testing.assert_allclose(out[0].box, [20, 20, 220, 220])
    assert out[0].score == pytest.approx(0.9)
    if not with_num:
        np.testing.assert_allclose(out[1].box, [200, 120, 400, 320])
    raw = OnnxDetector(tmp_path / "yolo.onnx", score_threshold=0.5)(0, np.zeros((480, 640, 3), np.uint8))
    assert [d.obj_id for d in raw] == ([0, 3] if with_num else [0, 3, 1])  # no map: class = object id


def test_onnx_detector_errors(tmp_path):
    with pytest.raises(DetectionError, match="detector not found"):
        OnnxDetector(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(DetectionError, match="junk.onnx: cannot load"):
        OnnxDetector(tmp_path / "junk.onnx")


# ------------------------------------------------------------------------------------- tracking
def test_projected_box_is_tight():
    t = np.array([10.0, -20.0, 500.0])
    box = projected_box(F.CUBE_V, np.eye(3), t, K)
    X = F.CUBE_V + t
    u = 600 * X[:, 0] / X[:, 2] + 320
    v = 610 * X[:, 1] / X[:, 2] + 240
    np.testing.assert_allclose(box, [u.min(), v.min(), u.max(), v.max()])
    assert projected_box(F.CUBE_V, np.eye(3), np.array([0, 0, 10.0]), K) is None  # straddles the camera
    assert visible_fraction(np.array([-10, 0, 10, 10]), 640, 480) == pytest.approx(0.5)


def pose(obj_id, t, score=5.0):
    return Pose(obj_id, np.eye(3), np.asarray(t, float), score, np.zeros(4))


def test_tracker_follows_and_redetects():
    calls = []

    def detect(i, img):
        calls.append(i)
        return [Detection(1, [300, 200, 340, 240], 0.9, "json"), Detection(2, [10, 10, 50, 50], 0.8, "json")]

    tr = Tracker({1: F.CUBE_V, 2: F.CUBE_V}, detect, rel_drop=0.5)
    img = np.zeros((480, 640, 3), np.uint8)
    assert [d.source for d in tr.detections(0, img)] == ["json", "json"] and calls == [0]
    tr.update([pose(1, [0, 0, 500]), pose(2, [-200, -150, 600])], K, (640, 480))
    assert not tr.need_detection and tr.lost == []
    d1 = tr.detections(1, img)
    assert calls == [0] and [d.source for d in d1] == ["track", "track"]
    np.testing.assert_allclose(d1[0].box, projected_box(F.CUBE_V, np.eye(3), [0, 0, 500], K))
    # object 2 leaves the image -> lost -> frame 2 re-detects
    tr.update([pose(1, [0, 0, 500], 4.0), pose(2, [-2000, 0, 600])], K, (640, 480))
    assert tr.lost == [(2, "left the image")] and tr.need_detection
    tr.detections(2, img)
    assert calls == [0, 2]
    tr.update([pose(1, [0, 0, 500], 5.0), pose(2, [0, 100, 600], 5.0)], K, (640, 480))
    assert not tr.need_detection
    tr.detections(3, img)
    # score falls below half the score at detection: one such frame is tolerated (patience 2) ...
    tr.update([pose(1, [0, 0, 500], 2.0), pose(2, [0, 100, 600], 5.0)], K, (640, 480))
    assert tr.lost == [] and not tr.need_detection and tr.tracks[1].low == 1
    # ... a recovered score resets the count, and two low frames in a row lose it -> re-detect
    tr.detections(3, img)
    tr.update([pose(1, [0, 0, 500], 4.0), pose(2, [0, 100, 600], 5.0)], K, (640, 480))
    assert tr.tracks[1].low == 0
    for _ in range(2):
        tr.detections(3, img)
        tr.update([pose(1, [0, 0, 500], 2.0), pose(2, [0, 100, 600], 5.0)], K, (640, 480))
    assert tr.lost and tr.lost[0][0] == 1 and "score" in tr.lost[0][1] and tr.need_detection
    assert calls == [0, 2]
    # a pose far away projects to a speck: lost
    tr.detections(4, img)
    tr.update([pose(1, [0, 0, 500]), pose(2, [0, 0, 60000])], K, (640, 480))
    assert tr.lost == [(2, "box smaller than 8 px")]
    # a track that got no pose at all is lost as well
    tr.detections(5, img)
    tr.update([pose(1, [0, 0, 500]), pose(2, [0, 100, 600])], K, (640, 480))
    assert not tr.need_detection
    tr.detections(6, img)
    tr.update([pose(1, [0, 0, 500])], K, (640, 480))
    assert tr.lost == [(2, "not estimated")] and tr.need_detection and list(tr.tracks) == [1]


# -------------------------------------------------------------------------------------- overlay
def test_overlay_draws_contour_axes_and_label():
    img = np.zeros((480, 640, 3), np.uint8)
    p = Pose(1, np.eye(3), np.array([0.0, 0.0, 500.0]), 3.21, np.array([250, 170, 390, 310.0]))
    out = draw_frame(img, [p], K, {1: CUBE}, fps=12.5, text="hello")
    assert img.max() == 0 and out.shape == img.shape  # input untouched
    box = projected_box(F.CUBE_V, np.eye(3), p.t, K)
    col = np.array(colour(1))
    # contour pixels of the object's colour on the silhouette's left edge, none deep inside
    x0 = int(round(box[0]))
    edge = out[int(box[1]) + 10:int(box[3]) - 10, x0 - 2:x0 + 3]
    assert (np.abs(edge.astype(int) - col).sum(-1) < 60).any()
    # axes: red (x) to the right of the origin at (320, 240), green (y) below, blue (z) projects to the origin
    assert (out[238:243, 330:340] == (0, 0, 255)).all(-1).any()
    assert (out[250:260, 318:323] == (0, 255, 0)).all(-1).any()
    assert out[5:35, 5:120].max() == 255  # FPS text
    mask, off = silhouette(CUBE, np.eye(3), p.t, K, 640, 480)
    assert off == (int(np.floor(box[0])), int(np.floor(box[1])))
    assert mask.sum() > 0.9 * (box[2] - box[0]) * (box[3] - box[1])  # the cube's front face fills its box
    # renderer masks take precedence over the projected silhouette
    m = np.zeros((1, 480, 640), bool)
    m[0, 10:20, 10:20] = True
    out2 = draw_frame(img, [p], K, {1: CUBE}, masks=m)
    assert (np.abs(out2[8:22, 8:22].astype(int) - col).sum(-1) < 60).any()


# ----------------------------------------------------------------------------- sources / writers
def test_frame_source_folder_reports_corrupt_frames(frames_dir):
    src = FrameSource(frames_dir)
    frames = list(src)
    assert len(src) == 4 and [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[2].image is None and "cannot decode" in frames[2].error
    assert frames[3].image.shape == (480, 640, 3)
    with pytest.raises(SourceError, match="input not found"):
        FrameSource(frames_dir / "nope.mp4")


def test_frame_source_video_round_trip(tmp_path):
    from mrcnet.runtime.video_io import VideoWriter

    vw = VideoWriter(tmp_path / "v.mp4", fps=10)
    for i in range(5):
        vw.write(frame_image(i * 5))
    vw.close()
    src = FrameSource(tmp_path / "v.mp4")
    frames = list(src)
    assert len(frames) == 5 and src.fps == pytest.approx(10) and all(f.image is not None for f in frames)
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(SourceError, match="junk.mp4: not a readable video"):
        FrameSource(tmp_path / "junk.mp4")


def test_jsonl_is_readable_after_every_frame(tmp_path):
    w = JsonlWriter(tmp_path / "p.jsonl")
    for i in range(3):
        w.write({"frame": i})
        assert [r["frame"] for r in read_jsonl(tmp_path / "p.jsonl")] == list(range(i + 1))
    with open(tmp_path / "p.jsonl", "a") as f:
        f.write('{"frame": 3, "obj')  # a line cut by a crash
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 3
    w.close()


def test_camera_formats(tmp_path):
    Kf = [600.0, 0, 320, 0, 610.0, 240, 0, 0, 1]
    for obj in ({"cam_K": Kf}, {"K": np.reshape(Kf, (3, 3)).tolist()}, {"fx": 600, "fy": 610, "cx": 320, "cy": 240}):
        np.testing.assert_allclose(Camera.load(write_json(tmp_path / "k.json", obj)).K(7), K)
    per = Camera.load(write_json(tmp_path / "s.json", {"0": {"cam_K": Kf}, "5": {"cam_K": [2 * v for v in Kf[:8]] + [1]}}))
    assert per.K(3)[0, 0] == 600 and per.K(6)[0, 0] == 1200
    with pytest.raises(CameraFileError, match="k.json"):
        Camera.load(write_json(tmp_path / "k.json", {"fx": 1}))
    with pytest.raises(CameraFileError, match="none.json: file not found"):
        Camera.load(tmp_path / "none.json")


# ------------------------------------------------------------------------------------ run / CLI
def make_pipeline(export_dir):
    m = load_manifest(export_dir)
    return Pipeline(create_backend(m, "onnxruntime-cpu"), m, F.SilhouetteRenderer())


def test_run_interrupted_keeps_finished_frames(export_dir, frames_dir, tmp_path):
    seen = []

    def detect(i, img):
        if i == 3:
            seen.extend(read_jsonl(tmp_path / "out" / "poses.jsonl"))
            raise KeyboardInterrupt
        return [Detection(1, (100, 90, 160, 150)), Detection(9, (0, 0, 30, 30))]

    # sequential stages: detection of frame 3 starts after frame 2 was written (pipelined, it would
    # overlap frame 2: tests/runtime/test_realtime.py covers interrupts of a pipelined run)
    s = runner.run(FrameSource(frames_dir), make_pipeline(export_dir), Camera(K), detect, tmp_path / "out",
                   bop_csv=True, progress=False, pipelined=False)
    assert s.interrupted and s.frames == 3 and s.frames_failed == 1 and s.poses == 2 and s.skipped_detections == 2
    recs = read_jsonl(tmp_path / "out" / "poses.jsonl")
    assert recs == seen and [r["frame"] for r in recs] == [0, 1, 2]  # flushed before frame 3 began
    assert "error" in recs[2] and recs[0]["objects"][0]["obj_id"] == 1
    assert recs[0]["skipped"][0]["obj_id"] == 9 and "not in the exported model" in recs[0]["skipped"][0]["error"]
    assert set(recs[0]["timings_ms"]) >= {"preprocess", "classifier", "render", "regressor", "postprocess"}
    assert np.asarray(recs[0]["objects"][0]["R"]).shape == (3, 3)
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0] == "scene_id,im_id,obj_id,score,R,t,time" and len(rows) == 3
    assert rows[2].split(",")[1] == "1" and len(rows[2].split(",")[4].split()) == 9
    cap = cv2.VideoCapture(str(tmp_path / "out" / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["interrupted"] is True


def test_run_tracking_detects_only_on_the_first_frame(export_dir, tmp_path):
    d = tmp_path / "still"
    d.mkdir()
    for i in range(4):
        cv2.imwrite(str(d / f"{i}.png"), frame_image(0))
    calls = []

    def detect(i, img):
        calls.append(i)
        return [Detection(1, (100, 90, 160, 150))]

    s = runner.run(FrameSource(d), make_pipeline(export_dir), Camera(K), detect, tmp_path / "out",
                track=True, video=False, progress=False)
    recs = read_jsonl(tmp_path / "out" / "poses.jsonl")
    assert calls == [0] and s.poses == 4 and s.redetections == 0
    assert [r["tracking"]["detected"] for r in recs] == [True, False, False, False]
    # frame 1's box is the cube projected at frame 0's pose
    R0, t0 = np.array(recs[0]["objects"][0]["R"]), np.array(recs[0]["objects"][0]["t"])
    np.testing.assert_allclose(recs[1]["objects"][0]["box"], np.clip(projected_box(F.CUBE_V, R0, t0, K), 0, 640), atol=0.02)


@pytest.fixture()
def fake_renderer(monkeypatch):
    monkeypatch.setattr(cli, "make_renderer", lambda device=None: F.SilhouetteRenderer())


def test_cli_end_to_end(export_dir, frames_dir, tmp_path, fake_renderer):
    dets = write_json(tmp_path / "d.json", [{"image_id": i, "category_id": 1, "bbox": [100, 90 + i, 60, 60], "score": 1}
                                           for i in range(4)] + [{"image_id": 1, "category_id": 4, "bbox": [0, 0, 9, 9]}])
    out = tmp_path / "out"
    r = CliRunner().invoke(cli.main, [str(frames_dir), "--model", str(export_dir), "--fx", "600", "--fy", "610",
                                      "--cx", "320", "--cy", "240", "--detections", str(dets), "--out", str(out),
                                      "--bop-csv", "--backend", "onnxruntime-cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "p50 ms" in r.output and "FPS" in r.output and "classifier" in r.output
    assert "frame 2: skipped" in r.output and "object 4 is not in the exported model" in r.output
    recs = read_jsonl(out / "poses.jsonl")
    assert [len(x.get("objects", [])) for x in recs] == [1, 1, 0, 1]
    assert len((out / "results.csv").read_text().splitlines()) == 4
    assert (out / "overlay.mp4").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["{frames}", "--model", "{model}", "--detections", "{dets}"], "missing camera"),
    (["{frames}", "--model", "{model}", "--fx", "600", "--fy", "600", "--cx", "1", "--cy", "1"], "no detections"),
    (["{tmp}/nope", "--model", "{model}", "--camera", "{cam}", "--detections", "{dets}"], "input not found"),
    (["{frames}", "--model", "{tmp}/nomodel", "--camera", "{cam}", "--detections", "{dets}"], "export directory not found"),
    (["{frames}", "--model", "{model}", "--camera", "{tmp}/k.json", "--detections", "{dets}"], "k.json: file not found"),
    (["{frames}", "--model", "{model}", "--camera", "{cam}", "--detections", "{tmp}/none.json"], "detections file not found"),
    (["{frames}", "--model", "{model}", "--camera", "{cam}", "--detector", "{dets}", "--detections", "{dets}"], "not both"),
    (["--model", "{model}"], "missing INPUT"),
])
def test_cli_errors_are_one_line(args, message, export_dir, frames_dir, tmp_path, fake_renderer):
    cam = write_json(tmp_path / "cam.json", {"cam_K": K.reshape(-1).tolist()})
    dets = write_json(tmp_path / "d.json", [])
    args = [a.format(frames=frames_dir, model=export_dir, dets=dets, cam=cam, tmp=tmp_path) for a in args]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 2, r.output
    err = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and message in err[0], r.output


def test_stale_demo_export_is_detected_and_refused(tmp_path, monkeypatch):
    import hashlib

    from mrcnet.runtime import manifest as M

    if not M.DEMO_CHECKPOINT.is_file():
        pytest.skip("the demo model is not shipped in this checkout")
    d = tmp_path / "demo-export"
    assert "no export" in M.demo_export_problem(d)
    d.mkdir()
    sha = hashlib.sha256(M.DEMO_CHECKPOINT.read_bytes()).hexdigest()
    (d / M.MANIFEST_NAME).write_text(json.dumps({"checkpoint_sha256": sha}))
    assert M.demo_export_problem(d) is None
    (d / M.MANIFEST_NAME).write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    assert "another checkpoint" in M.demo_export_problem(d)
    # mrcnet-run --demo on the stale default export: one line telling how to re-export
    monkeypatch.setattr(M, "DEMO_EXPORT_DIR", d)
    r = CliRunner().invoke(cli.main, ["--demo", "--out", str(tmp_path / "out"), "--no-video"])
    assert r.exit_code == 2 and "re-export it: mrcnet-export --out" in r.output, r.output

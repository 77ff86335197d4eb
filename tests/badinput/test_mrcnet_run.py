"""Bad inputs of ``mrcnet-run`` (fake export with file hashes, silhouette renderer double).

Every case: exit status, one error line naming the input, no traceback, and the earlier run in
--out left untouched; the per-frame cases finish (exit 0) with the reason recorded per frame."""
import json

import cv2
import numpy as np
import pytest
from badinput_checks import assert_ok, assert_one_line_error, invoke, tree_digest

from mrcnet.export.manifest import update_file_records
from mrcnet.runtime import cli
from mrcnet.runtime.formats.poses_jsonl import read_poses_jsonl

import runtime_fakes as F

K = [[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]]
DET = {"scene_id": 1, "image_id": 0, "category_id": 1, "bbox": [100, 90, 60, 60], "score": 0.9}


@pytest.fixture(autouse=True)
def fake_renderer(monkeypatch):
    monkeypatch.setattr(cli, "make_renderer", lambda device=None: F.SilhouetteRenderer())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    d = F.make_export(tmp_path_factory.mktemp("export"), obj_ids=(1, 2))
    raw = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(update_file_records(d, raw), indent=1))
    return d


def write(path, obj):
    """Write ``obj`` (str as is, else JSON) to ``path``; returns the path."""
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


@pytest.fixture()
def inputs(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        img = np.full((480, 640, 3), 20, np.uint8)
        img[100:140, 110:150] = 200
        cv2.imwrite(str(frames / f"{i:06d}.png"), img)
    cam = write(tmp_path / "cam.json", {"cam_K": np.reshape(K, -1).tolist()})
    dets = write(tmp_path / "dets.json", [{**DET, "image_id": i} for i in range(3)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "poses.jsonl").write_text('{"frame":0,"name":"earlier","objects":[]}\n')  # an earlier run
    return {"input": frames, "--camera": cam, "--detections": dets, "--out": out, "tmp": tmp_path}


def args_of(inp, export_dir, extra=(), drop=()):
    a = [inp["input"], "--model", export_dir, "--backend", "onnxruntime-cpu", "-q", "--no-video"]
    for k in ("--camera", "--detections", "--out"):
        if k not in drop:
            a += [k, inp[k]]
    return a + list(extra)


def damaged_export(tmp, export_dir):
    import shutil

    d = tmp / "damaged"
    shutil.copytree(export_dir, d)
    data = bytearray((d / "classifier.onnx").read_bytes())
    data[-200:-100] = bytes(100)
    (d / "classifier.onnx").write_bytes(bytes(data))
    return d


# name -> (make(inputs, export_dir) -> (extra args, dropped options, model override), exit, needles)
CASES = {
    # class 1: damaged inputs reported as results
    "damaged graph": (lambda i, e: ([], [], damaged_export(i["tmp"], e)), 2, ["classifier.onnx is damaged"]),
    # class 4: results overwritten
    "rerun into an earlier run": (lambda i, e: (["--out", i["--out"]], ["--out"], None), 2,
                                  ["holds poses.jsonl of an earlier run", "--resume", "--overwrite"]),
    "resume and overwrite": (lambda i, e: (["--resume", "--overwrite"], [], None), 2, ["not both"]),
    # class 5: tracebacks where one line is due
    "--out is a file": (lambda i, e: (["--out", write(i["tmp"] / "f.txt", "x")], ["--out"], None), 2,
                        ["f.txt", "not a folder"]),
    "--out not creatable": (lambda i, e: (["--out", write(i["tmp"] / "f.txt", "x") / "sub"], ["--out"], None), 2,
                            ["f.txt/sub", "cannot create"]),
    # class 6: nonsense accepted silently
    "K[2,2] = 0": (lambda i, e: (["--camera", write(i["tmp"] / "k.json", {"cam_K": [600, 0, 320, 0, 610, 240, 0, 0, 0]})],
                                 ["--camera"], None), 2, ["k.json", "last row"]),
    "focal 1e-9": (lambda i, e: (["--camera", write(i["tmp"] / "k.json", {"fx": 1e-9, "fy": 1e-9, "cx": 320, "cy": 240})],
                                 ["--camera"], None), 2, ["k.json", "focal lengths"]),
    "principal point far away": (lambda i, e: (["--camera", write(i["tmp"] / "k.json", {"cam_K": [600, 0, 9e5, 0, 610, 240, 0, 0, 1]})],
                                               ["--camera"], None), 2, ["k.json", "principal point"]),
    "camera size != frames": (lambda i, e: (["--camera", write(i["tmp"] / "k.json", {"cam_K": np.reshape(K, -1).tolist(),
                                                                                     "width": 1280, "height": 960})],
                                            ["--camera"], None), 2, ["k.json", "1280x960", "640x480"]),
    "--fx -5": (lambda i, e: (["--fx", "-5", "--fy", "600", "--cx", "320", "--cy", "240"], ["--camera"], None), 2,
                ["--fx/--fy/--cx/--cy", "focal lengths"]),
    "--fx 0": (lambda i, e: (["--fx", "0", "--fy", "600", "--cx", "320", "--cy", "240"], ["--camera"], None), 2,
               ["--fx/--fy/--cx/--cy", "focal lengths"]),
    "--fx nan": (lambda i, e: (["--fx", "nan", "--fy", "600", "--cx", "320", "--cy", "240"], ["--camera"], None), 2,
                 ["--fx/--fy/--cx/--cy", "finite"]),
    "NaN detection score": (lambda i, e: (["--detections", write(i["tmp"] / "d.json", '[{"scene_id": 1, "image_id": 0, '
                                           '"category_id": 1, "bbox": [1, 2, 30, 40], "score": NaN}]')],
                                          ["--detections"], None), 2, ["d.json", "detection 0", "score is nan"]),
    "non-integer category id": (lambda i, e: (["--detections", write(i["tmp"] / "d.json", [{**DET, "category_id": 1.5}])],
                                              ["--detections"], None), 2, ["d.json", "detection 0", "integer"]),
    "--scene-id matching nothing": (lambda i, e: (["--scene-id", "99"], [], None), 2, ["dets.json", "--scene-id 99"]),
    "--precision on ONNX Runtime": (lambda i, e: (["--precision", "int8"], [], None), 2, ["--precision int8", "TensorRT"]),
    "--max-frames -1": (lambda i, e: (["--max-frames", "-1"], [], None), 2, ["--max-frames"]),
    "--threads -1": (lambda i, e: (["--threads", "-1"], [], None), 2, ["--threads"]),
    # class 7: duplicate frame numbers in a BOP folder
    "two images with one frame number": (lambda i, e: (write_dup(i), [], None), 2, ["several images with frame number 1"]),
}


def write_dup(i):
    img = np.zeros((480, 640, 3), np.uint8)
    cv2.imwrite(str(i["input"] / "1.png"), img)
    cv2.imwrite(str(i["input"] / "0001.jpg"), img)
    return []


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_keeps_the_earlier_run(case, inputs, export_dir):
    make, code, needles = CASES[case]
    extra, drop, model = make(inputs, export_dir)
    if case not in ("rerun into an earlier run", "resume and overwrite"):
        extra = [*extra, "--resume"]  # past the earlier-run check: the failure must still touch nothing
    before = tree_digest(inputs["--out"])
    r = invoke(cli.main, args_of(inputs, model or export_dir, extra, drop))
    assert_one_line_error(r, code, *needles)
    assert tree_digest(inputs["--out"]) == before


def test_per_frame_problems_are_skipped_with_a_reason(inputs, export_dir, tmp_path):
    """Class 2 and 6 per frame: a singular K at one frame of scene_camera.json, a 1e-6 px box and an
    unknown object are skipped with their reason; the other frames give poses (exit 0)."""
    good = np.reshape(K, -1).tolist()
    cam = write(tmp_path / "scene_camera.json", {"0": {"cam_K": good}, "1": {"cam_K": [0] * 9}, "2": {"cam_K": good}})
    dets = write(tmp_path / "d.json", [{**DET, "image_id": 0}, {**DET, "image_id": 1},
                                       {**DET, "image_id": 2}, {**DET, "image_id": 2, "bbox": [5, 5, 1e-6, 1e-6]},
                                       {**DET, "image_id": 2, "category_id": 7}])
    out = tmp_path / "fresh"
    r = invoke(cli.main, [inputs["input"], "--model", export_dir, "--backend", "onnxruntime-cpu", "-q",
                          "--no-video", "--camera", cam, "--detections", dets, "--out", out])
    assert_ok(r)
    recs = read_poses_jsonl(out / "poses.jsonl")
    assert "scene_camera.json: frame 1" in recs[1]["error"]
    assert len(recs[0]["objects"]) == 1 and len(recs[2]["objects"]) == 1
    why = sorted(s["error"] for s in recs[2]["skipped"])
    assert any("smaller than" in w for w in why) and any("object 7 is not in the exported model" in w for w in why)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_failed"] == 1 and summary["skipped_detections"] == 2


def test_resume_continues_the_earlier_run(inputs, export_dir):
    r = invoke(cli.main, args_of(inputs, export_dir, ["--resume", "--bop-csv"]))
    assert_ok(r)
    recs = read_poses_jsonl(inputs["--out"] / "poses.jsonl")
    assert [x["frame"] for x in recs] == [0, 1, 2] and recs[0]["name"] == "earlier"
    assert "2 frames" in r.output and "1 frames resumed" in r.output

"""ONNX detectors in the runtime: Ultralytics raw outputs (1, 4 + C, A) decoded here with OpenCV's
class-aware NMS, NMS-inside rows (1, N, 6), the layout read from the graph, boxes mapped back through
the letterbox, one-line errors for other outputs, the detector on the pose networks' providers, and
mrcnet-run end to end with a detector graph built here (demo export, demo clip)."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mrcnet.runtime import cli
from mrcnet.runtime.backends import create_backend
from mrcnet.runtime.backends.onnxruntime import session_providers
from mrcnet.runtime.detections import OnnxDetector as OldName
from mrcnet.runtime.detectors import DetectionError, OnnxDetector, make_detector, parse_class_map
from mrcnet.runtime.detectors import ultralytics as U
from mrcnet.runtime.manifest import load_manifest

import runtime_fakes as F

FRAME = np.zeros((480, 640, 3), np.uint8)  # into a 320 x 320 input: scale 0.5, pad (0, 40)

# (cx, cy, w, h, class, score) in input pixels
ANCHORS = [
    (60, 100, 40, 40, 0, 0.9),   # 0: kept
    (62, 100, 40, 40, 0, 0.8),   # 1: IoU 0.9 with 0, same class: suppressed
    (60, 100, 40, 40, 1, 0.85),  # 2: the same box as 0, another class: kept
    (200, 150, 60, 40, 2, 0.6),  # 3: kept (its class-0 score 0.3 is not its best)
    (250, 250, 20, 20, 0, 0.1),  # 4: below the score threshold
    (80, 100, 40, 40, 0, 0.7),   # 5: IoU 1/3 with 0: kept at IoU threshold 0.7, suppressed at 0.3
    (310, 60, 40, 40, 1, 0.5),   # 6: runs past the input's right edge: clipped to the frame
]
# expected (class, score, frame box): x_frame = x_in / 0.5, y_frame = (y_in - 40) / 0.5
EXPECTED = [
    (0, 0.9, [80, 80, 160, 160]),
    (1, 0.85, [80, 80, 160, 160]),
    (0, 0.7, [120, 80, 200, 160]),
    (2, 0.6, [340, 180, 460, 260]),
    (1, 0.5, [580, 0, 640, 80]),
]


def raw(n_classes=3, n_anchors=12):
    p = F.raw_prediction(ANCHORS, n_classes, n_anchors)
    p[0, 4 + 0, 3] = 0.3
    return p


def save(model, path):
    onnx.save(model, path)
    return path


def check(dets, expected, obj_ids=None, score_tol=1e-6):
    assert len(dets) == len(expected), [d.to_dict() for d in dets]
    for d, (c, s, box) in zip(dets, expected):
        assert d.obj_id == (c if obj_ids is None else obj_ids[c])
        assert d.score == pytest.approx(s, abs=score_tol)
        np.testing.assert_allclose(d.box, box, atol=1e-4)


# ------------------------------------------------------------------------------ Ultralytics raw
def test_raw_output_is_decoded_with_class_aware_nms_and_mapped_to_the_frame(tmp_path):
    path = save(F.ultralytics_model(raw()), tmp_path / "yolo.onnx")
    det = OnnxDetector(path, score_threshold=0.25)
    assert det.layout == U.RAW and det.input_size == (320, 320) and det.n_classes == 3
    check(det(0, FRAME), EXPECTED)  # best score first, class = object id without a map
    # a lower IoU threshold also suppresses anchor 5 (IoU 1/3 with anchor 0)
    check(OnnxDetector(path, iou_threshold=0.3)(0, FRAME), [e for e in EXPECTED if e[1] != 0.7])
    # class map: class 2 is not in it and is dropped
    check(OnnxDetector(path, class_map={0: 1, 1: 5})(0, FRAME), [e for e in EXPECTED if e[0] != 2], {0: 1, 1: 5})
    assert OldName is OnnxDetector  # the old import path still works


def test_float16_export(tmp_path):
    det = OnnxDetector(save(F.ultralytics_model(raw(), half=True), tmp_path / "half.onnx"))
    assert det.input_dtype == np.float16
    check(det(0, FRAME), EXPECTED, score_tol=1e-3)  # the scores at float16 precision; the boxes are exact


def test_obj_names_in_the_metadata_give_the_class_map(tmp_path):
    names = ["obj_000007", "obj_000003", "obj_000009"]
    det = OnnxDetector(save(F.ultralytics_model(raw(), names=names), tmp_path / "yolo.onnx"))
    assert det.names == names and det.class_map == {0: 7, 1: 3, 2: 9}
    check(det(0, FRAME), EXPECTED, {0: 7, 1: 3, 2: 9})
    other = OnnxDetector(save(F.ultralytics_model(raw(), names=["cup", "box", "nut"]), tmp_path / "o.onnx"))
    assert other.class_map is None  # other names: class = object id (or --class-map)


def test_segment_export_uses_the_class_rows_only(tmp_path):
    """A segment model: mask coefficient rows after the class scores (here large, so reading them as
    classes would change every box) and a second output; the class count comes from ``names``."""
    p = np.concatenate([raw(), np.full((1, 2, 12), 5.0, np.float32)], axis=1)
    m = F.ultralytics_model(p, names=["a", "b", "c"], extra_output=np.zeros((1, 2, 8, 8)))
    det = OnnxDetector(save(m, tmp_path / "seg.onnx"))
    assert det.layout == U.RAW and det.n_classes == 3
    check(det(0, FRAME), EXPECTED)


def test_dynamic_output_shape_is_classified_on_the_first_frame(tmp_path):
    det = OnnxDetector(save(F.ultralytics_model(raw(), dynamic=True), tmp_path / "dyn.onnx"))
    assert det.layout == U.DEFERRED
    check(det(0, FRAME), EXPECTED)
    bad = OnnxDetector(save(F.ultralytics_model(np.zeros((1, 7, 3)), dynamic=True), tmp_path / "bad.onnx"))
    with pytest.raises(DetectionError) as e:
        bad(0, FRAME)
    assert "bad.onnx" in str(e.value) and "(1, 7, 3)" in str(e.value) and "\n" not in str(e.value)


def test_nms_is_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    keep = U.nms(boxes, np.array([0.6, 0.9, 0.8, 0.3]), np.array([0, 0, 1, 0]), 0.25, 0.5)
    assert keep.tolist() == [1, 2, 3]  # box 0 loses to box 1 of its class; box 2 is another class
    assert U.nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.25).tolist() == []


# ------------------------------------------------------------------------------- NMS inside
def test_nms_rows_layout(tmp_path):
    rows = np.zeros((1, 8, 6), np.float32)  # x1 y1 x2 y2 score class, padding rows score 0
    rows[0, 0] = [290, 40, 330, 80, 0.5, 1]
    rows[0, 1] = [40, 80, 80, 120, 0.9, 0]
    rows[0, 2] = [10, 10, 20, 20, 0.2, 2]
    det = OnnxDetector(save(F.ultralytics_model(rows), tmp_path / "nms.onnx"))
    assert det.layout == U.ROWS
    check(det(0, FRAME), [(0, 0.9, [80, 80, 160, 160]), (1, 0.5, [580, 0, 640, 80])])


@pytest.mark.parametrize("pred, extra, shape", [
    (np.zeros((1, 5, 7, 2)), None, "(1, 5, 7, 2)"),
    (np.zeros((1, 84)), None, "(1, 84)"),
    (np.zeros((2, 84, 100)), None, "(2, 84, 100)"),
    (np.zeros((1, 8, 6)), np.zeros((1, 2)), "(1, 8, 6)"),  # NMS rows next to a second output
])
def test_other_outputs_are_refused_in_one_line(tmp_path, pred, extra, shape):
    path = save(F.ultralytics_model(pred, extra_output=extra), tmp_path / "odd.onnx")
    with pytest.raises(DetectionError) as e:
        OnnxDetector(path)
    msg = str(e.value)
    assert msg.startswith(f"detector {path}: unsupported outputs output0 {shape}") and "\n" not in msg


def test_mrcnet_run_refuses_an_unsupported_detector_in_one_line(tmp_path):
    from mrcnet.runtime import manifest as M

    path = save(F.ultralytics_model(np.zeros((1, 5, 7, 2))), tmp_path / "odd.onnx")
    r = CliRunner().invoke(cli.main, [str(M.DEMO_DIR / M.DEMO_CLIP), "--model", str(tmp_path), "--fx", "500", "--fy",
                                      "500", "--cx", "320", "--cy", "240", "--detector", str(path),
                                      "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    err = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and "odd.onnx: unsupported outputs output0 (1, 5, 7, 2)" in err[0], r.output


# ------------------------------------------------------------------------- providers, class map
def test_detector_runs_on_the_pose_networks_providers(tmp_path):
    path = save(F.ultralytics_model(raw()), tmp_path / "yolo.onnx")
    export = F.make_export(tmp_path / "export")
    for kind in ("auto", "onnxruntime-cpu"):
        be = create_backend(load_manifest(export), kind)
        det = make_detector(detector=path, backend=kind, export_dir=export)
        assert det.providers == be.providers
        be.close()
    # on a GPU machine: the same provider options as the pose graphs (device, TensorRT caches)
    provs = session_providers("auto", 1, cache_dir=tmp_path / "cache",
                              available=["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"])
    assert [p for p, _ in provs] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provs[0][1]["device_id"] == "1" and provs[0][1]["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert provs[1][1]["device_id"] == "1" and (tmp_path / "cache").is_dir()
    assert [p for p, _ in session_providers("onnxruntime-cpu")] == ["CPUExecutionProvider"]


def test_class_map_from_data_yaml(tmp_path):
    y = tmp_path / "data.yaml"
    y.write_text("names: {0: obj_000002, 1: obj_000005}\nbop_obj_ids: {0: 2, 1: 5}\n")
    assert parse_class_map(str(y)) == {0: 2, 1: 5}
    (tmp_path / "bad.yaml").write_text("names: [a]\n")
    with pytest.raises(DetectionError, match="bad.yaml: no 'bop_obj_ids'"):
        parse_class_map(str(tmp_path / "bad.yaml"))


# ------------------------------------------------------------------------------- end to end
def test_mrcnet_run_with_an_ultralytics_detector_matches_the_same_boxes_from_a_file(demo_export, tmp_path):
    """The demo clip's first three frames: a raw-output detector graph (640 x 640 input, obj_<id>
    names) whose boxes are the demo's frame-0 detections gives the same poses as those boxes read
    from a detections file."""
    from mrcnet.runtime import manifest as M

    recs = [r for r in json.loads((M.DEMO_DIR / M.DEMO_DETECTIONS).read_text()) if r["image_id"] == 0]
    obj_ids = sorted({r["category_id"] for r in recs})
    anchors = [(x + w / 2, y + h / 2 + 80, w, h, obj_ids.index(r["category_id"]), 0.9)  # pad 80 above
               for r in recs for x, y, w, h in [r["bbox"]]]
    pred = F.raw_prediction(anchors, len(obj_ids), 64)
    det = save(F.ultralytics_model(pred, (640, 640), names=[f"obj_{o:06d}" for o in obj_ids]), tmp_path / "det.onnx")
    frames = {str(i): [{"obj_id": r["category_id"], "bbox": r["bbox"], "score": 0.9} for r in recs] for i in range(3)}
    (tmp_path / "dets.json").write_text(json.dumps(frames))
    common = [str(M.DEMO_DIR / M.DEMO_CLIP), "--model", str(demo_export), "--camera", str(M.DEMO_DIR / M.DEMO_CAMERA),
              "--max-frames", "3", "--no-video", "-q", "--backend", "onnxruntime-cpu"]
    out = {}
    for name, args in (("detector", ["--detector", str(det)]), ("file", ["--detections", str(tmp_path / "dets.json")])):
        r = CliRunner().invoke(cli.main, common + args + ["--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        out[name] = [json.loads(line) for line in (tmp_path / name / "poses.jsonl").read_text().splitlines()]
    assert len(out["detector"]) == 3
    for a, b in zip(out["detector"], out["file"]):
        assert len(a["objects"]) == len(recs) > 0
        key = lambda o: (o["obj_id"], o["box"])  # noqa: E731
        for oa, ob in zip(sorted(a["objects"], key=key), sorted(b["objects"], key=key)):
            assert oa["obj_id"] == ob["obj_id"] and oa["box"] == ob["box"]
            np.testing.assert_allclose(oa["R"], ob["R"], atol=1e-5)
            np.testing.assert_allclose(oa["t"], ob["t"], atol=1e-3)

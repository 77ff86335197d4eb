"""runtime.formats: the one owner of each file format (atomic writes, hashing, BOP files, the
results CSV, poses.jsonl, camera files) - torch-free."""
import json
import os
import stat

import numpy as np
import pytest

from mrcnet.runtime.formats import bop as B
from mrcnet.runtime.formats import files as Fi
from mrcnet.runtime.formats.camera import Camera, CameraFileError
from mrcnet.runtime.formats.poses_jsonl import (PosesFormatError, PosesJsonlWriter, loads_strict,
                                                read_poses_jsonl)
from mrcnet.runtime.preprocess import InputError, check_camera, clip_box

K = [[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]]


# ------------------------------------------------------------------------------------- files
def test_atomic_writes_are_world_readable_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Fi.atomic_write_text(tmp_path / "a.txt", "x")
        Fi.atomic_write_bytes(tmp_path / "b.bin", b"y")
        Fi.atomic_copy(tmp_path / "b.bin", tmp_path / "c.bin")
    finally:
        os.umask(old)
    for n in ("a.txt", "b.bin", "c.bin"):
        assert stat.S_IMODE((tmp_path / n).stat().st_mode) == 0o644, n
    assert (tmp_path / "c.bin").read_bytes() == b"y"


def test_atomic_open_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "f.json"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with Fi.atomic_open(p) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_sha256_file(tmp_path):
    import hashlib

    (tmp_path / "x").write_bytes(b"abc" * 1000)
    assert Fi.sha256_file(tmp_path / "x") == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_prepare_out_dir_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(Fi.OutputError, match=r"--out .*file: exists and is not a folder"):
        Fi.prepare_out_dir(tmp_path / "file")
    with pytest.raises(Fi.OutputError, match=r"--out .*file/sub: cannot create the folder"):
        Fi.prepare_out_dir(tmp_path / "file" / "sub")  # unwritable even for root
    with pytest.raises(Fi.OutputError, match=r"--json .*: is a folder"):
        Fi.check_out_file(tmp_path, "--json")
    assert Fi.prepare_out_dir(tmp_path / "new" / "deep").is_dir()


# --------------------------------------------------------------------------------- poses.jsonl
def test_poses_jsonl_is_strict_json(tmp_path):
    p = tmp_path / "p.jsonl"
    with PosesJsonlWriter(p) as w:
        w.write({"frame": 0, "objects": [{"t": [1.0, 2.0, 3.0]}]})
        with pytest.raises(ValueError):
            w.write({"frame": 1, "objects": [{"t": [float("nan"), 0, 0]}]})
    text = p.read_text()
    assert "NaN" not in text and text.count("\n") == 1
    with pytest.raises(ValueError):
        loads_strict('{"t": NaN}')
    assert read_poses_jsonl(p) == [{"frame": 0, "objects": [{"t": [1.0, 2.0, 3.0]}]}]


def test_poses_jsonl_torn_last_line_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"frame": 0}\n{"frame": 1}\n{"fra')
    assert read_poses_jsonl(p) == [{"frame": 0}, {"frame": 1}]
    read_poses_jsonl(p, repair=True)
    assert p.read_text() == '{"frame": 0}\n{"frame": 1}\n'
    with PosesJsonlWriter(p, append=True) as w:
        w.write({"frame": 2})
    assert [r["frame"] for r in read_poses_jsonl(p)] == [0, 1, 2]
    p.write_text('{"frame": 0}\nnot json\n{"frame": 2}\n')
    with pytest.raises(PosesFormatError, match=r"p.jsonl:2"):
        read_poses_jsonl(p)


def test_poses_jsonl_full_disk_leaves_no_torn_line(tmp_path, monkeypatch):
    """Class 4: a write that fails half-way (disk full) is truncated away; the error names the file."""
    from mrcnet.runtime.formats import poses_jsonl as PJ

    p = tmp_path / "p.jsonl"
    w = PosesJsonlWriter(p)
    w.write({"frame": 0})
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PJ.os, "write", half_then_enospc)
    with pytest.raises(Fi.OutputError, match=r"p.jsonl: write failed \(No space left on device\)"):
        w.write({"frame": 1, "objects": []})
    monkeypatch.setattr(PJ.os, "write", real_write)
    w.close()
    assert p.read_text() == '{"frame":0}\n'


# -------------------------------------------------------------------------- BOP results CSV
def _row(**kw):
    r = {"scene_id": 1, "im_id": 2, "obj_id": 3, "score": 0.5, "R": np.eye(3), "t": [1.0, 2.0, 3.0], "time": 0.1}
    r.update(kw)
    return r


def test_results_csv_round_trip_and_refusals(tmp_path):
    p = tmp_path / "r.csv"
    assert B.save_bop_results(p, [_row(), _row(im_id=3)]) == 2
    rows = B.load_bop_results(p)
    assert [r["im_id"] for r in rows] == [2, 3] and rows[0]["score"] == 0.5
    with pytest.raises(ValueError, match="non-finite"):
        B.format_result_row(_row(t=[np.nan, 0, 0]))
    for R, why in ((np.zeros((3, 3)), "not a rotation"), (2 * np.eye(3), "not a rotation"),
                   (np.diag([1.0, 1.0, -1.0]), "det R")):
        p.write_text(B.RESULTS_HEADER + "\n" + B.format_result_row(_row(R=R)) + "\n")
        with pytest.raises(B.BopFormatError, match=f"r.csv:2: .*{why}"):
            B.load_bop_results(p)
    p.write_bytes(B.RESULTS_HEADER.encode() + b"\n\xff\xfe\x00garbage\n")
    with pytest.raises(B.BopFormatError, match="r.csv: not a text CSV"):
        B.load_bop_results(p)


def test_results_writer_keeps_rows_on_interrupt(tmp_path):
    p = tmp_path / "r.csv"
    with pytest.raises(KeyboardInterrupt):
        with B.BopResultsWriter(p) as w:
            w.write(_row())
            raise KeyboardInterrupt
    assert len(B.load_bop_results(p)) == 1


# ------------------------------------------------------------------------------- detections
@pytest.mark.parametrize("record, message", [
    ({"scene_id": 1, "image_id": 0, "category_id": 1, "score": float("nan"), "bbox": [0, 0, 9, 9]}, "score is nan"),
    ({"scene_id": 1, "image_id": 0, "category_id": 1.5, "score": 1, "bbox": [0, 0, 9, 9]}, "ids must be integers"),
    ({"scene_id": 1, "image_id": "a", "category_id": 1, "score": 1, "bbox": [0, 0, 9, 9]}, "ids must be integers"),
    ({"scene_id": 1, "image_id": 0, "category_id": 1, "score": 1, "bbox": [0, 0, 0, 9]}, "width and height"),
    ({"scene_id": 1, "image_id": 0, "category_id": 1, "score": 1, "bbox": [0, 0, 9]}, "4 finite numbers"),
])
def test_detections_nonsense_is_refused(tmp_path, record, message):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([record]).replace("NaN", "NaN"))
    with pytest.raises(B.BopFormatError, match=f"d.json: .*{message}"):
        B.load_detections(p)


def test_detections_layouts_share_one_reader(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"annotations": [{"image_id": 2, "category_id": 4.0, "bbox": [1, 2, 3, 4]}]}))
    (d,) = B.load_detections(p, strict=False)
    assert d["category_id"] == 4 and d["score"] == 1.0 and d["scene_id"] is None
    with pytest.raises(B.BopFormatError, match="expected a JSON list"):
        B.load_detections(p)  # strict: the BOP'22 layout only
    p.write_text(json.dumps([{"image_id": 2, "category_id": 4, "score": 1, "bbox": [1, 2, 3, 4]}]))
    with pytest.raises(B.BopFormatError, match="missing key 'scene_id' in detection 0"):
        B.load_detections(p)


# ------------------------------------------------------------------------------------ cameras
@pytest.mark.parametrize("K_bad, message", [
    ([[600, 0, 320], [0, 610, 240], [0, 0, 0]], "last row"),
    ([[600, 0, 320], [0, 610, 240], [0, 1, 1]], "last row"),
    ([[1e-9, 0, 320], [0, 610, 240], [0, 0, 1]], "focal lengths"),
    ([[-5, 0, 320], [0, 610, 240], [0, 0, 1]], "focal lengths"),
    ([[np.nan, 0, 320], [0, 610, 240], [0, 0, 1]], "finite"),
    ([[600, 0, 1e6], [0, 610, 240], [0, 0, 1]], "principal point"),
])
def test_camera_nonsense_is_refused(K_bad, message):
    """Class 6: K[2,2] = 0, a wrong last row, tiny / negative / NaN focal lengths, a principal point
    far outside the image."""
    with pytest.raises(InputError, match=message):
        check_camera(np.array(K_bad, float), size=(640, 480))


def test_tiny_box_is_refused():
    with pytest.raises(InputError, match="smaller than"):
        clip_box([100, 100, 100 + 1e-6, 100 + 1e-6], 640, 480)


def test_per_frame_camera_with_one_bad_K_fails_only_that_frame(tmp_path):
    """Class 2: a singular K at one frame of scene_camera.json skips that frame, not the run."""
    p = tmp_path / "scene_camera.json"
    good = np.reshape(K, -1).tolist()
    p.write_text(json.dumps({"0": {"cam_K": good}, "1": {"cam_K": [0] * 9}, "2": {"cam_K": good[:5]},
                             "3": {"cam_K": good}}))
    cam = Camera.load(p)
    np.testing.assert_allclose(cam.check_frame(0, 640, 480), K)
    with pytest.raises(InputError, match="scene_camera.json: frame 1"):
        cam.check_frame(1, 640, 480)
    with pytest.raises(InputError, match="frame 2"):
        cam.K(2)
    np.testing.assert_allclose(cam.K(3), K)


def test_camera_size_must_match_the_frames(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({"cam_K": np.reshape(K, -1).tolist(), "width": 640, "height": 480}))
    cam = Camera.load(p)
    cam.check_frame(0, 640, 480)
    with pytest.raises(InputError, match="640x480 images, the frame is 320x240"):
        cam.check_frame(0, 320, 240)
    p.write_text(json.dumps({"cam_K": [600, 0, 320, 0, 610, 240, 0, 0, 0]}))
    with pytest.raises(CameraFileError, match="k.json: .*last row"):
        Camera.load(p)

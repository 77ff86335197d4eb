"""BOP reader/writer: round trips of every file kind, exact BOP formatting, symmetries, bad input.

No renderer and no torch needed; everything runs on tiny files in tmp_path.
"""
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from mrcnet.data import bop
from mrcnet.data.bop import BopFormatError


def _rot(axis, angle):
    return bop.rotation_about_axis(angle, axis)


# --------------------------------------------------------------------------------------------
# JSON layout and models_info / symmetries
# --------------------------------------------------------------------------------------------

def test_json_layout_is_bop_toolkit_style(tmp_path):
    p = tmp_path / "x.json"
    bop.save_json(p, {10: {"b": 1, "a": [1.5, 2]}, 2: [{"obj_id": 3}]})
    assert p.read_text() == '{\n  "2": [{"obj_id": 3}],\n  "10": {"a": [1.5, 2], "b": 1}\n}'
    bop.save_json(p, [{"b": 1, "a": 2}, {"c": 3}])
    assert p.read_text() == '[\n  {"a": 2, "b": 1},\n  {"c": 3}\n]'
    assert bop.load_json(p) == [{"a": 2, "b": 1}, {"c": 3}]
    assert bop.load_json(tmp_path / "x.json") is not None
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_models_info_round_trip(tmp_path):
    flip = np.eye(4)
    flip[:3, :3] = _rot([1, 0, 0], np.pi)
    flip[:3, 3] = [0.0, 0.0, 2.5]
    infos = {
        1: bop.ModelInfo(diameter=102.5, min_x=-10, min_y=-20, min_z=-30, size_x=20, size_y=40, size_z=60),
        2: bop.ModelInfo(diameter=55.0, min_x=-1, min_y=-2, min_z=-3, size_x=2, size_y=4, size_z=6,
                         symmetries_discrete=[flip],
                         symmetries_continuous=[{"axis": [0, 0, 1], "offset": [0, 0, 0]}]),
    }
    p = tmp_path / "models_info.json"
    bop.save_models_info(p, infos)
    raw = json.loads(p.read_text())
    assert set(raw) == {"1", "2"}
    assert raw["2"]["symmetries_discrete"] == [flip.reshape(-1).tolist()]
    assert raw["2"]["symmetries_continuous"] == [{"axis": [0.0, 0.0, 1.0], "offset": [0.0, 0.0, 0.0]}]
    assert "symmetries_discrete" not in raw["1"]
    back = bop.load_models_info(p)
    assert sorted(back) == [1, 2]
    assert back[1].diameter == 102.5 and back[1].size_z == 60 and back[1]["min_y"] == -20
    np.testing.assert_array_equal(back[2].symmetries_discrete[0], flip)
    np.testing.assert_array_equal(back[2].symmetries_continuous[0]["axis"], [0, 0, 1])
    assert not back[1].is_symmetric and back[2].is_symmetric


def test_symmetry_transforms_match_bop_toolkit_rules():
    flip = np.eye(4)
    flip[:3, :3] = _rot([1, 0, 0], np.pi)
    info = bop.ModelInfo(diameter=50.0, symmetries_discrete=[flip],
                         symmetries_continuous=[{"axis": [0, 0, 2.0], "offset": [1.0, 2.0, 0.0]}])
    tr = bop.symmetry_transforms(info, max_sym_disc_step=0.01)
    steps = int(np.ceil(np.pi / 0.01))  # 315
    assert len(tr) == 2 * steps
    np.testing.assert_allclose(tr[0]["R"], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(tr[0]["t"], np.zeros((3, 1)), atol=1e-12)
    assert tr[0]["t"].shape == (3, 1)
    # consecutive continuous samples: rotation by 2 pi / steps about z, through the offset
    step = 2 * np.pi / steps
    np.testing.assert_allclose(tr[1]["R"], _rot([0, 0, 1], step), atol=1e-12)
    o = np.array([[1.0], [2.0], [0.0]])
    np.testing.assert_allclose(tr[1]["t"], -tr[1]["R"] @ o + o, atol=1e-12)
    # second block: continuous composed with the discrete flip (R = R_c R_d, t = R_c t_d + t_c)
    np.testing.assert_allclose(tr[steps]["R"], flip[:3, :3], atol=1e-12)
    np.testing.assert_allclose(tr[steps + 1]["R"], _rot([0, 0, 1], step) @ flip[:3, :3], atol=1e-12)
    for t in tr:
        np.testing.assert_allclose(t["R"] @ t["R"].T, np.eye(3), atol=1e-9)
    # the farthest point from the axis (radius = diameter / 2) moves at most 1 % of the diameter
    assert 0.5 * 50.0 * step <= 0.01 * 50.0 + 1e-9
    # discrete-only objects: identity + the listed elements; raw dict entries work too
    raw = {"diameter": 10, "symmetries_discrete": [flip.reshape(-1).tolist()]}
    assert len(bop.symmetry_transforms(raw)) == 2
    assert len(bop.symmetry_transforms(bop.ModelInfo(diameter=1.0))) == 1


# --------------------------------------------------------------------------------------------
# Scene JSONs
# --------------------------------------------------------------------------------------------

def test_scene_camera_gt_and_gt_info_round_trip(tmp_path):
    K = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]])
    R = _rot([1, 2, 3], 0.7)
    cams = {0: {"cam_K": K, "depth_scale": 0.1},
            7: {"cam_K": K, "depth_scale": 1.0, "cam_R_w2c": R, "cam_t_w2c": np.array([1.0, 2.0, 3.0]),
                "elev": 45}}
    p = tmp_path / "scene_camera.json"
    bop.save_scene_camera(p, cams)
    first = p.read_text().splitlines()[1]
    assert first.startswith('  "0": {"cam_K": [572.4114, 0.0, 325.2611, 0.0, 573.57043')
    assert first.endswith('"depth_scale": 0.1},')
    back = bop.load_scene_camera(p)
    np.testing.assert_array_equal(back[0]["cam_K"], K)
    assert back[0]["cam_K"].shape == (3, 3) and back[7]["cam_t_w2c"].shape == (3,)
    np.testing.assert_array_equal(back[7]["cam_R_w2c"], R)
    assert back[7]["elev"] == 45 and back[0]["depth_scale"] == 0.1
    assert isinstance(cams[7]["cam_K"], np.ndarray)  # the input is not modified

    t = np.array([-12.5, 30.25, 800.0])
    gts = {0: [{"cam_R_m2c": R, "cam_t_m2c": t, "obj_id": 3}, {"cam_R_m2c": np.eye(3), "cam_t_m2c": t, "obj_id": 1}],
           3: []}
    p = tmp_path / "scene_gt.json"
    bop.save_scene_gt(p, gts)
    raw = json.loads(p.read_text())
    assert raw["0"][0]["cam_R_m2c"] == R.reshape(-1).tolist() and raw["0"][0]["cam_t_m2c"] == t.tolist()
    back = bop.load_scene_gt(p)
    assert list(back) == [0, 3] and back[3] == []
    np.testing.assert_array_equal(back[0][0]["cam_R_m2c"], R)
    np.testing.assert_array_equal(back[0][0]["cam_t_m2c"], t)
    assert back[0][0]["cam_t_m2c"].shape == (3,) and back[0][1]["obj_id"] == 1

    infos = {0: [{"bbox_obj": [1, 2, 30, 40], "bbox_visib": [-1, -1, -1, -1], "px_count_all": 1000,
                  "px_count_valid": 990, "px_count_visib": 0, "visib_fract": 0.0}]}
    p = tmp_path / "scene_gt_info.json"
    bop.save_scene_gt_info(p, infos)
    assert p.read_text() == ('{\n  "0": [{"bbox_obj": [1, 2, 30, 40], "bbox_visib": [-1, -1, -1, -1], '
                             '"px_count_all": 1000, "px_count_valid": 990, "px_count_visib": 0, '
                             '"visib_fract": 0.0}]\n}')
    assert bop.load_scene_gt_info(p) == infos


def test_camera_json(tmp_path):
    K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])
    bop.save_json(tmp_path / "camera.json", bop.camera_dict(K, 640, 480, depth_scale=0.1))
    cam = bop.load_camera(tmp_path / "camera.json")
    np.testing.assert_array_equal(cam["K"], K)
    assert (cam["width"], cam["height"], cam["depth_scale"]) == (640, 480, 0.1)


# --------------------------------------------------------------------------------------------
# Images, depth, masks
# --------------------------------------------------------------------------------------------

def test_images_depth_masks_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    bop.save_image(tmp_path / "a.png", bgr)
    np.testing.assert_array_equal(bop.load_image(tmp_path / "a.png"), bgr)
    np.testing.assert_array_equal(bop.load_image(tmp_path / "a.png", order="rgb"), bgr[:, :, ::-1])
    grey = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    bop.save_image(tmp_path / "g.tif", grey)
    np.testing.assert_array_equal(bop.load_image(tmp_path / "g.tif"), grey)
    bop.save_image(tmp_path / "a.jpg", bgr)
    assert bop.load_image(tmp_path / "a.jpg").shape == (12, 16, 3)

    depth = rng.uniform(100, 6000, (12, 16)).astype(np.float32)
    depth[0, 0] = 0
    depth[0, 1] = 7000  # beyond uint16 at 0.1 mm: stored as 0 (no measurement)
    bop.save_depth(tmp_path / "d.png", depth, depth_scale=0.1)
    back = bop.load_depth(tmp_path / "d.png", depth_scale=0.1)
    assert back.dtype == np.float32
    ok = np.ones_like(depth, bool)
    ok[0, 1] = False
    np.testing.assert_allclose(back[ok], depth[ok], atol=0.05 + 1e-3)
    assert back[0, 0] == 0 and back[0, 1] == 0

    mask = rng.random((12, 16)) > 0.5
    bop.save_mask(tmp_path / "m.png", mask)
    assert set(np.unique(bop.load_image(tmp_path / "m.png"))) <= {0, 255}
    np.testing.assert_array_equal(bop.load_mask(tmp_path / "m.png"), mask)
    m = np.zeros((10, 10), bool)
    m[2:5, 3:9] = True
    assert bop.bbox_from_mask(m) == [3, 2, 5, 2]  # BOP: w = x_max - x_min
    assert bop.bbox_from_mask(np.zeros((4, 4), bool)) == [-1, -1, -1, -1]


# --------------------------------------------------------------------------------------------
# Targets, detections, results
# --------------------------------------------------------------------------------------------

def test_test_targets_round_trip(tmp_path):
    tg = [{"scene_id": 2, "im_id": 5, "obj_id": 1, "inst_count": 2},
          {"scene_id": 1, "im_id": 3, "obj_id": 4, "inst_count": 1}]
    p = tmp_path / "test_targets_bop19.json"
    bop.save_test_targets(p, tg)
    assert p.read_text().splitlines()[1] == '  {"im_id": 3, "inst_count": 1, "obj_id": 4, "scene_id": 1},'
    assert bop.load_test_targets(p) == sorted(tg, key=lambda t: (t["scene_id"], t["im_id"]))
    assert bop.targets_from_gt([(0, 1, 5, 0.5), (0, 1, 5, 0.9), (0, 1, 6, 0.05), (0, 2, 6, None)]) == [
        {"scene_id": 0, "im_id": 1, "obj_id": 5, "inst_count": 2},
        {"scene_id": 0, "im_id": 2, "obj_id": 6, "inst_count": 1}]


def _uncompressed_rle(mask):
    """What bop_toolkit's pycoco_utils.binary_mask_to_rle writes (column-major run lengths)."""
    flat = mask.ravel(order="F").astype(np.uint8)
    counts = [0] if flat[0] else []
    changes = np.flatnonzero(np.diff(np.concatenate([[-1], flat, [-1]])) != 0)
    counts += np.diff(changes).tolist()
    return {"counts": counts, "size": list(mask.shape)}


def test_detections_round_trip_with_rle(tmp_path):
    m = np.zeros((30, 40), bool)
    m[5:12, 7:20] = True
    m[0, 0] = True
    dets = [{"scene_id": 1, "image_id": 4, "category_id": 2, "score": 0.875, "bbox": [7, 5, 13, 7],
             "segmentation": m, "time": 0.25},
            {"scene_id": 1, "image_id": 4, "category_id": 3, "score": 0.5, "bbox": [0, 0, 1, 1]}]
    p = tmp_path / "dets.json"
    bop.save_detections(p, dets)
    raw = json.loads(p.read_text())
    assert raw[0]["segmentation"]["size"] == [30, 40] and isinstance(raw[0]["segmentation"]["counts"], str)
    assert raw[1]["time"] == -1.0 and "segmentation" not in raw[1]
    back = bop.load_detections(p)
    assert back[0]["bbox"] == [7.0, 5.0, 13.0, 7.0] and back[0]["time"] == 0.25
    np.testing.assert_array_equal(bop.decode_rle(back[0]["segmentation"]), m)
    np.testing.assert_array_equal(bop.decode_rle(_uncompressed_rle(m)), m)  # BOP toolkit's RLE
    grouped = bop.group_detections(back)
    assert [d["score"] for d in grouped[(1, 4)]] == [0.875, 0.5]
    bop.save_detections(tmp_path / "dets.json.gz", back)
    assert bop.load_detections(tmp_path / "dets.json.gz")[0]["segmentation"] == back[0]["segmentation"]


def test_bop19_results_round_trip_and_incremental_writer(tmp_path):
    R = _rot([0.3, -1, 2], 1.1)
    rows = [{"scene_id": 1, "im_id": 2, "obj_id": 3, "score": 0.9, "R": R, "t": np.array([1.5, -2.0, 700.25]),
             "time": 0.5},
            {"scene_id": 1, "im_id": 2, "obj_id": 4, "score": 0.1, "R": np.eye(3), "t": np.zeros(3)}]
    p = tmp_path / "res_tless-test.csv"
    assert bop.save_bop_results(p, rows) == 2
    lines = p.read_text().splitlines()
    assert lines[0] == "scene_id,im_id,obj_id,score,R,t,time"
    assert lines[2] == "1,2,4,0.1,1.0 0.0 0.0 0.0 1.0 0.0 0.0 0.0 1.0,0.0 0.0 0.0,-1.0"
    back = bop.load_bop_results(p)
    np.testing.assert_array_equal(back[0]["R"], R)  # repr floats: exact
    np.testing.assert_array_equal(back[0]["t"], [1.5, -2.0, 700.25])
    assert back[1]["time"] == -1.0 and back[0]["obj_id"] == 3

    q = tmp_path / "inc.csv"
    with bop.BopResultsWriter(q) as w:
        w.write(rows[0])
        assert not q.exists() and w.partial.exists()
        assert w.partial.read_text().count("\n") == 2  # flushed as it goes
    assert q.exists() and not w.partial.exists()
    with pytest.raises(RuntimeError):
        with bop.BopResultsWriter(q) as w:
            w.write(rows[1])
            raise RuntimeError("interrupted")
    assert len(bop.load_bop_results(q)) == 1  # the earlier complete file is untouched

    (tmp_path / "bad.csv").write_text("scene_id,im_id,obj_id,score,R,t,time\n1,2,3,0.5,1 2 3,4 5 6\n")
    with pytest.raises(BopFormatError, match=r"bad.csv:2: expected 7"):
        bop.load_bop_results(tmp_path / "bad.csv")
    assert bop.format_result_row(rows[1]) == lines[2]
    for field, value in (("t", "nan 0 0"), ("score", "inf"), ("time", "nan")):
        good = ["1", "2", "3", "0.5", "1 0 0 0 1 0 0 0 1", "4 5 6", "0.1"]
        good[{"score": 3, "t": 5, "time": 6}[field]] = value
        (tmp_path / "nan.csv").write_text("scene_id,im_id,obj_id,score,R,t,time\n" + ",".join(good) + "\n")
        with pytest.raises(BopFormatError, match=rf"nan\.csv: result row 1 \(scene 1, image 2, object 3\): "
                                                 rf"{field} is NaN or inf \(nan\.csv:2\)"):
            bop.load_bop_results(tmp_path / "nan.csv")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_missing_file_key_and_malformed_json_name_the_file(tmp_path):
    with pytest.raises(BopFormatError, match=r"nope/scene_gt.json: file not found"):
        bop.load_scene_gt(tmp_path / "nope" / "scene_gt.json")
    p = tmp_path / "scene_gt.json"
    p.write_text('{"0": [{"cam_R_m2c": [1,0,0,0,1,0,0,0,1], "obj_id": 1}]}')
    with pytest.raises(BopFormatError) as e:
        bop.load_scene_gt(p)
    msg = str(e.value)
    assert str(p) in msg and "'cam_t_m2c'" in msg and "image 0" in msg and "\n" not in msg
    p.write_text('{"0": [{"cam_R_m2c": [1,0,0], "cam_t_m2c": [0,0,1], "obj_id": 1}]}')
    with pytest.raises(BopFormatError, match="'cam_R_m2c'.*9 numbers"):
        bop.load_scene_gt(p)
    p.write_text('{"0": [{"cam_R_m2c": [1,0,0,')
    with pytest.raises(BopFormatError, match=r"scene_gt.json: malformed JSON at line 1"):
        bop.load_scene_gt(p)
    c = tmp_path / "scene_camera.json"
    c.write_text('{"0": {"depth_scale": 1.0}}')
    with pytest.raises(BopFormatError, match=r"scene_camera.json: missing key 'cam_K' in image 0"):
        bop.load_scene_camera(c)
    m = tmp_path / "models_info.json"
    m.write_text('{"1": {"min_x": 0}}')
    with pytest.raises(BopFormatError, match=r"models_info.json: missing key 'diameter' in object 1"):
        bop.load_models_info(m)
    d = tmp_path / "dets.json"
    d.write_text('[{"scene_id": 1, "image_id": 2, "score": 0.5, "bbox": [0, 0, 1, 1]}]')
    with pytest.raises(BopFormatError, match=r"dets.json: missing key 'category_id' in detection 0"):
        bop.load_detections(d)
    with pytest.raises(BopFormatError, match="file not found"):
        bop.load_image(tmp_path / "none.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(BopFormatError, match="junk.png: cannot decode"):
        bop.load_image(tmp_path / "junk.png")


def _write_scene(root, scene_id, obj_ids, n_images=2, drop_key=None):
    sd = root / "test" / f"{scene_id:06d}"
    K = np.array([[100.0, 0, 16], [0, 100.0, 12], [0, 0, 1]])
    cams, gts, infos = {}, {}, {}
    for im in range(n_images):
        bop.save_image(sd / "rgb" / f"{im:06d}.png", np.full((24, 32, 3), im, np.uint8))
        bop.save_depth(sd / "depth" / f"{im:06d}.png", np.full((24, 32), 500.0), 0.1)
        cams[im] = {"cam_K": K, "depth_scale": 0.1}
        gts[im] = [{"cam_R_m2c": np.eye(3), "cam_t_m2c": np.array([0, 0, 500.0]), "obj_id": o} for o in obj_ids]
        infos[im] = [{"bbox_obj": [0, 0, 5, 5], "bbox_visib": [0, 0, 5, 5], "px_count_all": 36,
                      "px_count_valid": 36, "px_count_visib": 36 - 30 * i, "visib_fract": (36 - 30 * i) / 36}
                     for i, _ in enumerate(obj_ids)]
        for i, _ in enumerate(obj_ids):
            bop.save_mask(sd / "mask_visib" / f"{im:06d}_{i:06d}.png", np.eye(24, 32, dtype=bool))
    bop.save_scene_camera(sd / "scene_camera.json", cams)
    bop.save_scene_gt(sd / "scene_gt.json", gts)
    bop.save_scene_gt_info(sd / "scene_gt_info.json", infos)
    if drop_key:
        raw = json.loads((sd / "scene_gt.json").read_text())
        del raw["1"][0][drop_key]
        (sd / "scene_gt.json").write_text(json.dumps(raw))
    return sd


def _write_models(root, ids):
    bop.save_models_info(root / "models" / "models_info.json",
                         {i: bop.ModelInfo(diameter=10.0 * i) for i in ids})


def test_dataset_reads_a_split_and_skips_bad_scenes_once(tmp_path, caplog):
    _write_models(tmp_path, [1, 2])
    _write_scene(tmp_path, 1, [1, 2])
    _write_scene(tmp_path, 2, [2, 9])          # unknown object id 9
    _write_scene(tmp_path, 3, [1], drop_key="cam_t_m2c")  # missing key
    _write_scene(tmp_path, 4, [2], n_images=1)
    with caplog.at_level(logging.WARNING, logger="mrcnet.data.bop"):
        ds = bop.BopDataset(tmp_path, "test")
    assert ds.scene_ids == [1, 4] and len(ds) == 3 and ds.obj_ids == [1, 2]
    assert sorted(ds.skipped) == [2, 3]
    assert "unknown object id(s) [9]" in ds.skipped[2] and "scene_gt.json" in ds.skipped[2]
    assert "'cam_t_m2c'" in ds.skipped[3]
    warns = [r.getMessage() for r in caplog.records]
    assert sum("scene 000002" in w for w in warns) == 1 and sum("scene 000003" in w for w in warns) == 1

    rec = ds.image(1, 1)
    assert rec.load_image().shape == (24, 32, 3) and rec.load_image()[0, 0, 0] == 1
    np.testing.assert_allclose(rec.load_depth(), 500.0)
    assert rec.load_mask(1).sum() == 24 and rec.instances[1].obj_id == 2
    assert rec.instances[1].visib_fract == pytest.approx(6 / 36)
    assert ds.model_path(2).name == "obj_000002.ply"
    assert [len(r.instances) for r in ds] == [2, 2, 1]
    # targets derived from the GT (visib >= 0.1) when there is no targets file
    assert ds.targets() == [{"scene_id": 1, "im_id": i, "obj_id": o, "inst_count": 1}
                            for i in (0, 1) for o in (1, 2)] + [
                               {"scene_id": 4, "im_id": 0, "obj_id": 2, "inst_count": 1}]
    bop.save_test_targets(tmp_path / "test_targets_bop19.json",
                          [{"scene_id": 1, "im_id": 0, "obj_id": 2, "inst_count": 1},
                           {"scene_id": 2, "im_id": 0, "obj_id": 2, "inst_count": 1}])
    assert ds.targets() == [{"scene_id": 1, "im_id": 0, "obj_id": 2, "inst_count": 1}]
    assert ds.targets("test_targets_bop19.json") == ds.targets()  # relative to the dataset folder
    with pytest.raises(BopFormatError, match="nope.json: targets file not found"):
        ds.targets(tmp_path / "nope.json")  # an explicit file must exist
    pairs = list(ds.target_images())
    assert len(pairs) == 1 and pairs[0][0].im_id == 0 and pairs[0][1][0]["obj_id"] == 2

    with pytest.raises(BopFormatError, match="unknown object id"):
        bop.BopDataset(tmp_path, "test", strict=True)
    with pytest.raises(BopFormatError, match="split folder not found"):
        bop.BopDataset(tmp_path, "test", split_type="primesense")
    (tmp_path / "models" / "models_info.json").unlink()
    with pytest.raises(BopFormatError, match="models_info.json: file not found"):
        bop.BopDataset(tmp_path, "test")


def test_dataset_drops_images_without_files(tmp_path, caplog):
    _write_models(tmp_path, [1])
    sd = _write_scene(tmp_path, 0, [1], n_images=3)
    (sd / "rgb" / "000001.png").unlink()
    with caplog.at_level(logging.WARNING, logger="mrcnet.data.bop"):
        ds = bop.BopDataset(tmp_path, "test")
    assert ds.image_ids(0) == [0, 2]
    assert any("have no rgb/gray file (first: 000001)" in r.getMessage() for r in caplog.records)


def test_bop_module_imports_without_torch():
    code = ("import sys, mrcnet.data.bop, mrcnet.data.objects, mrcnet.data.scenes, mrcnet.data.video; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)

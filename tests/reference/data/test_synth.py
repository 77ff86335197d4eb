"""Procedural objects, synthetic BOP scenes and demo clips (rendered on llvmpipe, tiny images).

Checks: declared symmetries hold when rendered (R vs R*S), models_info agrees with the meshes,
scene_gt_info and masks agree with each other and with the GT poses, detections and targets agree
with the masks, the same seed gives the same bytes, an interrupted run resumes to the same bytes.
"""
import json
import shutil

import numpy as np
import pytest

from mrcnet.data import bop, objects, scenes
from mrcnet.data.scenes import SceneConfig, generate_scenes
from mrcnet.runtime.render import load_mesh

W, H = 160, 120
CFG = dict(width=W, height=H, objects_per_image=(2, 3), distractors_per_image=(1, 1),
           images_per_scene=2, depth_range=(250.0, 450.0))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """All part families (one object each), written once for the module."""
    root = tmp_path_factory.mktemp("objects")
    parts = objects.write_objects(root, len(objects.FAMILIES), seed=3, progress=False)
    return root, parts


@pytest.fixture(scope="module")
def split(tmp_path_factory, models, renderer):
    """A 4-image split (2 scenes) of the first three objects, made once."""
    root, _ = models
    out = tmp_path_factory.mktemp("split")
    cfg = SceneConfig(obj_ids=[1, 2, 3], box_jitter=0.0, **CFG)
    summary = generate_scenes(root / "models", out, 4, cfg, seed=7, renderer=renderer, progress=False)
    return out, summary


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------

def test_objects_are_deterministic_and_described(models, tmp_path):
    root, parts = models
    infos = bop.load_models_info(root / "models" / "models_info.json")
    assert sorted(infos) == list(range(1, len(objects.FAMILIES) + 1))
    for p in parts:
        mesh = load_mesh(root / "models" / f"obj_{p.obj_id:06d}.ply")
        v = mesh.vertices.astype(np.float64)
        info = infos[p.obj_id]
        assert 25 <= info.diameter <= 260
        assert info.diameter == pytest.approx(objects.points_diameter(v), rel=1e-5)
        np.testing.assert_allclose([info.min_x, info.min_y, info.min_z], v.min(0), atol=1e-3)
        np.testing.assert_allclose([info.size_x, info.size_y, info.size_z], np.ptp(v, axis=0), atol=1e-3)
        np.testing.assert_allclose(v.min(0) + np.ptp(v, axis=0) / 2, 0, atol=1e-3)  # centred
    by_family = {p.family: infos[p.obj_id] for p in parts}
    assert not by_family["bracket"].is_symmetric
    assert len(by_family["hex_nut"].symmetries_discrete) == 11
    assert len(by_family["plate_holes"].symmetries_discrete) == 3
    assert by_family["bushing"].symmetries_continuous and by_family["bushing"].symmetries_discrete
    assert by_family["cap"].symmetries_continuous and not by_family["cap"].symmetries_discrete
    assert (root / "models_eval" / "obj_000001.ply").read_bytes() == (root / "models" / "obj_000001.ply").read_bytes()

    objects.write_objects(tmp_path / "a", 3, seed=3, progress=False, eval_copy=False)
    objects.write_objects(tmp_path / "b", 3, seed=4, progress=False, eval_copy=False)
    for name in ("obj_000001.ply", "obj_000003.ply"):
        assert (tmp_path / "a" / "models" / name).read_bytes() == (root / "models" / name).read_bytes()
    again = bop.load_models_info(tmp_path / "a" / "models" / "models_info.json")
    assert {k: v.to_dict() for k, v in again.items()} == {k: infos[k].to_dict() for k in (1, 2, 3)}
    assert (tmp_path / "b" / "models" / "obj_000001.ply").read_bytes() != \
        (root / "models" / "obj_000001.ply").read_bytes()


def test_declared_symmetries_hold_when_rendered(models, renderer):
    """Rendering at R and at R*S gives the same mask for every declared symmetry S (and for
    samples of the BOP-discretised set); a rotation that is not a symmetry does not."""
    root, parts = models
    infos = bop.load_models_info(root / "models" / "models_info.json")
    rng = np.random.default_rng(0)
    for p in parts:
        oid = 100 + p.obj_id
        renderer.add_object(oid, root / "models" / f"obj_{p.obj_id:06d}.ply")
        info = infos[p.obj_id]
        ious = objects.check_symmetries(renderer, oid, info, n_poses=2, size=96, seed=p.obj_id)
        assert len(ious) == 2 * len(objects.symmetry_samples(info, rng=np.random.default_rng(p.obj_id)))
        if ious:
            assert min(ious) >= objects.SYMMETRY_IOU_MIN, (p.family, min(ious))
        # the discretised set the losses use (bop.symmetry_transforms) holds as well
        sym = bop.symmetry_transforms(info)
        picks = [sym[int(i)] for i in rng.integers(len(sym), size=min(3, len(sym)))]
        Ts = [np.block([[s["R"], s["t"]], [np.zeros((1, 3)), np.ones((1, 1))]]) for s in picks]
        assert min(objects.check_symmetries(renderer, oid, info, n_poses=1, size=96, transforms=Ts)) \
            >= objects.SYMMETRY_IOU_MIN
        # negative control: a 90 deg turn about x is no symmetry of any family
        T = np.eye(4)
        T[:3, :3] = bop.rotation_about_axis(np.pi / 2, [1, 0, 0])
        assert min(objects.check_symmetries(renderer, oid, info, n_poses=2, size=96, transforms=[T])) < 0.97
        renderer.remove_object(oid)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------

def test_split_is_a_readable_bop_split(split):
    out, summary = split
    assert summary["generated"] == 4 and summary["resumed"] == 0
    ds = bop.BopDataset(out, "test")
    assert ds.scene_ids == [0, 1] and len(ds) == 4 and not ds.skipped
    assert (out / "models" / "models_info.json").is_file()
    cam = bop.load_scene_camera(out / "test" / "000000" / "scene_camera.json")
    assert cam[0]["depth_scale"] == 0.1 and cam[0]["cam_K"][0, 0] == pytest.approx(scenes.FOCAL_PER_WIDTH * W)
    for rec in ds:
        assert rec.load_image().shape == (H, W, 3) and rec.load_depth().shape == (H, W)
        assert 2 <= len(rec.instances) <= 3
        assert all(i.obj_id in (1, 2, 3) for i in rec.instances)


def test_gt_info_boxes_and_masks_agree(split, renderer, models):
    out, _ = split
    root, _ = models
    ds = bop.BopDataset(out, "test")
    for oid in (1, 2, 3):
        renderer.add_object(oid, root / "models" / f"obj_{oid:06d}.ply")
    n_occluded = 0
    for rec in ds:
        depth = rec.load_depth()
        for inst in rec.instances:
            full, visib, info = rec.load_mask(inst.gt_id, visib=False), rec.load_mask(inst.gt_id), inst.info
            assert not (visib & ~full).any()
            assert info["px_count_visib"] == visib.sum()
            assert info["px_count_all"] >= full.sum()
            assert info["px_count_valid"] == (depth[full] > 0).sum()
            assert info["visib_fract"] == pytest.approx(visib.sum() / info["px_count_all"])
            assert info["bbox_visib"] == bop.bbox_from_mask(visib)
            if visib.any():
                touches = full[0].any() or full[-1].any() or full[:, 0].any() or full[:, -1].any()
                if touches:  # the whole silhouette's box holds the in-image part
                    bx, by, bw, bh = info["bbox_obj"]
                    fx, fy, fw, fh = bop.bbox_from_mask(full)
                    assert bx <= fx and by <= fy and bx + bw >= fx + fw and by + bh >= fy + fh
                else:
                    assert info["bbox_obj"] == bop.bbox_from_mask(full)
                    assert info["px_count_all"] == full.sum()
            n_occluded += info["visib_fract"] < 0.999
            # the GT pose reproduces the mask, and the depth where the object is visible
            r = renderer.render([inst.obj_id], inst.R[None], inst.t[None], rec.K, width=W, height=H)
            iou = objects.mask_iou(r.mask[0], full)
            assert iou >= 0.99 or abs(int(r.mask[0].sum()) - int(full.sum())) <= 2, iou
            both = visib & r.mask[0]
            np.testing.assert_allclose(depth[both], r.depth[0][both], atol=0.06)
    assert n_occluded >= 1  # mutual occlusion happens


def test_detections_and_targets_agree_with_masks(split):
    out, _ = split
    ds = bop.BopDataset(out, "test")
    dets = bop.load_detections(out / "detections_gt_test.json")
    targets = bop.load_test_targets(out / "test_targets_bop19.json")
    want = [(rec.scene_id, rec.im_id, inst.gt_id) for rec, inst in ds.instances(0.1)]
    assert len(dets) == len(want) and sum(t["inst_count"] for t in targets) == len(want)
    assert ds.targets() == targets
    masks = {(rec.scene_id, rec.im_id, inst.gt_id): (inst.obj_id, rec.load_mask(inst.gt_id))
             for rec, inst in ds.instances(0.1)}
    for d in dets:
        m = bop.decode_rle(d["segmentation"])
        matches = [k for k, (o, mv) in masks.items() if k[:2] == (d["scene_id"], d["image_id"])
                   and o == d["category_id"] and np.array_equal(mv, m)]
        assert len(matches) == 1
        ys, xs = np.nonzero(m)
        assert d["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert d["score"] == 1.0 and d["time"] == -1.0


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and "settings.json" not in p.name}


def test_same_seed_same_bytes_and_resume_after_interruption(split, models, renderer, tmp_path, monkeypatch):
    out, _ = split
    root, _ = models
    ref = _tree(out)
    cfg = SceneConfig(obj_ids=[1, 2, 3], **CFG)

    # interrupted by an exception in the third image: finished images and their JSONs are kept
    calls = {"n": 0}
    real = scenes.SceneWriter.write_image

    def flaky(self, index):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(scenes.SceneWriter, "write_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_scenes(root / "models", tmp_path, 4, cfg, seed=7, renderer=renderer, progress=False)
    monkeypatch.setattr(scenes.SceneWriter, "write_image", real)
    assert len(bop.load_scene_gt(tmp_path / "test" / "000000" / "scene_gt.json")) == 2
    # a crash while writing image 2 left a stray file and no record: it is redone
    (tmp_path / "test" / "000001" / "rgb").mkdir(parents=True, exist_ok=True)
    (tmp_path / "test" / "000001" / "rgb" / "000000.png").write_bytes(b"partial")

    s = generate_scenes(root / "models", tmp_path, 4, cfg, seed=7, renderer=renderer, progress=False)
    assert (s["resumed"], s["generated"]) == (2, 2)
    assert _tree(tmp_path) == ref  # same bytes as the uninterrupted run, same seed

    s = generate_scenes(root / "models", tmp_path, 4, cfg, seed=7, renderer=renderer, progress=False)
    assert (s["resumed"], s["generated"]) == (4, 0)
    with pytest.raises(ValueError, match="other settings"):
        generate_scenes(root / "models", tmp_path, 4, cfg, seed=8, renderer=renderer, progress=False)

    other = tmp_path / "other"
    generate_scenes(root / "models", other, 2, cfg, seed=8, renderer=renderer, progress=False)
    assert (other / "test" / "000000" / "rgb" / "000000.png").read_bytes() != ref["test/000000/rgb/000000.png"]


def test_jittered_detections_and_folder_backgrounds(models, renderer, tmp_path):
    root, _ = models
    bg = tmp_path / "bg"
    bop.save_image(bg / "a.jpg", np.full((50, 80, 3), (10, 200, 30), np.uint8))
    cfg = SceneConfig(obj_ids=[4], box_jitter=0.1, backgrounds=str(bg), noise_std=(0.0, 0.0),
                      **dict(CFG, distractors_per_image=(0, 0), objects_per_image=(1, 1)))
    generate_scenes(root, tmp_path / "o", 2, cfg, seed=1, renderer=renderer, progress=False)
    ds = bop.BopDataset(tmp_path / "o", "test")
    rec = next(iter(ds))
    img = rec.load_image()
    assert (np.abs(img[0, 0].astype(int) - (10, 200, 30)) <= 2).all() or rec.load_mask(0, False)[0, 0]
    dets = bop.load_detections(tmp_path / "o" / "detections_gt_test.json")
    for d in dets:
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H


# --------------------------------------------------------------------------------------------
# Video and CLI
# --------------------------------------------------------------------------------------------

def test_video_clip(models, renderer, tmp_path):
    import cv2

    from mrcnet.data.video import generate_video

    root, _ = models
    s = generate_video(root, tmp_path, n_frames=6, width=W, height=H, n_objects=2, seed=0,
                       renderer=renderer, progress=False)
    cap = cv2.VideoCapture(str(tmp_path / "video.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 6 and s["frames"] == 6
    cam = json.loads((tmp_path / "camera.json").read_text())
    assert {"fx", "fy", "cx", "cy", "width", "height", "cam_K"} <= set(cam) and cam["width"] == W
    gt = bop.load_scene_gt(tmp_path / "scene_gt.json")
    assert sorted(gt) == list(range(6)) and all(len(g) == 2 for g in gt.values())
    cams = bop.load_scene_camera(tmp_path / "scene_camera.json")
    eyes = np.stack([-c["cam_R_w2c"].T @ c["cam_t_w2c"] for c in cams.values()])
    step = np.linalg.norm(np.diff(eyes, axis=0), axis=1)
    assert step.max() < 0.3 * np.linalg.norm(eyes[0])  # a smooth path
    dets = bop.load_detections(tmp_path / "detections.json")
    assert dets and {d["image_id"] for d in dets} <= set(range(6)) and all(d["scene_id"] == 0 for d in dets)


def test_cli_objects_scenes_video(tmp_path):
    from click.testing import CliRunner

    from mrcnet.data.cli import main

    run = CliRunner()
    r = run.invoke(main, ["objects", "--count", "2", "--out", str(tmp_path), "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "wrote 2 objects" in r.output and "worst mask IoU" in r.output
    args = ["scenes", "--models", str(tmp_path / "models"), "--out", str(tmp_path), "--count", "2",
            "--width", "96", "--height", "64", "--objects-per-image", "1", "2", "--seed", "1"]
    r = run.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "2 images (2 rendered, 0 resumed)" in r.output and "images/s" in r.output
    r = run.invoke(main, args[:-2] + ["--seed", "2"])
    assert r.exit_code != 0 and "other settings (seed)" in r.output
    r = run.invoke(main, ["video", "--models", str(tmp_path), "--out", str(tmp_path / "clip"), "-n", "2",
                          "--width", "96", "--height", "64"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "clip" / "video.mp4").is_file() and "frames/s" in r.output
    r = run.invoke(main, ["scenes", "--models", str(tmp_path / "clip"), "--out", str(tmp_path / "x"),
                          "--images", "1"])
    assert r.exit_code != 0 and "no models_info.json" in r.output
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_table_layout_rests_objects_on_a_table(models, renderer, tmp_path):
    """layout="table": every object lies on a face of its box on one plane (the table), seen from
    above; the GT poses still reproduce the masks; the table itself is no instance."""
    root, _ = models
    cfg = SceneConfig(obj_ids=[1, 2, 3], distractors_per_image=(0, 0), layout="table",
                      **{k: v for k, v in CFG.items() if k != "distractors_per_image"})
    generate_scenes(root / "models", tmp_path, 3, cfg, seed=5, renderer=renderer, progress=False)
    ds = bop.BopDataset(tmp_path, "test")
    for oid in (1, 2, 3):
        renderer.add_object(oid, root / "models" / f"obj_{oid:06d}.ply")
    for rec in ds:
        assert 2 <= len(rec.instances)
        normals = []
        for inst in rec.instances:
            assert inst.obj_id in (1, 2, 3)
            # the table normal in model coordinates is a coordinate axis (a box face down)
            R = inst.R
            normals.append(R)
            full = rec.load_mask(inst.gt_id, visib=False)
            r = renderer.render([inst.obj_id], inst.R[None], inst.t[None], rec.K, width=W, height=H)
            if full.sum() > 50:
                assert objects.mask_iou(r.mask[0], full) >= 0.98
        # all objects share the table plane: some model axis of each maps to the same camera
        # direction (the table's up), up to sign
        ups = []
        for R in normals:
            ups.append([R[:, k] for k in range(3)])
        ref = ups[0]
        for other in ups[1:]:
            assert max(abs(float(a @ b)) for a in ref for b in other) > 0.999
        # seen from above: the table's up points towards the camera (negative camera z)
        assert any(abs(a[2]) > 0.3 for a in ref)
    with pytest.raises(ValueError, match="layout"):
        SceneConfig(layout="shelf").validate()


def _axis_view_turn_ious(renderer, oid, info):
    """Mask IoU of the part seen along each of its 6 axis directions, against the same view after a
    half-turn about each model axis: (18,) floats."""
    views = [bop.rotation_about_axis(a, ax) for ax in np.eye(3)[:2] for a in (np.pi / 2, -np.pi / 2)]
    views += [np.eye(3), bop.rotation_about_axis(np.pi, [1, 0, 0])]  # along -z, +z
    turns = [np.eye(4) for _ in range(3)]
    for T, ax in zip(turns, np.eye(3)):
        T[:3, :3] = bop.rotation_about_axis(np.pi, ax)
    return np.array(objects.check_symmetries(renderer, oid, info, size=96, transforms=turns, rotations=views))


def test_bracket_turns_never_show_the_same_outline(models, renderer):
    """The bracket has no symmetry and no near-symmetric outline: seen along any axis of its block,
    a half-turn about any block axis changes the silhouette. (A bracket whose notch and hole went
    through its block looked the same after a roll about its pin axis (IoU 1.0), and a network
    could not learn which way round it lay.) Negative control: the plate with holes (D2) does
    look the same after its half-turns."""
    root, parts = models
    infos = bop.load_models_info(root / "models" / "models_info.json")
    by_family = {p.family: p.obj_id for p in parts}
    bracket, plate = by_family["bracket"], by_family["plate_holes"]
    for oid in (bracket, plate):
        renderer.add_object(200 + oid, root / "models" / f"obj_{oid:06d}.ply")
    try:
        ious = _axis_view_turn_ious(renderer, 200 + bracket, infos[bracket])
        assert ious.max() < 0.9, ious.round(3)
        plate_ious = _axis_view_turn_ious(renderer, 200 + plate, infos[plate])
        assert plate_ious.max() > 0.97, plate_ious.round(3)
    finally:
        for oid in (bracket, plate):
            renderer.remove_object(200 + oid)


def test_yolo_dataset_labels_are_the_visible_boxes(split, tmp_path):
    """``mrcnet-synth yolo``: one label per instance visible enough, its box the pixels of the
    instance's visible mask (= scene_gt_info's bbox_visib), class = index of the object id; the
    images copied, one in four in val, data.yaml readable as mrcnet-run's --class-map."""
    import cv2
    import yaml
    from click.testing import CliRunner

    from mrcnet.data.cli import main
    from mrcnet.runtime.detectors import parse_class_map

    root, _ = split
    out = tmp_path / "yolo"
    args = ["yolo", "--scenes", str(root / "test"), "--out", str(out), "--val-fraction", "0.25", "--object-ids", "1,2,3",
            "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "obj_000001", 1: "obj_000002", 2: "obj_000003"} and data["nc"] == 3
    assert data["train"] == "images/train" and data["val"] == "images/val" and data["path"] == str(out.resolve())
    assert parse_class_map(str(out / "data.yaml")) == {0: 1, 1: 2, 2: 3}
    ds = bop.BopDataset(root, "test")
    n_labels = n_low = 0
    subsets = []
    for rec in ds:
        stem = f"{rec.scene_id:06d}_{rec.im_id:06d}"
        subset = [s for s in ("train", "val") if (out / "labels" / s / f"{stem}.txt").is_file()]
        assert len(subset) == 1, stem
        subsets.append(subset[0])
        assert (out / "images" / subset[0] / f"{stem}.png").read_bytes() == rec.image_path.read_bytes()
        rows = [line.split() for line in (out / "labels" / subset[0] / f"{stem}.txt").read_text().splitlines()]
        expected = []
        for inst in rec.instances:
            mask = rec.load_mask(inst.gt_id)
            if inst.info["visib_fract"] < 0.1 or not mask.any():
                n_low += 1
                continue
            ys, xs = np.nonzero(mask)
            expected.append((inst.obj_id - 1, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            x, y, w, h = inst.info["bbox_visib"]  # the scene's box: the same pixels
            assert [x, y, x + w + 1, y + h + 1] == list(expected[-1][1:])
        assert len(rows) == len(expected)
        for row, (c, x1, y1, x2, y2) in zip(rows, expected):
            cx, cy, w, h = (float(v) for v in row[1:])
            assert int(row[0]) == c
            np.testing.assert_allclose([(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H],
                                       [x1, y1, x2, y2], atol=1e-3)
        assert cv2.imread(str(out / "images" / subset[0] / f"{stem}.png")).shape[:2] == (H, W)
        n_labels += len(rows)
    assert subsets.count("val") == 1 and len(subsets) == 4 and n_labels > 0
    assert f"{n_labels} labels of 3 classes" in r.output and f"{n_low} instances not labelled" in r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "holds a dataset (data.yaml); use --overwrite" in r.output
    r = CliRunner().invoke(main, args[:-2] + ["2", "--overwrite", "-q"])
    assert r.exit_code == 0, r.output
    labels = [line for p in (out / "labels").rglob("*.txt") for line in p.read_text().splitlines()]
    assert labels and {line.split()[0] for line in labels} == {"0"}  # object 2 is class 0 of the one class
    # a dataset folder with one split works as well; unknown objects and missing folders: one line
    r = CliRunner().invoke(main, ["yolo", "--scenes", str(root), "--out", str(tmp_path / "y2"), "--object-ids", "1,2,3",
                                  "-q"])
    assert r.exit_code == 0, r.output
    y2 = list((tmp_path / "y2" / "labels" / "train").glob("*.txt"))
    assert len(y2) == 4 and not (tmp_path / "y2" / "labels" / "val").exists()  # 0.1 of 4 images: no val
    assert sum(len(p.read_text().splitlines()) for p in y2) == n_labels
    assert yaml.safe_load((tmp_path / "y2" / "data.yaml").read_text())["val"] == "images/train"
    r = CliRunner().invoke(main, ["yolo", "--scenes", str(root), "--out", str(tmp_path / "y3"), "--object-ids", "99"])
    assert r.exit_code != 0 and "--object-ids: [99] not in" in r.output
    r = CliRunner().invoke(main, ["yolo", "--scenes", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code != 0 and "nope" in r.output


def test_room_lighting_shines_from_above_the_table(models, renderer, tmp_path):
    """lighting="room": the sun comes from above the table (world z up) whatever the camera, plus a
    head light; the same seed gives the same objects and poses as camera lighting, other pixels;
    --object-ids places only those objects; a split made before lightings existed still resumes."""
    from mrcnet.data.layout import look_at
    rng = np.random.default_rng(0)
    for _ in range(20):
        el, az = rng.uniform(0.2, 1.4), rng.uniform(0, 2 * np.pi)
        R_w2c, _ = look_at(500 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]), np.zeros(3))
        lights, ambient = scenes.sample_room_lights(rng, R_w2c)
        sun_w = R_w2c.T @ np.asarray(lights[0].vector) / np.linalg.norm(lights[0].vector)
        assert sun_w[2] >= np.sin(np.radians(scenes.ROOM_SUN_ELEVATION_DEG[0])) - 1e-9
        assert lights[1].vector == (0.0, 0.0, -1.0) and 0 < ambient[0] < 1
    root, _ = models
    base = dict(CFG, distractors_per_image=(0, 0), layout="table", obj_ids=[1])
    outs = {}
    for lighting in ("camera", "room"):
        out = tmp_path / lighting
        generate_scenes(root / "models", out, 2, SceneConfig(lighting=lighting, **base), seed=3,
                        renderer=renderer, progress=False)
        outs[lighting] = list(bop.BopDataset(out, "test"))
    for a, b in zip(outs["camera"], outs["room"]):
        assert [i.obj_id for i in a.instances] == [i.obj_id for i in b.instances]
        assert all(i.obj_id == 1 for i in a.instances)
        for ia, ib in zip(a.instances, b.instances):
            np.testing.assert_allclose(ia.R, ib.R)
        assert np.abs(a.load_image().astype(int) - b.load_image().astype(int)).mean() > 2
    settings = tmp_path / "camera" / "test" / scenes.PROGRESS_DIR / "settings.json"
    d = json.loads(settings.read_text())
    del d["config"]["lighting"]
    settings.write_text(json.dumps(d))
    s = generate_scenes(root / "models", tmp_path / "camera", 2, SceneConfig(lighting="camera", **base), seed=3,
                        renderer=renderer, progress=False)
    assert (s["resumed"], s["generated"]) == (2, 0)
    for bad, match in ((dict(lighting="sun"), "lighting must be one of"),
                       (dict(lighting="room", layout="random"), "needs layout 'table'")):
        with pytest.raises(ValueError, match=match):
            SceneConfig(**bad).validate()

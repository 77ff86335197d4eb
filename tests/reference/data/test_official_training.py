"""The official training-data rules: centred box map, background rule, zoom-in cap, cleaned mask,
continuous-symmetry sampling, the label cache keyed by the rotation, jittered validation boxes."""
import json

import numpy as np
import pytest
import torch

from mrcnet.data import bop
from mrcnet.data.samples import centred_box, clean_mask, dynamic_zoom_in, jittered_box
from mrcnet.model import get_config
from mrcnet.train import targets as T
from mrcnet.train.dataset import TrainingSamples

from train_fixtures import write_tiny_split

BINS = get_config("small").bins
DEPTH = (0.05, 1.7)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """One object, three instances per image: the official rule lets these get a new background."""
    return write_tiny_split(tmp_path_factory.mktemp("crowded"), n_images=3, n_objects=1, per_image=3, seed=3,
                            families=("block",))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """One object, two instances per image: the official rule keeps their backgrounds on PBR data."""
    return write_tiny_split(tmp_path_factory.mktemp("pairs"), n_images=2, n_objects=1, per_image=2, seed=4,
                            families=("block",))


def _map_centre(m):
    ys, xs = np.nonzero(m)
    return (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2


def test_box_map_is_centred_by_default_and_exact_on_request(crowded):
    size = get_config("small").crop_size
    centred = TrainingSamples(crowded, BINS, DEPTH, seed=1, color_prob=0.0, bg_prob=0.0, size=size)
    exact = TrainingSamples(crowded, BINS, DEPTH, seed=1, color_prob=0.0, bg_prob=0.0, size=size,
                            box_map_mode="exact")
    offsets = []
    for i in range(len(centred)):
        a, b = centred[i], exact[i]
        torch.testing.assert_close(a["crops"][:3], b["crops"][:3])  # same crop, only the map differs
        cx, cy = _map_centre(a["crops"][3].numpy())
        assert abs(cx - size / 2) <= 1 and abs(cy - size / 2) <= 1, (i, cx, cy)
        ex, ey = _map_centre(b["crops"][3].numpy())
        offsets.append(max(abs(ex - size / 2), abs(ey - size / 2)))
    assert max(offsets) > 3  # the zoom-in shift moves the exact box off the centre


def test_centred_box_keeps_the_size():
    np.testing.assert_allclose(centred_box([10, 20, 50, 40], (100.0, 200.0)), [80, 190, 120, 210])


def test_zoom_in_side_is_capped_at_the_image():
    rng = np.random.default_rng(0)
    sides = [dynamic_zoom_in([0, 0, 600, 400], rng, max_side=640)[1] for _ in range(50)]
    assert sides == [640.0] * 50  # 1.5 * 600 * U(0.75, 1.25) >= 675 > 640
    small = [dynamic_zoom_in([0, 0, 100, 80], rng, max_side=640)[1] for _ in range(50)]
    assert all(112.5 <= s <= 187.5 for s in small) and len(set(small)) == 50
    _, free = dynamic_zoom_in([0, 0, 600, 400], np.random.default_rng(0))
    assert free > 640


def test_clean_mask_closes_holes_and_opens_specks():
    m = np.zeros((20, 20), np.uint8)
    m[4:14, 4:14] = 1
    m[8, 8] = 0  # a hole
    m[17, 17] = 1  # a speck
    c = clean_mask(m)
    assert c[8, 8] == 1 and c[17, 17] == 0 and c[5:13, 5:13].all()


def test_background_rule(crowded, pairs):
    for root in (crowded, pairs):
        ds = TrainingSamples(root, BINS, DEPTH)
        assert ds.is_pbr and ds.bg_prob == 0.8
        for (scene_id, im_id), gt_id in ds.items:
            rec = ds.ds.image(scene_id, im_id)
            oid = rec.instances[gt_id].obj_id
            n = sum(1 for (s, i), _ in ds.items if (s, i) == (scene_id, im_id)
                    and ds.ds.image(s, i).instances[_].obj_id == oid)
            assert ds.background_applies(scene_id, im_id, oid) == (n >= 3)
        every = TrainingSamples(root, BINS, DEPTH, bg_rule="every")
        assert all(every.background_applies(s, i, 1) for (s, i), _ in every.items)
    assert any(TrainingSamples(crowded, BINS, DEPTH).background_applies(s, i, 1) for (s, i), _ in
               TrainingSamples(crowded, BINS, DEPTH).items)
    assert not any(TrainingSamples(pairs, BINS, DEPTH).background_applies(s, i, 1) for (s, i), _ in
                   TrainingSamples(pairs, BINS, DEPTH).items)
    with pytest.raises(ValueError, match="bg_rule"):
        TrainingSamples(pairs, BINS, DEPTH, bg_rule="sometimes")
    with pytest.raises(ValueError, match="box_map_mode"):
        TrainingSamples(pairs, BINS, DEPTH, box_map_mode="loose")


def test_background_replaces_only_the_outside_of_the_object(crowded, tmp_path):
    """The new background comes from the --backgrounds folder and only changes pixels off the
    object's visible mask."""
    import cv2

    bgdir = tmp_path / "JPEGImages"
    bgdir.mkdir()
    cv2.imwrite(str(bgdir / "2008_000001.jpg"), np.full((300, 400, 3), (255, 0, 255), np.uint8))
    kw = dict(seed=2, color_prob=0.0, size=get_config("small").crop_size, bg_rule="every")
    same = TrainingSamples(crowded, BINS, DEPTH, bg_prob=0.0, **kw)
    new = TrainingSamples(crowded, BINS, DEPTH, bg_prob=1.0, backgrounds=bgdir, **kw)
    a, b = same[0], new[0]
    torch.testing.assert_close(a["mask"], b["mask"])
    changed = (a["crops"][:3] - b["crops"][:3]).abs().amax(0).numpy() > 0.02
    inside = cv2.resize(a["mask"].numpy(), changed.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    inside = cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert changed[~inside].mean() > 0.5 and changed[inside].mean() < 0.01


def test_backgrounds_folder_errors_name_the_folder(tmp_path):
    from mrcnet.data.backgrounds import FolderBackgrounds

    (tmp_path / "empty").mkdir()
    with pytest.raises(bop.BopFormatError, match="empty: no png/jpg"):
        FolderBackgrounds(tmp_path / "empty")
    with pytest.raises(bop.BopFormatError, match="missing: backgrounds folder not found"):
        FolderBackgrounds(tmp_path / "missing")


def test_official_continuous_symmetry_sampling():
    info = bop.ModelInfo(diameter=100.0, symmetries_continuous=[{"axis": np.array([0, 0, 1.0]),
                                                                 "offset": np.array([5.0, 0, 0])}],
                         symmetries_discrete=[np.diag([1.0, -1.0, -1.0, 1.0])])
    R_off, t_off = T.symmetry_tensors(info)
    R_bop, t_bop = T.symmetry_tensors(info, sampling="bop")
    steps = int(np.ceil(np.pi / 0.01))
    assert len(R_bop) == 2 * steps and len(R_off) == 2 * (steps - 1)
    # no identity among the official members (the first is one step away), BOP's starts with it
    ang = np.degrees(np.arccos(np.clip((np.trace(R_off, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert ang.min() == pytest.approx(360.0 / steps, abs=1e-3)
    np.testing.assert_allclose(R_bop[0], np.eye(3), atol=1e-7)
    # official translations leave the continuous offset term out: R_c t_d (t_d = 0 here)
    np.testing.assert_allclose(t_off, 0.0, atol=1e-6)
    assert np.abs(t_bop).max() > 1.0
    # objects without continuous symmetries: the same set either way
    disc = bop.ModelInfo(diameter=10.0, symmetries_discrete=[np.diag([-1.0, -1.0, 1.0, 1.0])])
    for a, b in zip(T.symmetry_tensors(disc), T.symmetry_tensors(disc, sampling="bop")):
        np.testing.assert_array_equal(a, b)


def test_label_cache_follows_the_poses(pairs, tmp_path):
    """A scene regenerated with the same meshes into the same folder must not read stale labels."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(pairs, root)
    cache = tmp_path / "cache"
    first = TrainingSamples(root, BINS, DEPTH, augment=False, label_cache_dir=cache)[0]["rot_labels"]
    gt_path = root / "train_pbr" / "000000" / "scene_gt.json"
    gt = json.loads(gt_path.read_text())
    R = np.asarray(gt["0"][0]["cam_R_m2c"], np.float64).reshape(3, 3)
    turn = np.array([[0, -1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # a new pose, same image and instance
    gt["0"][0]["cam_R_m2c"] = (R @ turn).reshape(-1).tolist()
    gt_path.write_text(json.dumps(gt))
    ds = TrainingSamples(root, BINS, DEPTH, augment=False, label_cache_dir=cache)
    assert ds.label_cache_dir == TrainingSamples(pairs, BINS, DEPTH, augment=False,
                                                 label_cache_dir=cache).label_cache_dir  # same meshes
    again = ds[0]["rot_labels"]
    od = ds.objects[1]
    fresh = T.rotation_labels(torch.from_numpy((R @ turn).astype(np.float32)), od.vertices, od.sym_R, od.sym_t,
                              od.diameter, BINS.n_side)
    torch.testing.assert_close(again, fresh.half().float())
    assert float((again - first).abs().max()) > 0.1
    assert len(list(ds.label_cache_dir.glob("*.npy"))) == 2


def test_jittered_box_is_seeded_bounded_and_clipped():
    box = (100.0, 50.0, 80.0, 40.0)
    a = jittered_box(box, 640, 480, (0, 3, 1), 0.2)
    assert a == jittered_box(box, 640, 480, (0, 3, 1), 0.2) and a != jittered_box(box, 640, 480, (0, 3, 2), 0.2)
    assert jittered_box(box, 640, 480, (0, 3, 1), 0.0) == [100.0, 50.0, 180.0, 90.0]
    for k in range(50):
        x1, y1, x2, y2 = jittered_box(box, 640, 480, (0, k, 0), 0.2)
        assert abs(x1 - 100) <= 16 + 1e-9 and abs(x2 - 180) <= 16 + 1e-9 and abs(y1 - 50) <= 8 + 1e-9
    x1, y1, x2, y2 = jittered_box((630.0, 470.0, 40.0, 30.0), 640, 480, (0, 0, 0), 0.3)
    assert x2 <= 640 and y2 <= 480


def test_validation_feeds_jittered_boxes(pairs, monkeypatch):
    from mrcnet.train import trainer

    ds = TrainingSamples(pairs, BINS, DEPTH, augment=False, label_cache=0)
    seen = []

    class Stop(Exception):
        pass

    def record(image, K, box, *a, **k):
        seen.append(list(box))
        raise Stop

    monkeypatch.setattr(trainer, "prepare_detection", record)

    class M:
        bn_group = 4
        cfg = get_config("small")

        def set_bn_group(self, g):
            pass

    for jitter in (0.0, 0.25):
        with pytest.raises(Stop):
            trainer.validate(M(), None, ds, box_jitter=jitter)
    (scene_id, im_id), gt_id = ds.items[0]
    x, y, w, h = ds.ds.image(scene_id, im_id).instances[gt_id].info["bbox_visib"]
    assert seen[0] == [x, y, x + w, y + h]
    assert seen[1] == jittered_box((x, y, w, h), 320, 240, (scene_id, im_id, gt_id), 0.25) and seen[1] != seen[0]


def test_parity_jittered_detections(pairs, tmp_path):
    import parity

    path = parity.jittered_detections(pairs, "train_pbr", 0.2, tmp_path / "dets.json")
    dets = bop.load_detections(path)
    ds = bop.BopDataset(pairs, "train_pbr")
    n = sum(1 for rec in ds for inst in rec.instances if inst.info["bbox_visib"][2] > 0)
    assert len(dets) == n and all(d["score"] == 1.0 for d in dets)
    gt = [inst.info["bbox_visib"] for rec in ds for inst in rec.instances if inst.info["bbox_visib"][2] > 0]
    moved = []
    for d, (x, y, w, h) in zip(dets, gt):  # the same order: images, then instances
        bx, by, bw, bh = d["bbox"]
        assert abs(bx - x) <= 0.2 * w + 1e-6 and abs(by - y) <= 0.2 * h + 1e-6
        assert abs(bx + bw - x - w) <= 0.2 * w + 1e-6 and abs(by + bh - y - h) <= 0.2 * h + 1e-6
        moved.append(max(abs(bx - x), abs(by - y), abs(bw - w), abs(bh - h)))
    assert max(moved) > 0


@pytest.mark.slow
def test_trainer_validates_with_ground_truth_and_jittered_boxes(pairs, tmp_path):
    from mrcnet.train.trainer import TrainConfig, train

    torch.manual_seed(0)
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(pairs), out=str(out), preset="small", dataset="synth", objects=[1], epochs=1,
                      batch_size=2, warmup=0, workers=0, val_data=str(pairs), val_max=2, val_box_jitter=0.2,
                      progress=False, device="cpu")
    train(cfg)
    gt = json.loads((out / "val_epoch_001.json").read_text())
    jit = json.loads((out / "val_epoch_001_jitter.json").read_text())
    assert gt["all"]["n"] == jit["all"]["n"] >= 2
    assert (gt["all"]["rot_err_deg"], gt["all"]["trans_err_mm"]) != (jit["all"]["rot_err_deg"], jit["all"]["trans_err_mm"])
    assert (out / "val_bop_jitter" / "estimates.csv").is_file()

"""Training samples and targets: crop / K_roi / pose consistency, soft labels, symmetries, collate."""
import cv2
import numpy as np
import pytest
import torch

from mrcnet.data import bop
from mrcnet.data.samples import box_location, crop_at
from mrcnet.model import get_config
from mrcnet.runtime.geometry import BinSpec, cell_centers, depth_bin_centers, quat_to_matrix, rotation_prototypes
from mrcnet.runtime.preprocess import PAD_SCALE, prepare_detection
from mrcnet.train import targets as T
from mrcnet.train.dataset import TrainingSamples, collate_samples

from train_fixtures import write_tiny_split

BINS = get_config("small").bins
DEPTH = (0.05, 1.7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_split(tmp_path_factory.mktemp("tiny"), n_images=4, n_objects=3, seed=0)


def test_crop_at_matches_prepare_detection(tiny):
    """The explicit-centre crop reproduces the runtime's crops, K_roi, box map for all 4 rotations."""
    ds = TrainingSamples(tiny, BINS, DEPTH, augment=False)
    (scene_id, im_id), gt_id = ds.items[0]
    rec = ds.ds.image(scene_id, im_id)
    x, y, w, h = rec.instances[gt_id].info["bbox_visib"]
    box = [x, y, x + w, y + h]
    img = rec.load_image("bgr")
    ref = prepare_detection(img, rec.K, box, 4, "training")
    c, s = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), PAD_SCALE * max(w, h)
    for k in range(4):
        crop, K_roi, M, c_rot = crop_at(img.astype(np.float32), rec.K, c, s, k)
        np.testing.assert_allclose(np.moveaxis(crop, 2, 0) / 255.0, ref.crops[k, :3], atol=1e-5)
        np.testing.assert_allclose(K_roi, ref.K_roi[k], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(box_location(box, c, s, k), ref.box_loc[k], atol=1e-12)
        fov = ((c_rot[0] - rec.K[0, 2]) / rec.K[0, 0], (c_rot[1] - rec.K[1, 2]) / rec.K[1, 1], s / rec.K[0, 0])
        np.testing.assert_allclose(fov, ref.fov[k], atol=1e-12)
    s0 = ds[0]
    # the sample warps the uint8 image (albumentations works on uint8): rounding to 1/255 only
    np.testing.assert_allclose(s0["crops"].numpy(), ref.crops[0], atol=0.51 / 255)
    np.testing.assert_allclose(s0["fov"].numpy(), ref.fov[0], atol=1e-6)


def test_pose_lands_on_mask(tiny):
    """Rendering the GT model with the sample's (R, t, K_roi) reproduces the sample's visible mask,
    for zoomed-in, in-plane-rotated crops."""
    from mrcnet.runtime.render import Renderer, load_mesh

    ds = TrainingSamples(tiny, BINS, DEPTH, augment=True, color_prob=0.0, bg_prob=0.0, seed=3)
    r = Renderer()
    for oid in ds.obj_ids:
        r.add_object(oid, load_mesh(ds.ds.model_path(oid)))
    ks, checked = set(), 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i, ((scene_id, im_id), gt_id) in enumerate(ds.items):
            if ds.ds.image(scene_id, im_id).instances[gt_id].info["visib_fract"] < 0.97:
                continue
            s = ds[i]
            ks.add(int(s["k"]))
            out = r.render([int(s["obj_id"])], s["R"][None].double().numpy(), s["t"][None].double().numpy(),
                           s["K_roi"][None].double().numpy(), 256, 256)
            m64 = cv2.resize(out.mask[0].astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA) > 0.5
            sm = s["mask"].numpy() > 0.5
            iou = (m64 & sm).sum() / max((m64 | sm).sum(), 1)
            assert iou > 0.85, f"sample {i} epoch {epoch} k={int(s['k'])}: IoU {iou:.3f}"
            # projected vertices land on the (slightly dilated) visible mask
            v = s["vertices"].double().numpy() @ s["R"].double().numpy().T + s["t"].double().numpy()
            p = v @ s["K_roi"].double().numpy().T
            px = np.floor(p[:, :2] / p[:, 2:] / 4).astype(int)
            dil = cv2.dilate(sm.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            ok = (px >= 0).all(1) & (px < 64).all(1)
            # (zoom-in may push part of the object out of the crop: check those inside)
            assert ok.mean() > 0.5 and dil[px[ok, 1], px[ok, 0]].mean() > 0.93
            # persp targets are the translation seen through K_roi
            d = s["persp"][2].item()
            assert abs(d * s["K_roi"][0, 0].item() - s["t"][2].item()) < 1e-2
            checked += 1
    r.release()
    assert checked >= 6 and len(ks) >= 2, (checked, ks)


def test_sample_determinism_and_epochs(tiny):
    ds = TrainingSamples(tiny, BINS, DEPTH, augment=True, seed=1)
    a, b = ds[2], ds[2]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = ds[2 + len(ds)]  # the same item in epoch 1
    assert not torch.equal(a["crops"], c["crops"])
    ds.set_epoch(1)
    assert torch.equal(ds[2]["crops"], c["crops"])


def test_soft_labels_peak_at_right_bins():
    bins = BinSpec(2, 100, 32)
    centers = depth_bin_centers(*DEPTH, 100)
    for d in (0.0517, 0.3, 1.2345):
        lab = T.depth_labels(torch.tensor(d, dtype=torch.float64), bins, DEPTH)
        assert abs(lab.sum().item() - 1) < 1e-9 and int(lab.argmax()) == int(np.abs(centers - d).argmin())
    cc = cell_centers(32)
    for dx, dy in ((-0.49, 0.1), (0.2, -0.33), (0.0, 0.0)):
        lab = T.cell_labels(torch.tensor([dx, dy], dtype=torch.float64), bins)
        iy, ix = divmod(int(lab.argmax()), 32)
        assert ix == int(np.abs(cc - dx).argmin()) and iy == int(np.abs(cc - dy).argmin())
        assert abs(lab.sum().item() - 1) < 1e-9
    # the 2D labels are the softmax over the grid of -(dist / (0.5 spacing))^2
    g = torch.tensor(cc)
    dist2 = (g[None, :] - 0.2) ** 2 + (g[:, None] + 0.33) ** 2
    ref = torch.softmax(-(dist2 / (0.5 / 32) ** 2).flatten(), 0)
    torch.testing.assert_close(T.cell_labels(torch.tensor([0.2, -0.33], dtype=torch.float64), bins), ref)


def _verts(seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(300, 3)) * (40, 25, 10)).float()


def test_rotation_labels_asymmetric_peak():
    protos = quat_to_matrix(rotation_prototypes(2))
    rng = np.random.default_rng(0)
    for _ in range(3):
        R = quat_to_matrix(rng.normal(size=4))
        lab = T.rotation_labels(torch.from_numpy(R).float(), _verts(), torch.eye(3)[None], torch.zeros(1, 3), 100.0, 2)
        ang = np.arccos(np.clip((np.einsum("pij,ij->p", protos, R) - 1) / 2, -1, 1))
        assert int(lab.argmax()) == int(ang.argmin())
        assert lab.shape == (576,) and float(lab.max()) <= 1.0 and float(lab.min()) > 0
    # a prototype itself gets label 1
    lab = T.rotation_labels(torch.from_numpy(protos[17]).float(), _verts(), torch.eye(3)[None], torch.zeros(1, 3), 100.0, 2)
    assert int(lab.argmax()) == 17 and abs(float(lab[17]) - 1) < 1e-5


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_rotation_labels_respect_symmetry(kind):
    if kind == "discrete":
        S = np.diag([-1.0, -1.0, 1.0])  # 180 deg about z
        info = bop.ModelInfo(diameter=100.0, symmetries_discrete=[np.block([[S, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])])
    else:
        info = bop.ModelInfo(diameter=100.0, symmetries_continuous=[{"axis": np.array([0, 0, 1.0]), "offset": np.zeros(3)}])
        S = bop.rotation_about_axis(1.234, [0, 0, 1])
    sR, st = (torch.from_numpy(a) for a in T.symmetry_tensors(info))
    v = _verts(1)
    rng = np.random.default_rng(5)
    R = quat_to_matrix(rng.normal(size=4))
    l1 = T.rotation_labels(torch.from_numpy(R).float(), v, sR, st, 100.0, 2)
    l2 = T.rotation_labels(torch.from_numpy(R @ S).float(), v, sR, st, 100.0, 2)
    tol = 1e-4 if kind == "discrete" else 0.03  # continuous: sampled every 360/315 deg
    assert float((l1 - l2).abs().max()) < tol
    # without the symmetry the two labels differ a lot
    e1 = T.rotation_labels(torch.from_numpy(R).float(), v, torch.eye(3)[None], torch.zeros(1, 3), 100.0, 2)
    e2 = T.rotation_labels(torch.from_numpy(R @ S).float(), v, torch.eye(3)[None], torch.zeros(1, 3), 100.0, 2)
    assert float((e1 - e2).abs().max()) > 0.1 and int(e1.argmax()) != int(e2.argmax())
    # symmetric labels are at least the asymmetric ones (min over the group)
    assert bool((l1 >= e1 - 1e-5).all())


def test_match_symmetry_picks_closest_member():
    info = bop.ModelInfo(diameter=100.0, symmetries_discrete=[
        np.block([[bop.rotation_about_axis(a, [0, 0, 1]), np.array([[1.0], [2.0], [0.0]])], [np.zeros((1, 3)), np.ones((1, 1))]])
        for a in (np.pi / 2, np.pi, 3 * np.pi / 2)])
    sR, st = (torch.from_numpy(a) for a in T.symmetry_tensors(info))
    R = torch.from_numpy(quat_to_matrix(np.array([0.3, 0.5, -0.2, 0.7]))).float()
    t = torch.tensor([10.0, -5.0, 500.0])
    v = _verts(2)
    C = T.second_moment(v)
    for s in range(4):
        ref = R @ sR[s] @ torch.from_numpy(bop.rotation_about_axis(0.05, [1, 0, 0])).float()
        Rm, tm = T.match_symmetry(R, t, ref, sR, st, C)
        torch.testing.assert_close(Rm, R @ sR[s])
        torch.testing.assert_close(tm, R @ st[s] + t)


def test_collate_pads_vertices_and_symmetries():
    def sample(nv, ns):
        return {"vertices": torch.ones(nv, 3), "sym_R": torch.zeros(ns, 3, 3) + 2, "sym_t": torch.ones(ns, 3),
                "diameter": torch.tensor(1.0)}

    b = collate_samples([sample(5, 1), sample(3, 4)])
    assert b["vertices"].shape == (2, 5, 3) and b["sym_R"].shape == (2, 4, 3, 3) and b["sym_t"].shape == (2, 4, 3)
    assert b["vertices_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert b["sym_mask"].tolist() == [[True, False, False, False], [True] * 4]
    torch.testing.assert_close(b["sym_R"][0, 1], torch.eye(3))
    assert float(b["vertices"][1, 3:].abs().sum()) == 0


def test_unknown_object_is_a_clear_error(tiny):
    with pytest.raises(bop.BopFormatError, match="models_info.json.*99"):
        TrainingSamples(tiny, BINS, DEPTH, obj_ids=[1, 99])


def _bracket_mesh():
    """A 120 x 40 x 20 mm block (12 triangles, 8 vertices) and a thin 64-sided pin on its -x end:
    most of the vertices sit on the pin, most of the surface on the block."""
    import trimesh

    block = trimesh.creation.box(extents=(120, 40, 20))
    pin = trimesh.creation.cylinder(radius=3, height=30, sections=64)
    pin.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (0, 1, 0)))
    pin.apply_translation((-75, 0, 0))
    m = trimesh.util.concatenate([block, pin])
    return m, block


def test_surface_points_follow_the_area_not_the_vertices():
    m, block = _bracket_mesh()
    assert np.mean(m.vertices[:, 0] <= -60) > 0.9  # the vertices are on the pin
    pts = T.surface_points(m.vertices, m.faces, 2000, seed=3)
    assert pts.shape == (2000, 3) and pts.dtype == np.float32
    np.testing.assert_array_equal(pts, T.surface_points(m.vertices, m.faces, 2000, seed=3))  # deterministic
    on_block = np.mean(pts[:, 0] >= -60.01)
    assert abs(on_block - block.area / m.area) < 0.03
    # labels from surface points tell a 90 deg roll about the pin's axis (x) apart; the vertices' do not
    roll = torch.from_numpy(quat_to_matrix(np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0, 0]))).float()
    protos = torch.stack([torch.eye(3), roll])
    eye_S, zero_t = torch.eye(3)[None], torch.zeros(1, 3)
    e_pts = T.rotation_distances(torch.eye(3), torch.from_numpy(pts), eye_S, zero_t, protos)
    e_vert = T.rotation_distances(torch.eye(3), torch.from_numpy(m.vertices).float(), eye_S, zero_t, protos)
    diameter = float(np.linalg.norm(m.extents))
    assert float(e_pts[1]) > 0.1 * diameter and float(e_pts[1]) > 2.5 * float(e_vert[1]), (e_pts, e_vert)  # vertices: ~0.04 d


def test_label_cache_is_keyed_by_the_model_points(tiny, tmp_path):
    ds = TrainingSamples(tiny, BINS, DEPTH, augment=False, label_cache_dir=tmp_path)
    first = ds[0]["rot_labels"]
    other = TrainingSamples(tiny, BINS, DEPTH, augment=False, label_cache_dir=tmp_path, n_vertices=50)
    assert ds.label_cache_dir != other.label_cache_dir and ds.label_cache_dir.parent == tmp_path
    assert len(list(ds.label_cache_dir.glob("*.npy"))) == 1
    torch.testing.assert_close(TrainingSamples(tiny, BINS, DEPTH, augment=False, label_cache_dir=tmp_path)[0]["rot_labels"], first)

"""BOP'19 evaluation (mrcnet.eval) on hand-built cases: pose errors, matching, AR, the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest

from mrcnet import testing
from mrcnet.data import bop
from mrcnet.eval import bop_eval as be
from mrcnet.eval import pose_errors as pe

W, H = 160, 120
K = np.array([[200.0, 0.0, 80.0], [0.0, 200.0, 60.0], [0.0, 0.0, 1.0]])
SIZE = np.array([40.0, 30.0, 20.0])  # cuboid edge lengths, mm (all different: no symmetry)
DIAM = float(np.linalg.norm(SIZE))
RZ180 = bop.rotation_about_axis(np.pi, [0, 0, 1])


def box_mesh():
    """8 vertices (float64) / 12 triangles cuboid centred at the origin."""
    v, f = testing.box_mesh(SIZE)
    return v.astype(np.float64), f


def rot(axis, deg):
    return bop.rotation_about_axis(np.deg2rad(deg), axis)


# scene 1: image 0 holds objects 1 and 2 (2 is declared symmetric under Rz(180)); image 1 holds
# object 1 alone. Three instances to find in all.
GT = {
    0: [(1, rot([1, 1, 0], 30), np.array([-30.0, 0.0, 400.0])),
        (2, rot([0, 1, 1], -25), np.array([35.0, 5.0, 420.0]))],
    1: [(1, rot([1, 0, 1], 60), np.array([5.0, -5.0, 380.0]))],
}


@pytest.fixture(scope="module")
def renderer(renderer):
    """conftest's renderer holding the two cuboids."""
    from mrcnet.runtime.render import Mesh

    r = renderer
    mesh = Mesh.from_arrays(*box_mesh())
    for obj_id in (1, 2):
        r.add_object(obj_id, mesh)
    return r


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, renderer):
    """A tiny BOP folder: models/, test/000001/ with rgb, depth (rendered), gt, gt_info."""
    root = tmp_path_factory.mktemp("bop")
    v, f = box_mesh()
    (root / "models").mkdir()
    for obj_id in (1, 2):
        testing.write_box_ply(root / "models" / f"obj_{obj_id:06d}.ply", SIZE)
    box = {"min_x": -SIZE[0] / 2, "min_y": -SIZE[1] / 2, "min_z": -SIZE[2] / 2,
           "size_x": SIZE[0], "size_y": SIZE[1], "size_z": SIZE[2], "diameter": DIAM}
    sym = np.eye(4)
    sym[:3, :3] = RZ180
    bop.save_models_info(root / "models" / "models_info.json",
                         {1: dict(box), 2: dict(box, symmetries_discrete=[sym.reshape(-1).tolist()])})
    scene = root / "test" / "000001"
    cams, gts, infos = {}, {}, {}
    for im_id, insts in GT.items():
        ids = [o for o, _, _ in insts]
        out = renderer.render(ids, np.stack([r for _, r, _ in insts]),
                              np.stack([t for _, _, t in insts]), K, W, H)
        d = np.where(out.depth > 0, out.depth, np.inf).min(axis=0)
        d[~np.isfinite(d)] = 0
        bop.save_depth(scene / "depth" / f"{im_id:06d}.png", d, depth_scale=0.1)
        bop.save_image(scene / "rgb" / f"{im_id:06d}.png", np.zeros((H, W, 3), np.uint8))
        cams[im_id] = {"cam_K": K.reshape(-1).tolist(), "depth_scale": 0.1}
        gts[im_id] = [{"obj_id": o, "cam_R_m2c": r.reshape(-1).tolist(), "cam_t_m2c": t.tolist()}
                      for o, r, t in insts]
        infos[im_id] = []
        for k in range(len(insts)):
            visib = out.mask[k] & (np.abs(out.depth[k] - d) < 1e-3)
            infos[im_id].append({"visib_fract": float(visib.sum() / out.mask[k].sum()),
                                 "px_count_all": int(out.mask[k].sum())})
    bop.save_scene_camera(scene / "scene_camera.json", cams)
    bop.save_scene_gt(scene / "scene_gt.json", gts)
    bop.save_scene_gt_info(scene / "scene_gt_info.json", infos)
    return root


def gt_rows(score=1.0):
    return [{"scene_id": 1, "im_id": im_id, "obj_id": o, "score": score, "R": r, "t": t.copy(),
             "time": 0.5} for im_id, insts in GT.items() for o, r, t in insts]


def run_eval(dataset, tmp_path, rows, renderer, name="res.csv", **kw):
    path = tmp_path / name
    bop.save_bop_results(path, rows)
    return be.evaluate_bop19(dataset, path, renderer=renderer, **kw)


# ---------------------------------------------------------------------------- pose errors
def test_mssd_of_translation_is_its_norm():
    v, _ = box_mesh()
    R = rot([0.3, -1, 0.2], 40)
    d = np.array([3.0, -4.0, 12.0])
    assert pe.mssd(R, d + [1, 2, 300], R, [1, 2, 300], v) == pytest.approx(13.0, abs=1e-9)
    assert pe.add(R, d, R, [0, 0, 0], v) == pytest.approx(13.0, abs=1e-9)
    assert pe.te(d, [0, 0, 0]) == pytest.approx(13.0)


def test_mspd_of_known_image_shift():
    # planar points at depth 500: a lateral offset dx moves every projection by fx*dx/z
    pts = np.array([[x, y, 0.0] for x in (-20, 0, 25) for y in (-10, 15)])
    t = np.array([10.0, -5.0, 500.0])
    e = pe.mspd(np.eye(3), t + [7.5, 0, 0], np.eye(3), t, K, pts)
    assert e == pytest.approx(200.0 * 7.5 / 500.0, abs=1e-9)


def test_symmetry_gives_zero_mssd_mspd():
    v, _ = box_mesh()
    R, t = rot([1, 2, 3], 50), np.array([0.0, 10.0, 400.0])
    syms = bop.symmetry_transforms({"symmetries_discrete": [np.r_[np.c_[RZ180, np.zeros(3)],
                                                                   [[0, 0, 0, 1]]].reshape(-1)]})
    R_turned = R @ RZ180
    assert pe.mssd(R_turned, t, R, t, v, syms) == pytest.approx(0.0, abs=1e-9)
    assert pe.mspd(R_turned, t, R, t, K, v, syms) == pytest.approx(0.0, abs=1e-9)
    # without the symmetry the same pose is far off (the corners swap: the diagonal in xy)
    assert pe.mssd(R_turned, t, R, t, v) == pytest.approx(np.hypot(40, 30), abs=1e-9)
    # continuous symmetry about z: any sampled angle gives zero
    cont = bop.symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]})
    n = int(np.ceil(np.pi / 0.01))
    assert len(cont) == n
    R_k = R @ bop.rotation_about_axis(37 * 2 * np.pi / n, [0, 0, 1])
    assert pe.mssd(R_k, t, R, t, v, cont) == pytest.approx(0.0, abs=1e-6)
    assert pe.mssd(R_k, t, R, t, v) > 10.0


def test_vsd_gt_zero_far_one_partial(renderer):
    v, _ = box_mesh()
    R, t = rot([1, 1, 0], 30), np.array([0.0, 0.0, 400.0])
    out = renderer.render([1, 1, 1], np.stack([R, R, R]),
                          np.array([t, t + [0, 0, 0.2 * DIAM], t + [150, 0, 0]]), K, W, H)
    scene = out.depth[0]
    e_gt = pe.vsd(out.depth[0], out.depth[0], scene, K, 15, pe.VSD_TAUS, DIAM)
    np.testing.assert_array_equal(e_gt, 0.0)
    e_far = pe.vsd(out.depth[2], out.depth[0], scene, K, 15, pe.VSD_TAUS, DIAM)
    np.testing.assert_array_equal(e_far, 1.0)
    assert not pe.overlapping_sphere_projections(DIAM / 2, t + [150, 0, 0], t)
    # pushed back by 0.2 diameter: the per-pixel distances differ by ~0.2 d (a bit less on the
    # tilted faces), so every pixel fails tau <= 0.15; from tau 0.25 on only the silhouette
    # change (pixels covered at one pose only) remains
    e_back = pe.vsd(out.depth[1], out.depth[0], scene, K, 15, pe.VSD_TAUS, DIAM)
    np.testing.assert_array_equal(e_back[:3], 1.0)
    assert np.all(e_back[4:] == e_back[-1]) and 0 < e_back[-1] < 0.1
    assert np.all(np.diff(e_back) <= 0)


def test_depth_to_dist():
    d = np.zeros((3, 4))
    d[1, 3] = 100.0
    Kc = np.array([[50.0, 0, 1.0], [0, 50.0, 1.0], [0, 0, 1]])
    dist = pe.depth_to_dist(d, Kc)
    assert dist[1, 3] == pytest.approx(100.0 * np.sqrt(1 + (2 / 50) ** 2))
    assert dist.sum() == pytest.approx(dist[1, 3])


def test_pose_accuracy_vectorised():
    R_gt = np.stack([rot([0, 0, 1], 10), rot([1, 0, 0], -20), np.eye(3)])
    R_est = np.stack([R_gt[0] @ rot([1, 2, 3], 3), R_gt[1] @ rot([0, 1, 0], 7), np.eye(3)])
    t_gt = np.zeros((3, 3))
    t_est = np.array([[0, 30, 40.0], [1, 0, 0], [0, 0, 60]])
    acc = pe.pose_accuracy(R_est, t_est, R_gt, t_gt)
    np.testing.assert_allclose(acc["rot_err_deg"], [3, 7, 0], atol=1e-6)
    np.testing.assert_allclose(acc["trans_err_mm"], [50, 1, 60])
    np.testing.assert_array_equal(acc["within_5deg_5cm"], [False, False, False])
    acc = pe.pose_accuracy(R_est[0], t_est[0] * 0.9, R_gt[0], t_gt[0])
    assert acc["within_5deg_5cm"].tolist() == [True]
    assert pe.re(R_est[1], R_gt[1]) == pytest.approx(7.0, abs=1e-6)


def test_adi_le_add_and_zero_for_symmetric_turn():
    v, _ = box_mesh()
    R = rot([0, 1, 0], 20)
    assert pe.adi(R @ RZ180, [0, 0, 0], R, [0, 0, 0], v) == pytest.approx(0.0, abs=1e-9)
    assert pe.add(R @ RZ180, [0, 0, 0], R, [0, 0, 0], v) > 10


# ------------------------------------------------------------------------------- matching
def test_greedy_match_order_strictness_validity():
    th = np.array([1.0, 2.0, 5.0])
    # est 0 (higher score) is closest to gt 1; est 1 is close to gt 1 too, then to gt 0
    e = np.array([[[4.0] * 3, [0.5] * 3, [0.1] * 3],
                  [[1.5] * 3, [0.2] * 3, [0.1] * 3]])
    m = be.greedy_match(e, th, np.array([True, True, False]))
    # th 1: est0 -> gt1, est1's best unmatched valid is gt0 at 1.5 (not < 1); th 2 and 5: both
    np.testing.assert_array_equal(m, [[False, True, False], [True, True, False], [True, True, False]])
    # an error equal to the threshold is not correct; NaN never matches
    m = be.greedy_match(np.array([[[1.0, np.nan]]]).reshape(1, 1, 2), np.array([1.0, 5.0]), np.array([True]))
    np.testing.assert_array_equal(m, [[False], [False]])


def _reference_match(errs, th, valid):
    """bop_toolkit's greedy rule written plainly: one threshold, estimates in score order, each
    takes the first unmatched valid instance whose error is the lowest below the threshold."""
    matched = []
    for e in errs:
        best, best_err = -1, th
        for g, err in enumerate(e):
            if valid[g] and g not in matched and err < best_err:
                best, best_err = g, err
        if best >= 0:
            matched.append(best)
    return [g in matched for g in range(len(valid))]


def test_greedy_match_equals_reference_on_random_cases():
    rng = np.random.default_rng(0)
    th = np.array([0.2, 0.5, 0.8])
    for _ in range(200):
        n_e, n_g = rng.integers(0, 5), rng.integers(1, 5)
        e = np.round(rng.random((n_e, n_g)), 1)  # rounding makes ties frequent
        valid = rng.random(n_g) < 0.8
        got = be.greedy_match(e[:, :, None], th, valid)
        for c, t in enumerate(th):
            assert got[c].tolist() == _reference_match(e, t, valid)


def test_valid_gt_mask_most_visible():
    obj = [1, 1, 2, 1]
    vf = [0.3, 0.9, 0.05, 0.5]
    np.testing.assert_array_equal(be.valid_gt_mask(obj, vf, {1: 2, 2: 1}), [False, True, True, True])
    np.testing.assert_array_equal(be.valid_gt_mask(obj, vf, {1: 1}, visib_gt_min=0.1),
                                  [True, True, False, True])


# ------------------------------------------------------------------------------ end to end
def test_ground_truth_scores_one(dataset, tmp_path, renderer):
    rep = run_eval(dataset, tmp_path, gt_rows(), renderer)
    assert rep["AR"] == 1.0 and rep["AR_VSD"] == 1.0 and rep["AR_MSSD"] == 1.0 and rep["AR_MSPD"] == 1.0
    assert set(rep["per_object"]) == {1, 2} and all(r["AR"] == 1.0 for r in rep["per_object"].values())
    assert rep["counts"]["instances_to_find"] == 3 and rep["counts"]["targets_without_estimate"] == 0
    assert rep["average_time_per_image"] == pytest.approx(0.5)
    assert "derived" in rep["inputs"]["targets"]


def test_missing_estimate_is_a_miss(dataset, tmp_path, renderer):
    rows = [r for r in gt_rows() if r["obj_id"] != 2]
    rep = run_eval(dataset, tmp_path, rows, renderer)
    for k in ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD"):
        assert rep[k] == pytest.approx(2 / 3)
    assert rep["per_object"][2]["AR"] == 0.0 and rep["per_object"][1]["AR"] == 1.0
    assert rep["counts"]["targets_without_estimate"] == 1


def test_known_offsets_give_known_recalls(dataset, tmp_path, renderer):
    d = 0.22 * DIAM  # MSSD / diameter = 0.22: correct for thresholds 0.25..0.5 (6 of 10)
    rows = gt_rows()
    for r in rows:
        r["t"] = r["t"] + np.array([0.3, 0.0, 0.954]) / np.hypot(0.3, 0.954) * d
    rep = run_eval(dataset, tmp_path, rows, renderer)
    assert rep["AR_MSSD"] == pytest.approx(0.6)
    np.testing.assert_allclose(rep["recalls"]["mssd"], [0] * 4 + [1] * 6)
    # MSPD: the errors scaled by 640 / 160 = 4 against 5..50 px
    v, _ = box_mesh()
    exp = []
    for r in rows:
        _, R_g, t_g = next(g for g in GT[r["im_id"]] if g[0] == r["obj_id"])
        exp.append(4.0 * pe.mspd(r["R"], r["t"], R_g, t_g, K, v))
    expected = np.array([[e < th for e in exp] for th in be.MSPD_THRESHOLDS]).mean(axis=1)
    assert 0 < expected.mean() < 1  # the case is not trivial
    np.testing.assert_allclose(rep["recalls"]["mspd"], expected)
    # VSD: ~0.21 d behind the truth fails every pixel for tau <= 0.15 (error 1: recall 0), and
    # leaves only the silhouette change for the largest taus (correct for the loosest thresholds);
    # recall never drops with a looser threshold or a larger tau
    vsd = np.array(rep["recalls"]["vsd"])
    assert vsd.shape == (10, 10) and np.all(vsd[:3] == 0) and vsd[-1, -1] == 1.0
    assert np.all(np.diff(vsd, axis=0) >= 0) and np.all(np.diff(vsd, axis=1) >= 0)


def test_big_offset_scores_zero(dataset, tmp_path, renderer):
    rows = gt_rows()
    for r in rows:
        r["t"] = r["t"] + [300.0, 0.0, 0.0]
    rep = run_eval(dataset, tmp_path, rows, renderer)
    assert rep["AR"] == 0.0 and rep["AR_VSD"] == 0.0


def test_symmetric_turn_matches_only_symmetric_object(dataset, tmp_path, renderer):
    rows = gt_rows()
    for r in rows:
        r["R"] = r["R"] @ RZ180
    rep = run_eval(dataset, tmp_path, rows, renderer, metrics=("mssd", "mspd"))
    assert rep["per_object"][2]["AR_MSSD"] == 1.0 and rep["per_object"][2]["AR_MSPD"] == 1.0
    assert rep["per_object"][1]["AR_MSSD"] == 0.0
    assert rep["AR"] is None and rep["AR_VSD"] is None


def test_top_inst_count_by_score_and_other_objects_ignored(dataset, tmp_path, renderer):
    good = gt_rows(score=0.9)
    bad = [dict(r, t=r["t"] + [200.0, 0, 0], score=0.5) for r in good]
    extra = [dict(good[0], obj_id=3)]  # an object that is no target: ignored
    rep = run_eval(dataset, tmp_path, good + bad + extra, renderer, metrics=("mssd",))
    assert rep["AR_MSSD"] == 1.0
    rep = run_eval(dataset, tmp_path, [dict(r, score=0.1) for r in good] + bad, renderer,
                   metrics=("mssd",))
    assert rep["AR_MSSD"] == 0.0  # only the top-scoring (wrong) estimate per target counts
    assert rep["counts"]["estimates_evaluated"] == 3


def test_targets_file_restricts_and_missing_file_errors(dataset, tmp_path, renderer):
    tpath = tmp_path / "targets.json"
    bop.save_test_targets(tpath, [{"scene_id": 1, "im_id": 1, "obj_id": 1, "inst_count": 1}])
    rep = run_eval(dataset, tmp_path, gt_rows()[:1], renderer, targets=tpath, metrics=("mssd",))
    assert rep["counts"]["instances_to_find"] == 1 and rep["AR_MSSD"] == 0.0  # image 0's pose
    with pytest.raises(be.EvalError, match="targets file not found"):
        run_eval(dataset, tmp_path, gt_rows(), renderer, targets=tmp_path / "nope.json")


def test_missing_depth_and_bad_metric_are_clear_errors(dataset, tmp_path, renderer):
    import shutil

    copy = tmp_path / "nodepth"
    shutil.copytree(dataset, copy)
    shutil.rmtree(copy / "test" / "000001" / "depth")
    with pytest.raises(be.EvalError, match="VSD needs the depth images"):
        run_eval(copy, tmp_path, gt_rows(), renderer)
    rep = run_eval(copy, tmp_path, gt_rows(), renderer, metrics=("mssd", "mspd"))
    assert rep["AR_MSSD"] == 1.0 and rep["AR_MSPD"] == 1.0
    with pytest.raises(be.EvalError, match="unknown metrics"):
        run_eval(dataset, tmp_path, gt_rows(), renderer, metrics=("add",))


def test_bad_csv_row_names_file_and_line(dataset, tmp_path, renderer):
    path = tmp_path / "bad.csv"
    bop.save_bop_results(path, gt_rows())
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",", ";", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(be.EvalError, match=r"bad\.csv:3"):
        be.evaluate_bop19(dataset, path, renderer=renderer)
    rows = gt_rows()
    with pytest.raises(ValueError, match="non-finite"):  # the writer never writes a NaN pose
        bop.format_result_row({**rows[1], "t": np.array([np.nan, 0.0, 400.0])})
    path = tmp_path / "nan.csv"  # another tool's file with one
    bop.save_bop_results(path, rows)
    lines = path.read_text().splitlines()
    f = lines[2].split(",")
    f[5] = "nan 0.0 400.0"
    lines[2] = ",".join(f)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(be.EvalError, match=r"nan\.csv: result row 2 \(scene 1, image 0, object 2\): t"):
        be.evaluate_bop19(dataset, path, renderer=renderer)


def test_report_files_and_cli(dataset, tmp_path, renderer):
    from click.testing import CliRunner

    from mrcnet.eval.cli import main

    res = tmp_path / "r.csv"
    bop.save_bop_results(res, gt_rows())
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--data", str(dataset), "--results", str(res), "--out",
                                       str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| **all** | **100.0** |" in result.output
    js = json.loads((out / "scores_bop19.json").read_text())
    assert js["AR"] == 1.0 and js["per_object"]["2"]["AR_MSPD"] == 1.0
    assert js["params"]["vsd_delta"] == 15.0 and be.default_vsd_delta(tmp_path / "itodd") == 5.0
    assert (out / "scores_bop19.md").read_text().startswith("| object | AR |")
    bad = tmp_path / "bad.csv"
    bad.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,0,1,1.0,1 0 0,0 0 1,0.1\n")
    result = CliRunner().invoke(main, ["--data", str(dataset), "--results", str(bad), "--no-progress"])
    assert result.exit_code != 0 and "bad.csv:2" in result.output


def test_cli_relative_data_with_models_eval(dataset, tmp_path, monkeypatch):
    """``mrcnet-eval --data ds`` with a relative path and a models_eval/ folder: the evaluation
    models are found once (not ``ds/ds/models_eval``) and used."""
    import shutil

    from click.testing import CliRunner

    from mrcnet.eval.cli import main

    shutil.copytree(dataset, tmp_path / "ds")
    shutil.copytree(tmp_path / "ds" / "models", tmp_path / "ds" / "models_eval")
    bop.save_bop_results(tmp_path / "r.csv", gt_rows())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--data", "ds", "--results", "r.csv", "--out", "out",
                                       "--metrics", "mssd,mspd", "--no-progress"])
    assert result.exit_code == 0, result.output
    js = json.loads((tmp_path / "out" / "scores_bop19.json").read_text())
    assert js["AR_MSSD"] == 1.0 and js["AR_MSPD"] == 1.0
    assert Path(js["inputs"]["models"]) == Path("ds") / "models_eval"


def test_symmetry_aware_rotation_error():
    R_gt = rot([0, 0, 1], 30)
    flip = rot([1, 0, 0], 180)
    syms = np.stack([np.eye(3), flip])
    est = R_gt @ flip @ rot([0, 1, 0], 4)  # 4 deg from the flipped copy
    assert pe.re_sym(est, R_gt, syms) == pytest.approx(4.0, abs=1e-6)
    assert pe.re_sym(est, R_gt, syms[:1]) > 170.0  # without the symmetry: nearly 180 deg
    np.testing.assert_array_equal(pe.within_5deg_5cm([4.9, 5.0, 1.0], [10.0, 10.0, 50.0]), [True, False, False])


def test_own_renderer_released_after_an_error_mid_evaluation(dataset, tmp_path, monkeypatch):
    """evaluate_bop19 creates a Renderer when given none; an error at the second image (its depth
    is missing) still releases it, and so does a normal return."""
    import shutil

    from mrcnet.runtime.render import Renderer

    made = []

    class Recording(Renderer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.released, self.rendered = False, 0
            made.append(self)

        def render(self, *a, **kw):
            self.rendered += 1
            return super().render(*a, **kw)

        def release(self):
            self.released = True
            super().release()

    monkeypatch.setattr(be, "Renderer", Recording)
    copy = tmp_path / "half"
    shutil.copytree(dataset, copy)
    (copy / "test" / "000001" / "depth" / "000001.png").unlink()  # image 0 fine, image 1 fails
    path = tmp_path / "res.csv"
    bop.save_bop_results(path, gt_rows())
    with pytest.raises(be.EvalError, match="VSD needs the depth images"):
        be.evaluate_bop19(copy, path)
    assert len(made) == 1 and made[0].rendered > 0 and made[0].released  # failed mid-way: released
    rep = be.evaluate_bop19(dataset, path)
    assert rep["AR"] == 1.0 and len(made) == 2 and made[1].released
    rep = be.evaluate_bop19(dataset, path, metrics=("mssd",))
    assert len(made) == 2  # no VSD: no renderer

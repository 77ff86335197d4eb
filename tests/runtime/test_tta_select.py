"""The TTA selection (runtime.geometry.tta_select): the official rule (most confident crop) and this
project's "agreement" option (the crop most others agree with, ties by score)."""
import numpy as np
import pytest

from mrcnet.runtime.geometry import TTA_AGREE_DEG, TTA_SELECT_MODES, tta_rotations, tta_select
from mrcnet.runtime.pipeline import Pipeline
from mrcnet.runtime.rotations import quat_to_matrix, rotation_angle_deg, rotz

RZ = tta_rotations(4)
FLIP = np.diag([1.0, -1.0, -1.0])  # the part turned end for end (180 deg about its x axis)


def _group(R_true, turned_back):
    """Per-crop rotations in the rotated frames (4, 3, 3) whose turned-back rotations are turned_back[k] @ ..."""
    return np.stack([RZ[k] @ R_true @ turned_back[k] for k in range(4)])


def test_agreement_takes_the_majority_over_a_confident_flipped_crop():
    R_true = quat_to_matrix(np.array([0.9, 0.1, -0.3, 0.2]))
    R = _group(R_true, [FLIP, np.eye(3), np.eye(3), np.eye(3)])[None]
    t = np.tile(np.array([1.0, 2.0, 500.0]), (1, 4, 1))
    rs = np.array([[9.0, 1.0, 3.0, 2.0]])  # the flipped crop is the most confident
    R_off, _, s_off = tta_select(R, t, rs, rs, RZ)
    R_agr, t_agr, s_agr = tta_select(R, t, rs, rs, RZ, mode="agreement")
    assert rotation_angle_deg(R_off[0], R_true) == pytest.approx(180.0, abs=1e-6) and s_off[0] == 9.0
    assert rotation_angle_deg(R_agr[0], R_true) < 1e-6
    assert s_agr[0] == 3.0  # of the three that agree, the most confident
    np.testing.assert_allclose(t_agr[0], RZ[0].T @ t[0, 0])  # translation: the official rule, unchanged


def test_agreement_without_agreement_or_with_tied_votes_falls_back_to_the_score():
    rng = np.random.default_rng(0)
    G = 6
    R = quat_to_matrix(rng.normal(size=(G, 4, 4)))
    # spread the crops' turned-back rotations far apart: no two within TTA_AGREE_DEG
    far = [np.eye(3), rotz(np.array([np.pi / 2]))[0], FLIP, rotz(np.array([-np.pi / 2]))[0] @ FLIP]
    R = np.stack([_group(R[g, 0], far) for g in range(G)])
    Ru = np.einsum("kji,gkjl->gkil", RZ, R)
    assert (rotation_angle_deg(Ru[:, :, None], Ru[:, None, :]) + 1e3 * np.eye(4) >= TTA_AGREE_DEG).all()
    t = rng.normal(size=(G, 4, 3))
    rs, ds = rng.normal(size=(G, 4)), rng.normal(size=(G, 4))
    for a, b in zip(tta_select(R, t, rs, ds, RZ), tta_select(R, t, rs, ds, RZ, mode="agreement")):
        np.testing.assert_array_equal(a, b)
    # two pairs that agree (2 votes each): the pair with the larger score wins
    R2 = _group(np.eye(3), [np.eye(3), np.eye(3), FLIP, FLIP])[None]
    rs2 = np.array([[1.0, 2.0, 3.0, 0.5]])
    R_sel, _, s = tta_select(R2, t[:1], rs2, rs2, RZ, mode="agreement")
    assert s[0] == 3.0 and rotation_angle_deg(R_sel[0], FLIP) < 1e-6


def test_unknown_selection_is_refused():
    assert TTA_SELECT_MODES == ("score", "agreement")
    R = np.tile(np.eye(3), (1, 4, 1, 1))
    with pytest.raises(ValueError, match="majority"):
        tta_select(R, np.zeros((1, 4, 3)), np.zeros((1, 4)), np.zeros((1, 4)), RZ, mode="majority")
    with pytest.raises(ValueError, match="tta_select"):
        Pipeline(None, None, None, tta_select="majority")


class _ScriptedBackend:
    """A backend whose regressor returns, for every detection, the crops' rotations of
    :func:`_group` (crop 0 turned end for end and the most confident)."""
    name = "scripted"
    classifier_outputs = ["R_init", "t_init", "rot_score", "depth_score"]
    regressor_outputs = ["R", "t"]
    max_crops = None
    R_TRUE = quat_to_matrix(np.array([0.8, -0.2, 0.4, 0.1]))

    def run_classifier(self, feeds, fetch=None):
        n = len(feeds["crops"])
        return {"R_init": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
                "t_init": np.tile(np.array([0, 0, 500], np.float32), (n, 1)),
                "rot_score": np.tile(np.array([9.0, 1.0, 3.0, 2.0], np.float32), n // 4),
                "depth_score": np.zeros(n, np.float32)}

    def run_regressor(self, feeds, fetch=None):
        n = len(feeds["render"])
        R = _group(self.R_TRUE, [FLIP, np.eye(3), np.eye(3), np.eye(3)])
        return {"R": np.tile(R, (n // 4, 1, 1)).astype(np.float32), "t": np.tile(np.array([0, 0, 500], np.float32), (n, 1))}

    def close(self):
        pass


def test_pipeline_and_run_summary_use_the_chosen_selection(tmp_path):
    from click.testing import CliRunner

    import runtime_fakes as F
    from mrcnet.runtime import cli
    from mrcnet.runtime.detections import Detection
    from mrcnet.runtime.manifest import load_manifest
    from mrcnet.runtime.run_summary import RunSummary

    man = load_manifest(F.make_export(tmp_path / "export", obj_ids=(1,)))
    img = np.full((240, 320, 3), 90, np.uint8)
    K = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])
    det = [Detection(1, np.array([110.0, 70, 210, 170]))]
    poses = {mode: Pipeline(_ScriptedBackend(), man, F.SilhouetteRenderer(), tta_select=mode).estimate(img, K, det)
             for mode in TTA_SELECT_MODES}
    R_true = _ScriptedBackend.R_TRUE
    assert rotation_angle_deg(poses["score"][0].R, R_true) == pytest.approx(180.0, abs=1e-3)
    assert rotation_angle_deg(poses["agreement"][0].R, R_true) < 1e-3
    assert poses["agreement"][0].score == pytest.approx(3.0)
    s = RunSummary(backend="scripted", renderer="r", tta_select="agreement")
    assert s.to_dict()["tta_select"] == "agreement" and "TTA selection agreement" in s.format()
    assert "TTA selection" not in RunSummary(backend="scripted", renderer="r").format()
    r = CliRunner().invoke(cli.main, ["--demo", "--tta-select", "majority"])
    assert r.exit_code == 2 and "--tta-select" in r.output

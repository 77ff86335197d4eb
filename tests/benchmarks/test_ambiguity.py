"""benchmarks/ambiguity.py: look-alike crops and their symmetry-aware rotation gaps."""
import json

import numpy as np
from click.testing import CliRunner

from mrcnet.runtime.geometry import quat_to_matrix

from train_fixtures import write_tiny_split

import ambiguity  # noqa: E402

RZ180 = np.diag([-1.0, -1.0, 1.0])


def _masks():
    a = np.zeros((3, 16, 16), bool)
    a[0, 4:12, 2:14] = True
    a[1] = a[0]
    a[1, 4, 2] = False  # almost the same outline
    a[2, 0:4, 0:4] = True  # another outline
    return a


def test_rotation_gap_is_symmetry_aware():
    R = quat_to_matrix(np.array([0.9, 0.1, -0.3, 0.2]))
    Ra, Rb = np.stack([R, R]), np.stack([R, R @ RZ180])
    np.testing.assert_allclose(ambiguity.rotation_gap_deg(Ra, Rb, np.eye(3)[None]), [0.0, 180.0], atol=1e-5)
    np.testing.assert_allclose(ambiguity.rotation_gap_deg(Ra, Rb, np.stack([np.eye(3), RZ180])), [0.0, 0.0],
                               atol=1e-5)


def test_lookalike_pairs_and_summary():
    R = np.stack([np.eye(3), RZ180, np.eye(3)])
    pairs, iou, gap = ambiguity.lookalike_pairs(_masks(), R, np.eye(3)[None], 0.85)
    assert pairs.tolist() == [[0, 1]] and iou[0] > 0.98
    np.testing.assert_allclose(gap, [180.0], atol=1e-5)
    assert ambiguity.summarise(gap, 3) == {"crops": 3, "pairs": 1, "median_gap_deg": 180.0, "share_over_90deg": 1.0}
    _, _, gap = ambiguity.lookalike_pairs(_masks(), R, np.stack([np.eye(3), RZ180]), 0.85)
    np.testing.assert_allclose(gap, [0.0], atol=1e-5)  # the flip is a declared symmetry
    none = ambiguity.lookalike_pairs(_masks(), R, np.eye(3)[None], 0.999)
    assert len(none[0]) == 0 and ambiguity.summarise(none[2], 3)["median_gap_deg"] is None


def test_cli_on_a_tiny_split(tmp_path):
    data = write_tiny_split(tmp_path / "data", n_images=3, n_objects=2, seed=0)
    out = tmp_path / "amb"
    r = CliRunner().invoke(ambiguity.main, ["--data", str(data), "--samples", "6", "--iou", "0.0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "ambiguity.json").read_text())["objects"]
    assert sum(v["crops"] for v in rep.values()) == 6
    for v in rep.values():  # IoU >= 0 keeps every pair of an object's crops
        assert v["pairs"] == v["crops"] * (v["crops"] - 1) // 2
        if v["pairs"]:
            assert 0.0 <= v["median_gap_deg"] <= 180.0
    assert (out / "ambiguity.png").stat().st_size > 1000 and "| obj_" in r.output

"""Labels, decoding and the seven weighted training losses against the official loss code's
values on fixed inputs (``tests/data/golden_losses.npz``: paper bins, T-LESS depth range, 256 crops,
6 samples, a 2-member symmetry set with a translation part). Within 1e-4 relative."""
import numpy as np
import pytest
import torch

from mrcnet.geometry import BinTables, decode_bins, decode_final
from mrcnet.runtime.geometry import PAPER_BINS
from mrcnet.train import losses as L
from mrcnet.train import targets as T

from conftest import DATA

REL = 1e-4
# our loss names -> the official trainer's
LOSS_NAMES = {"rot_clf": "loss_quat_clf", "rot_reg": "loss_quat_reg", "cell_clf": "loss_txty_clf",
              "depth_clf": "loss_depth_clf", "xy_reg": "loss_txty_reg", "depth_reg": "loss_tz_reg",
              "mask": "loss_mask_visib"}


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "golden_losses.npz")


def _t(g, key):
    return torch.from_numpy(np.asarray(g[key], np.float32))


def _depth_range(g):
    return float(g["depth_near"]), float(g["depth_far"])


def _decoded(g):
    tables = BinTables(PAPER_BINS, _depth_range(g))
    s1 = decode_bins(tables, _t(g, "pose_logits"), _t(g, "depth_logits"), _t(g, "trans_logits"), _t(g, "K_roi"))
    s2 = decode_final(s1["R_init"], s1["persp_init"], _t(g, "pose_res"), _t(g, "depth_res"), _t(g, "trans_res"),
                      _t(g, "K_roi"))
    return s1, s2


def test_golden_rotation_labels(golden):
    g = golden
    labels = torch.stack([T.rotation_labels(R, _t(g, "vertices"), _t(g, "sym_R"), _t(g, "sym_t"),
                                            float(g["diameter"]), PAPER_BINS.n_side) for R in _t(g, "R_gt")])
    ref = torch.from_numpy(g["rot_labels"])
    assert labels.shape == ref.shape == (6, PAPER_BINS.n_rot)
    torch.testing.assert_close(labels, ref, rtol=REL, atol=0.0)
    assert torch.equal(labels.argmax(1), ref.argmax(1))


def test_golden_decoding(golden):
    _, s2 = _decoded(golden)
    for ours, key in ((s2["R"], "R_final"), (s2["t"], "t_final")):
        ref = torch.from_numpy(golden[key])
        assert float((ours - ref).abs().max()) <= REL * float(ref.abs().max()), key


@pytest.fixture(scope="module")
def our_losses(golden):
    g = golden
    s1, s2 = _decoded(g)
    out = {**s1, **s2, "pose_logits": _t(g, "pose_logits"), "depth_logits": _t(g, "depth_logits"),
           "trans_logits": _t(g, "trans_logits"), "mask_logit": _t(g, "mask_logit"),
           **{k: _t(g, k) for k in ("pose_res", "depth_res", "trans_res")}}
    n = len(g["R_gt"])
    batch = {"R": _t(g, "R_gt"), "t": _t(g, "t_gt"), "K_roi": _t(g, "K_roi"), "rot_labels": _t(g, "rot_labels"),
             "mask": _t(g, "mask_gt"), "vertices": _t(g, "vertices").expand(n, -1, -1),
             "sym_R": _t(g, "sym_R").expand(n, -1, -1, -1), "sym_t": _t(g, "sym_t").expand(n, -1, -1)}
    return L.mrcnet_losses(out, batch, PAPER_BINS, _depth_range(g))


@pytest.mark.parametrize("name", sorted(LOSS_NAMES))
def test_golden_weighted_loss(golden, our_losses, name):
    ref = float(golden[LOSS_NAMES[name]])
    assert ref > 0
    assert abs(float(our_losses[name]) / ref - 1.0) <= REL, (name, float(our_losses[name]), ref)


def test_golden_total_is_the_sum_of_the_seven(golden, our_losses):
    ref = sum(float(golden[v]) for v in LOSS_NAMES.values())
    assert abs(float(our_losses["total"]) / ref - 1.0) <= REL

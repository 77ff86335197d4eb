"""Losses and trainer: loss definitions, schedule, sampler, over-fitting, resume, torchrun (gloo)."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcnet.data import bop
from mrcnet.geometry import translation_to_persp
from mrcnet.model import build_model, get_config
from mrcnet.runtime.geometry import quat_to_matrix
from mrcnet.train import losses as L
from mrcnet.train import targets as T
from mrcnet.train.trainer import BlockSampler, TrainConfig, lr_factor, param_groups, train

from train_fixtures import write_tiny_split

from conftest import ROOT  # noqa: E402
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_split(tmp_path_factory.mktemp("tiny"), n_images=4, n_objects=3, seed=0)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["network"]


def _assert_same_weights(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


# ------------------------------------------------------------------------------------ losses
def test_focal_losses_prefer_the_labels():
    labels = torch.zeros(2, 10)
    labels[0, 3] = labels[1, 7] = 1.0
    good, bad = labels * 8 - 4, (1 - labels) * 8 - 4
    assert (L.sigmoid_focal_loss(labels, good) < L.sigmoid_focal_loss(labels, bad) / 100).all()
    assert (L.softmax_focal_loss(labels, good) < L.softmax_focal_loss(labels, bad) / 100).all()
    # positive / negative weights 10 / 0.1
    one, x = torch.ones(1, 1), torch.zeros(1, 1)
    torch.testing.assert_close(L.sigmoid_focal_loss(one, x), torch.tensor([10 * 0.25 * np.log(2)], dtype=torch.float32))
    torch.testing.assert_close(L.sigmoid_focal_loss(0 * one, x), torch.tensor([0.1 * 0.25 * np.log(2)], dtype=torch.float32))


def test_smooth_l1_and_vertex_error():
    d = torch.tensor([[0.0, 0, 0], [0.6, 0.8, 0], [3.0, 4.0, 0]])
    torch.testing.assert_close(L.smooth_l1_norm(d), torch.tensor([0.5, 1.0, 5.0]))
    R = torch.from_numpy(quat_to_matrix(np.array([0.9, 0.1, 0.3, -0.2]))).float()[None]
    v = torch.randn(1, 50, 3) * 30
    torch.testing.assert_close(L.vertex_rotation_error(R, R, v), torch.tensor([0.5]))


def _fake_outputs(batch, bins, R_pred, depth_range):
    """Network outputs whose argmax bins and residuals decode exactly to the GT translation."""
    B = len(batch["R"])
    dxy, d = translation_to_persp(batch["t"], batch["K_roi"])
    cells, dc = T.cell_table(bins), T.depth_bin_table(bins, depth_range)
    ix, iy = (cells[None] - dxy[:, :1]).abs().argmin(1), (cells[None] - dxy[:, 1:]).abs().argmin(1)
    idd = (dc[None] - d[:, None]).abs().argmin(1)
    return {
        "pose_logits": torch.zeros(B, bins.n_rot), "depth_logits": torch.zeros(B, bins.n_depth),
        "trans_logits": torch.zeros(B, bins.n_cell_bins), "mask_logit": torch.zeros(B, 1, 64, 64),
        "cell_id": iy * bins.n_cells + ix, "depth_id": idd, "R": R_pred,
        "trans_res": dxy - torch.stack([cells[ix], cells[iy]], -1), "depth_res": (d - dc[idd])[:, None],
    }


def test_losses_are_symmetry_aware_and_relative_to_stage1_bins():
    bins = get_config("small").bins
    depth_range = (0.05, 1.7)
    S = np.diag([-1.0, -1.0, 1.0])
    info = bop.ModelInfo(diameter=100.0, symmetries_discrete=[np.block([[S, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])])
    sR, st = (torch.from_numpy(a) for a in T.symmetry_tensors(info))
    R = torch.from_numpy(quat_to_matrix(np.array([[0.9, 0.1, 0.3, -0.2], [0.2, -0.7, 0.1, 0.4]]))).float()
    K = torch.tensor([[400.0, 0, 100], [0, 400, 140], [0, 0, 1]]).expand(2, 3, 3)
    batch = {"R": R, "t": torch.tensor([[10.0, -20, 600], [-30, 5, 900]]), "K_roi": K,
             "rot_labels": torch.zeros(2, bins.n_rot), "mask": torch.zeros(2, 64, 64),
             "vertices": torch.randn(2, 80, 3) * 30, "vertices_mask": torch.ones(2, 80, dtype=torch.bool),
             "sym_R": sR.expand(2, *sR.shape), "sym_t": st.expand(2, *st.shape), "sym_mask": torch.ones(2, 2, dtype=torch.bool)}
    Rs = R @ torch.from_numpy(S).float()
    out = _fake_outputs(batch, bins, Rs, depth_range)
    res = L.mrcnet_losses(out, batch, bins, depth_range)
    # the symmetric pose is a perfect rotation; the decoded translation is exact
    assert abs(res["rot_reg"].item() - 0.5 * L.LossWeights().rot_reg) < 1e-4
    assert abs(res["xy_reg"].item() - 0.5) < 1e-2 and abs(res["depth_reg"].item() - 0.2 * 0.5) < 1e-2
    # without the symmetry the same prediction is far off
    nosym = dict(batch, sym_mask=torch.tensor([[True, False]] * 2))
    assert L.mrcnet_losses(out, nosym, bins, depth_range)["rot_reg"].item() > 10
    # residuals are relative to stage 1's argmax bins: moving the argmax cell moves the xy target
    out2 = dict(out, cell_id=out["cell_id"] + 1)
    assert L.mrcnet_losses(out2, batch, bins, depth_range)["xy_reg"].item() > 1.0
    assert set(res) == set(L.LossWeights.__dataclass_fields__) | {"total"}


# --------------------------------------------------------------------------------- trainer
def test_lr_schedule_and_param_groups():
    assert lr_factor(0, 100, 10, 2e-4, 5e-6) == pytest.approx(5e-6 / 2e-4)
    assert lr_factor(10, 100, 10, 2e-4, 5e-6) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 2e-4, 5e-6) == pytest.approx(5e-6 / 2e-4)
    assert lr_factor(55, 100, 10, 2e-4, 5e-6) == pytest.approx((5e-6 + (2e-4 - 5e-6) / 2) / 2e-4)
    m = build_model(2, (0.05, 1.7), "small")
    decay, rest = param_groups(m, 1e-3)
    names = {id(p): n for n, p in m.named_parameters()}
    dn, rn = {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in rest["params"]}
    assert not dn & rn and len(dn) + len(rn) == len(names)
    assert all(n.endswith(("weight", "weights")) for n in dn)
    assert "backbone.decoder.conv_last.weights" in dn and "classifier.pose_clf.linear1.weight" in dn
    assert all(not n.endswith("weights") for n in rn) and "classifier.pose_clf.linear1.bias" in rn
    assert any(".norm." in n or "bn" in n for n in rn)


def test_block_sampler_splits_global_batches():
    ds = list(range(13))
    one = list(BlockSampler(ds, 4, 1, 0, seed=3))
    r0, r1 = list(BlockSampler(ds, 2, 2, 0, seed=3)), list(BlockSampler(ds, 2, 2, 1, seed=3))
    assert len(one) == 12 and len(set(one)) == 12
    for s in range(3):
        assert one[4 * s: 4 * s + 4] == r0[2 * s: 2 * s + 2] + r1[2 * s: 2 * s + 2]
    sm = BlockSampler(ds, 4, 1, 0, seed=3)
    sm.set_epoch(1)
    e1 = list(sm)
    assert all(i >= 13 for i in e1) and [i - 13 for i in e1] != one
    sm.set_start(2)
    assert list(sm) == e1[8:]


def _n_instances(root):
    from mrcnet.train.dataset import TrainingSamples

    return len(TrainingSamples(root, get_config("small").bins, (0.05, 1.7), augment=False))


def _cfg(data, out, **kw):
    base = TrainConfig(data=str(data), out=str(out), preset="small", epochs=1, batch_size=2, warmup=1, workers=0,
                       ckpt_every=1000, progress=False, color_prob=0.8, bg_prob=0.5)
    return replace(base, **kw)


def test_optimizer_is_built_before_the_renderer(tiny, tmp_path, monkeypatch):
    # the optimizer imports torch._dynamo (Triton's LLVM), which crashes after Mesa's llvmpipe loaded
    # its own LLVM: the trainer must build the optimizer before it opens a rendering context
    import mrcnet.train.trainer as trainer_mod

    order = []
    real_adamw, real_renderer = torch.optim.AdamW, trainer_mod.StageTwoRenderer

    def adamw(*a, **k):
        order.append("optimizer")
        return real_adamw(*a, **k)

    def renderer(*a, **k):
        order.append("renderer")
        return real_renderer(*a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    monkeypatch.setattr(trainer_mod, "StageTwoRenderer", renderer)
    train(_cfg(tiny, tmp_path / "order", max_steps=1))
    assert order == ["optimizer", "renderer"]


@pytest.mark.slow
def test_loss_decreases_when_overfitting(tiny, tmp_path):
    torch.set_num_threads(2)
    # 8 instances, the same crops every epoch (no augmentation), a high learning rate: over 16 steps
    # the loss must fall
    res = train(_cfg(tiny, tmp_path / "fit", epochs=8, batch_size=4, lr=1e-3, min_lr=5e-4, warmup=0,
                     augment=False))
    tot = [h["total"] for h in res["history"]]
    assert len(tot) == 8 * (_n_instances(tiny) // 4) >= 16
    assert np.mean(tot[-4:]) < 0.7 * np.mean(tot[:4]), tot
    assert (tmp_path / "fit" / "model.pth").is_file() and (tmp_path / "fit" / "loss_curves.png").is_file()
    from mrcnet.checkpoint import load_checkpoint

    m = load_checkpoint(tmp_path / "fit" / "model.pth")
    assert m.meta["fov_variant"] == "training" and m.meta["obj_ids"] == [1, 2, 3]


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_weights(tiny, tmp_path):
    torch.set_num_threads(2)
    # batch 4, 2 epochs; interrupted one step before the end (mid-epoch 2)
    total = 2 * (_n_instances(tiny) // 4)
    assert total >= 4
    full = train(_cfg(tiny, tmp_path / "full", epochs=2, batch_size=4, ckpt_every=1))
    assert full["step"] == total
    part = train(_cfg(tiny, tmp_path / "part", epochs=2, batch_size=4, ckpt_every=1, max_steps=total - 1))
    assert part["step"] == total - 1 and not (tmp_path / "part" / "model.pth").exists()
    again = train(_cfg(tiny, tmp_path / "part", epochs=2, batch_size=4, ckpt_every=1, resume=True))
    assert again["step"] == total and len(again["history"]) == total
    _assert_same_weights(_weights(tmp_path / "full" / "model.pth"), _weights(tmp_path / "part" / "model.pth"),
                         rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch_size"):
        train(_cfg(tiny, tmp_path / "part", epochs=2, batch_size=2, resume=True))


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one(tiny, tmp_path):
    """2 processes x batch 1 (BatchNorm per process) == 1 process x batch 2 with BatchNorm groups of 1."""
    common = ["--data", str(tiny), "--preset", "small", "--epochs", "1", "--warmup", "1", "--workers", "0",
              "--max-steps", "2", "--quiet", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([str(VENV_BIN / "mrcnet-train"), *common, "--batch-size", "2", "--bn-group", "1",
                          "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mrcnet.train.cli",
                          *common, "--batch-size", "1", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one" / "last.pth"), _weights(tmp_path / "two" / "last.pth")
    # All-reduce sums in another order than one process: float rounding, which Adam's m / sqrt(v)
    # turns into up to a whole step (lr) for the few parameters whose gradient is ~0. So: 99.99 % of
    # the elements within 1e-6 (rtol 1e-4), and every element within Adam's largest possible
    # difference, twice the sum of the two steps' learning rates (5e-6 then 2e-4).
    _assert_same_weights(a, b, rtol=0, atol=2 * (5e-6 + 2e-4))
    close = sum(int(torch.isclose(a[k], b[k], rtol=1e-4, atol=1e-6).sum()) for k in a)
    assert close >= 0.9999 * sum(a[k].numel() for k in a)
    init = build_model(3, (0.05, 1.7), "small").state_dict()
    assert any(not torch.allclose(a[k], init[k]) for k in a), "training did not change the weights"


def test_whole_images_cuts_at_an_image_boundary():
    from mrcnet.train.trainer import _whole_images

    items = [((0, 0), 0), ((0, 0), 1), ((0, 1), 0), ((0, 1), 1), ((0, 1), 2), ((0, 2), 0)]
    assert _whole_images(items, 1) == items[:2]
    assert _whole_images(items, 3) == items[:5]
    assert _whole_images(items, 100) == items


def _val_samples(tiny):
    from mrcnet.train.dataset import TrainingSamples

    cfg = get_config("small")
    return TrainingSamples(tiny, cfg.bins, (0.05, 1.7), augment=False, label_cache=0, size=cfg.crop_size)


def test_validation_ar_scores_ground_truth_as_one_and_far_poses_as_zero(tiny, tmp_path):
    from mrcnet.train.trainer import _bop_ar

    ds = _val_samples(tiny)
    items = ds.items
    gt = [ds.ds.image(*key).instances[g] for key, g in items]
    rows = [{"scene_id": k[0], "im_id": k[1], "obj_id": i.obj_id, "score": 1.0, "R": i.R, "t": i.t}
            for (k, _), i in zip(items, gt)]
    rep = _bop_ar(ds, items, rows, tmp_path / "gt")
    assert rep["AR_MSSD"] == 1.0 and rep["AR_MSPD"] == 1.0 and rep["AR_VSD"] > 0.99, rep
    assert (tmp_path / "gt" / "estimates.csv").is_file() and (tmp_path / "gt" / "targets.json").is_file()
    # every estimate one diameter too far: no MSSD / MSPD / VSD recall at any threshold
    far = [dict(r, t=r["t"] + np.array([0.0, 0.0, ds.objects[r["obj_id"]].diameter])) for r in rows]
    rep = _bop_ar(ds, items, far, tmp_path / "far")
    assert rep["AR_MSSD"] == 0.0 and rep["AR"] < 0.1, rep


def test_validation_reports_errors_and_ar_per_object(tiny, tmp_path):
    from mrcnet.train.trainer import StageTwoRenderer, validate

    torch.manual_seed(0)
    ds = _val_samples(tiny)
    model = build_model(3, (0.05, 1.7), "small").eval()
    r = StageTwoRenderer(ds.ds.models_dir, ds.obj_ids, model.cfg.crop_size)
    with torch.no_grad():
        val = validate(model, r, ds, max_instances=3, ar_dir=tmp_path / "val")
    assert val["all"]["n"] >= 3 and set(val) >= {"all"}
    assert sum(v["n"] for k, v in val.items() if k != "all") == val["all"]["n"]
    for v in val.values():
        assert 0.0 <= v["rot_err_deg"] <= 180.0 and v["trans_err_mm"] >= 0.0
        for k in ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD"):
            assert 0.0 <= v[k] <= 1.0, (k, v)
    assert (tmp_path / "val" / "estimates.csv").read_text().count("\n") == val["all"]["n"] + 1


def test_train_speed_benchmark_times_the_steps_after_warmup(tiny, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_speed

    r = train_speed.measure("small", 2, 2, 1, tiny, tmp_path / "run", device="cpu", workers=0)
    assert r["steps_timed"] == 2 and r["crop_size"] == 128 and r["device"] == "cpu"
    assert 0 < r["steps_per_s"] < 1e3 and abs(r["samples_per_s"] - 2 * r["steps_per_s"]) < 1e-9
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    wall = [h["wall_s"] for h in hist]
    assert len(wall) == 3 and wall == sorted(wall) and wall[0] > 0
    assert abs(r["s_per_step"] - (wall[2] - wall[0]) / 2) < 1e-6

"""Model structure: group BatchNorm batching invariance, presets, stage split, layers, torch geometry."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrcnet import geometry as tg
from mrcnet.model import STAGE2_FEATURES, CondConv2d, GroupBatchNorm2d, build_model, get_config
from mrcnet.runtime import geometry as ng

N_OBJ = 3
DEPTH = (0.05, 1.7)


S = get_config("small").crop_size  # 128


def _inputs(n, seed=0, n_obj=N_OBJ, size=S):
    g = torch.Generator().manual_seed(seed)
    crops = torch.rand(n, 4, size, size, generator=g)
    render = torch.rand(n, 4, size, size, generator=g)
    obj = torch.randint(0, n_obj, (n // 4,), generator=g).repeat_interleave(4)
    fov = (torch.rand(n, 3, generator=g) - 0.5) * 0.1 + torch.tensor([0.0, 0.0, 0.3])
    f = 500 + 400 * torch.rand(n, generator=g)
    K = torch.zeros(n, 3, 3)
    K[:, 0, 0], K[:, 1, 1], K[:, 2, 2] = f, f * 1.01, 1.0
    K[:, 0, 2], K[:, 1, 2] = size / 2 + torch.rand(n, generator=g), size / 2 - 1 + torch.rand(n, generator=g)
    return dict(crops=crops, obj_index=obj, fov=fov, K_roi=K, render=render)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model(N_OBJ, DEPTH, "small").eval()


def _close(a, b, tol=1e-4):
    a, b = a.detach().double(), b.detach().double()
    assert (a - b).abs().max() <= tol * max(b.abs().max().item(), 1e-6)


# ----------------------------------------------------------------------------- BatchNorm
def test_group_batchnorm_matches_batchnorm_per_group():
    torch.manual_seed(0)
    x = torch.randn(12, 8, 5, 7) * 3 + 1
    bn = GroupBatchNorm2d(8, group_size=4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ref = torch.nn.BatchNorm2d(8, track_running_stats=False)
    ref.load_state_dict(bn.state_dict())
    y = bn(x)
    for g in range(3):
        _close(y[4 * g:4 * g + 4], ref(x[4 * g:4 * g + 4]), 1e-5)
    bn.group_size = 0  # whole batch
    _close(bn(x), ref(x), 1e-5)
    bn.group_size = 1
    _close(bn(x)[5:6], ref(x[5:6]), 1e-5)


def test_set_bn_group(small):
    small.set_bn_group(1)
    assert all(m.group_size == 1 for m in small.modules() if isinstance(m, GroupBatchNorm2d))
    small.set_bn_group(4)
    assert small.bn_group == 4


def test_batching_detections_equals_one_at_a_time(small):
    """3 detections x 4 crops in one batch give the numbers of 3 separate runs (per-group BN)."""
    inp = _inputs(12, seed=1)
    with torch.no_grad():
        batched = small(**inp)
        single = [small(**{k: v[4 * i:4 * i + 4] for k, v in inp.items()}) for i in range(3)]
    for key in ("pose_logits", "depth_logits", "trans_logits", "feat_x16", "reg_map", "pose_res", "R", "t"):
        _close(batched[key], torch.cat([s[key] for s in single]), 1e-4)
    for key in ("pose_id", "depth_id", "cell_id"):
        assert torch.equal(batched[key], torch.cat([s[key] for s in single]))


# ------------------------------------------------------------------------------ presets
def test_small_preset_shapes(small):
    cfg = get_config("small")
    b = cfg.bins
    inp = _inputs(4)
    with torch.no_grad():
        out = small(**inp)
    e, q = cfg.embed_channels, S // 4  # the 1/4 map
    assert S == 128
    expected = {
        "emb": (4, e, q, q), "mask_logit": (4, 1, q, q), "mask_logit_synt": (4, 1, q, q),
        "pose_logits": (4, b.n_rot), "depth_logits": (4, b.n_depth), "trans_logits": (4, b.n_cells**2),
        "pose_id": (4,), "depth_id": (4,), "cell_id": (4,), "rot_score": (4,), "depth_score": (4,),
        "quat_init": (4, 4), "R_init": (4, 3, 3), "persp_init": (4, 3), "t_init": (4, 3),
        "feat_x4": (4, e + 1, q, q), "feat_x8": (4, cfg.down_channels, q // 2, q // 2),
        "feat_x16": (4, cfg.down_channels, q // 4, q // 4), "reg_x8": (4, cfg.reg_channels[0], q // 2, q // 2),
        "reg_map": (4, cfg.reg_channels[2] * cfg.aspp_factor, q // 4, q // 4),
        "pose_res": (4, 6), "depth_res": (4, 1), "trans_res": (4, 2), "R": (4, 3, 3), "persp": (4, 3), "t": (4, 3),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert b.n_rot == 576 and b.n_depth == 100 and b.n_cells == 32
    assert out["pose_id"].dtype == torch.int64
    R = out["R"].double()
    _close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4, 3, 3), 1e-5)


def test_paper_preset_parameter_count():
    with torch.device("meta"):
        m = build_model(30, DEPTH, "paper")
    assert sum(p.numel() for p in m.parameters()) == 244_845_903 - 64 * 3 * 49 - 2 * 64  # minus the unused stem
    with torch.device("meta"):
        s = build_model(30, DEPTH, "small")
    assert sum(p.numel() for p in s.parameters()) < 0.1 * 244_845_903


def test_stage1_stage2_equal_forward(small):
    inp = _inputs(8, seed=2)
    with torch.no_grad():
        full = small(**inp)
        s1 = small.stage1(inp["crops"], inp["obj_index"], inp["fov"], inp["K_roi"])
        s2 = small.stage2(inp["render"], inp["obj_index"], inp["fov"], inp["K_roi"], **{k: s1[k] for k in STAGE2_FEATURES})
    for k, v in {**s1, **s2}.items():
        assert torch.equal(v, full[k]), k


def test_small_preset_trains_one_step():
    torch.manual_seed(0)
    m = build_model(2, DEPTH, "small", bn_group=0).train()
    inp = _inputs(4, seed=3, n_obj=2)
    out = m(**inp)
    keys = ("pose_logits", "depth_logits", "trans_logits", "pose_res", "depth_res", "trans_res", "mask_logit")
    loss = sum(out[k].float().square().mean() for k in keys)
    loss.backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []


# ------------------------------------------------------------------------------- layers
@pytest.mark.parametrize("impl", ["matmul", "conv", "auto"])
@pytest.mark.parametrize("k", [1, 3])
def test_condconv_matches_per_sample_conv(k, impl):
    torch.manual_seed(0)
    conv = CondConv2d(3, 5, 7, k)
    conv.impl = impl
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(4, 5, 6, 9)
    obj = torch.tensor([2, 0, 2, 1])
    y = conv(x, obj)
    for i in range(4):
        o = int(obj[i])
        ref = F.conv2d(x[i:i + 1], conv.weights[o], conv.bias[o].flatten(), padding=k // 2)
        _close(y[i:i + 1], ref, 1e-5)


@pytest.mark.parametrize("shape,patch", [((2, 3, 5, 7), 3), ((3, 8, 9, 6), 5), ((1, 4, 4, 4), 11), ((2, 6, 8, 8), 7)])
def test_correlation_matmul_equals_slices(shape, patch):
    """The export form of the correlation (batched MatMul + band slice) gives the per-displacement
    numbers, including maps narrower than the patch and odd sizes."""
    from mrcnet.model import correlation

    g = torch.Generator().manual_seed(sum(shape) + patch)
    a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    ref = correlation(a, b, patch, "slices")
    out = correlation(a, b, patch, "matmul")
    assert out.shape == (shape[0], patch * patch, *shape[2:])
    _close(out, ref, 1e-5)
    assert torch.equal(correlation(a, b, patch), ref)  # eager "auto" is the slices form
    with pytest.raises(ValueError, match="'unrolled'"):
        correlation(a, b, patch, "unrolled")


def test_correlation_matmul_golden():
    """The export form reproduces the official correlation (patch 11) of the golden data."""
    from mrcnet.model import correlation
    from mrcnet.testing import load_golden, max_rel_error

    z = load_golden("golden_model_n2.npz")
    a, b = torch.from_numpy(z["corr_in1"]), torch.from_numpy(z["corr_in2"])
    out = correlation(a, b, 11, "matmul").reshape(z["corr_out"].shape).numpy()
    assert max_rel_error(out, z["corr_out"]) < 1e-5


# ----------------------------------------------------------------------------- geometry
def test_torch_geometry_matches_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(7, 4))
    _close(tg.quat_to_matrix(torch.from_numpy(q)), torch.from_numpy(ng.quat_to_matrix(q)), 1e-9)
    x6 = rng.normal(size=(7, 6))
    _close(tg.rot6d_to_matrix(torch.from_numpy(x6)), torch.from_numpy(ng.rot6d_to_matrix(x6)), 1e-9)
    dxy, d = rng.uniform(-0.5, 0.5, (7, 2)), rng.uniform(0.1, 2, 7)
    K = np.tile(np.array([[600.0, 0, 130], [0, 610, 125], [0, 0, 1]]), (7, 1, 1))
    t = tg.persp_to_translation(torch.from_numpy(dxy), torch.from_numpy(d), torch.from_numpy(K))
    _close(t, torch.from_numpy(ng.persp_to_translation(dxy, d, K)), 1e-9)
    dxy2, d2 = tg.translation_to_persp(t, torch.from_numpy(K))
    _close(dxy2, torch.from_numpy(dxy), 1e-9)
    _close(d2, torch.from_numpy(d), 1e-9)


def test_decode_bins_cell_order_and_depth():
    tables = tg.BinTables(tg.BinSpec(2, 10, 8), (0.1, 1.1))
    n = 8
    pose = torch.zeros(1, tables.bins.n_rot)
    pose[0, 5] = 1
    depth = torch.zeros(1, 10)
    depth[0, 3] = 1
    cells = torch.zeros(1, n * n)
    cells[0, 2 * n + 6] = 1  # iy = 2, ix = 6
    K = torch.tensor([[[500.0, 0, 128], [0, 500, 128], [0, 0, 1]]])
    out = tg.decode_bins(tables, pose, depth, cells, K)
    np.testing.assert_allclose(out["persp_init"][0].numpy(), [ng.cell_centers(n)[6], ng.cell_centers(n)[2], 0.45], atol=1e-6)
    np.testing.assert_allclose(out["quat_init"][0].numpy(), ng.rotation_prototypes(2)[5], atol=1e-6)
    np.testing.assert_allclose(out["t_init"][0, 2].item(), 0.45 * 500, rtol=1e-6)


def test_tta_select_matches_numpy():
    rng = np.random.default_rng(1)
    G = 3
    R = ng.quat_to_matrix(rng.normal(size=(G * 4, 4)))
    t = rng.normal(size=(G * 4, 3)) * 100
    rs, ds = rng.normal(size=G * 4), rng.normal(size=G * 4)
    Rz = np.tile(ng.tta_rotations(4), (G, 1, 1))
    Rn, tn, sn = ng.tta_select(R.reshape(G, 4, 3, 3), t.reshape(G, 4, 3), rs.reshape(G, 4), ds.reshape(G, 4), ng.tta_rotations(4))
    T = torch.from_numpy
    Rt, tt, st = tg.tta_select(T(R), T(t), T(rs), T(ds), T(Rz))
    np.testing.assert_allclose(Rt.numpy(), Rn, atol=1e-9)
    np.testing.assert_allclose(tt.numpy(), tn, atol=1e-9)
    np.testing.assert_allclose(st.numpy(), sn, atol=1e-12)


def test_normalised_depth_is_crop_size_independent():
    """d refers to a 256-px crop: the same physical crop at 128 px (K_roi halved) gives the same d,
    so a dataset preset's depth range means the same distances for every model preset."""
    rng = np.random.default_rng(1)
    t = np.stack([rng.uniform(-50, 50, 5), rng.uniform(-50, 50, 5), rng.uniform(300, 900, 5)], 1)
    K256 = np.tile(np.array([[600.0, 0, 130], [0, 610, 125], [0, 0, 1]]), (5, 1, 1))
    S = np.diag([0.5, 0.5, 1.0])
    K128 = S @ K256
    dxy_a, d_a = ng.translation_to_persp(t, K256, 256)
    dxy_b, d_b = ng.translation_to_persp(t, K128, 128)
    np.testing.assert_allclose(d_a, d_b, rtol=1e-12)
    np.testing.assert_allclose(dxy_a, dxy_b, atol=1e-12)
    np.testing.assert_allclose(d_a, t[:, 2] / 600.0)  # docs/MODEL.md §3: d = t_z / fx_roi at 256 px
    np.testing.assert_allclose(ng.persp_to_translation(dxy_b, d_b, K128, 128), t, rtol=1e-12)
    tt = tg.persp_to_translation(torch.from_numpy(dxy_b), torch.from_numpy(d_b), torch.from_numpy(K128), 128)
    _close(tt, torch.from_numpy(t), 1e-9)
    _close(tg.translation_to_persp(tt, torch.from_numpy(K128), 128)[1], torch.from_numpy(d_b), 1e-9)

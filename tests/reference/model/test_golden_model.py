"""The model with deterministic official weights reproduces the official network's outputs
(tests/data/golden_model_n2.npz, tests/data/README.md): floats within 1e-3 of each tensor's largest
magnitude, integers exactly."""
import numpy as np
import pytest
import torch

from mrcnet.model import correlation
from mrcnet.runtime.geometry import rotation_prototypes
from mrcnet.testing import GOLDEN_OUTPUTS, golden_inputs, golden_model, golden_view, load_golden, max_rel_error

TOL = 1e-3


@pytest.fixture(scope="module")
def golden():
    return load_golden("golden_model_n2.npz")


@pytest.fixture(scope="module")
def model_out(golden):
    torch.manual_seed(0)
    model = golden_model(2)
    inp = golden_inputs(golden)
    with torch.no_grad():
        s1 = model.stage1(inp["crops"], inp["obj_index"], inp["fov"], inp["K_roi"])
        s2 = model.stage2(inp["render"], inp["obj_index"], inp["fov"], inp["K_roi"],
                          **{k: s1[k] for k in ("feat_x4", "feat_x8", "feat_x16", "R_init", "t_init", "persp_init")})
    return {**s1, **s2}


@pytest.mark.parametrize("key", list(GOLDEN_OUTPUTS))
def test_golden_model_output(golden, model_out, key):
    expected = golden[key]
    actual = golden_view(model_out, key)
    assert actual.shape == expected.shape, (key, actual.shape, expected.shape)
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(actual, expected)
    else:
        assert max_rel_error(actual, expected) < TOL


def test_golden_model_margins(golden, model_out):
    """Our top-1 minus top-2 logits agree with the official margins (the argmaxes are not a tie)."""
    for head in ("pose", "depth", "trans"):
        top2 = model_out[f"{head}_logits"].topk(2, dim=1).values
        margin = (top2[:, 0] - top2[:, 1]).numpy()
        np.testing.assert_allclose(margin, golden[f"{head}_margin"], atol=TOL * np.abs(golden[f"{head}_logits"]).max())


def test_golden_stage1_export_path(golden, model_out):
    """The export implementation of the per-object convolutions (gather + matmul, no dynamic-weight
    conv) gives the golden stage-1 numbers too."""
    from mrcnet.model import CondConv2d

    model = golden_model(2)
    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.impl = "matmul"
    inp = golden_inputs(golden)
    with torch.no_grad():
        s1 = model.stage1(inp["crops"], inp["obj_index"], inp["fov"], inp["K_roi"])
    for key in ("emb_real", "mask_real", "pose_logits", "depth_logits", "trans_logits"):
        assert max_rel_error(golden_view(s1, key), golden[key]) < TOL, key
    for key in ("pose_id", "depth_id"):
        np.testing.assert_array_equal(golden_view(s1, key), golden[key])


def test_golden_correlation(golden):
    a, b = torch.from_numpy(golden["corr_in1"]), torch.from_numpy(golden["corr_in2"])
    out = correlation(a, b, 11).reshape(golden["corr_out"].shape).numpy()
    assert max_rel_error(out, golden["corr_out"]) < 1e-5


def test_golden_prototypes(golden):
    np.testing.assert_allclose(rotation_prototypes(4), golden["prototypes"], atol=1e-6)
    from mrcnet.geometry import BinTables, PAPER_BINS

    tables = BinTables(PAPER_BINS, (0.05, 1.7))
    np.testing.assert_allclose(tables.prototypes.numpy(), golden["prototypes"], atol=1e-6)

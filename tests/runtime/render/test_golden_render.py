"""Parity of our renderer with the official PyTorch3D renderings (compat golden_render.npz).

Golden arrays: rgb (4,3,256,256) CHW in [0,1], depth (4,1,256,256) mm with -1 on the background,
mask and bbox_map (4,1,256,256); poses R (4,3,3), t (4,3) mm, cameras K (4,3,3).
"""
import numpy as np
import pytest

from mrcnet.runtime.render import Renderer, load_mesh

from conftest import DATA


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "golden_render.npz")


@pytest.fixture(scope="module")
def ours(golden):
    mesh = load_mesh(DATA / "golden_render_model.ply")
    r = Renderer()
    r.add_object(1, mesh)
    out = r.render([1] * 4, golden["R"], golden["t"], golden["K"])
    yield out, mesh
    r.release()


def _box(a):
    ys, xs = np.nonzero(a)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


@pytest.mark.parametrize("view", range(4))
def test_golden_render_parity(golden, ours, view):
    out, _ = ours
    g_mask = golden["mask"][view, 0] > 0
    np.testing.assert_array_equal(g_mask, golden["depth"][view, 0] > 0)
    mask = out.mask[view]
    iou = (mask & g_mask).sum() / (mask | g_mask).sum()
    assert iou >= 0.99, f"view {view}: mask IoU {iou:.4f}"
    both = mask & g_mask
    d = np.abs(out.depth[view][both] - golden["depth"][view, 0][both])
    assert np.percentile(d, 99) <= 0.1, f"view {view}: depth p99 {np.percentile(d, 99):.4f} mm"
    rgb = np.abs(out.rgb[view][both] - golden["rgb"][view].transpose(1, 2, 0)[both])
    assert rgb.mean() <= 2 / 255, f"view {view}: RGB MAD {rgb.mean() * 255:.3f}/255"
    np.testing.assert_array_equal(out.depth[view][~mask], 0)
    # box maps equal up to one pixel row / column on each side
    g_map = golden["bbox_map"][view, 0] > 0
    assert set(np.unique(out.box_map[view])) <= {0.0, 1.0}
    assert np.abs(_box(out.box_map[view] > 0) - _box(g_map)).max() <= 1
    assert (out.box_map[view] > 0).sum() == pytest.approx(g_map.sum(), rel=0.03)


def test_golden_render_mask_boxes_are_the_projected_vertices_extent(golden, ours):
    out, mesh = ours
    for view in range(4):
        X = mesh.vertices.astype(np.float64) @ golden["R"][view].T.astype(np.float64) + golden["t"][view]
        uv = X @ golden["K"][view].T.astype(np.float64)
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        want = [np.ceil(u.min() - 0.5), np.ceil(v.min() - 0.5), np.ceil(u.max() - 0.5) - 1, np.ceil(v.max() - 0.5) - 1]
        np.testing.assert_array_equal(_box(out.mask[view]), want, err_msg=f"view {view}")
        np.testing.assert_array_equal(_box(out.mask[view]), _box(golden["mask"][view, 0] > 0))


def test_golden_render_brightest_pixel(golden, ours):
    out, _ = ours
    assert abs(out.rgb.max() - golden["rgb"].max()) < 1 / 255
    assert abs(out.rgb.max() - 0.72) < 1 / 255

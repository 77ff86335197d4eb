"""Our torch-free preprocessing against the official inference preprocessing (golden data)."""
import numpy as np
import pytest

from mrcnet.runtime import preprocess as P
from mrcnet.runtime.geometry import rotation_prototypes

from conftest import DATA


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "golden_preproc.npz")


@pytest.mark.parametrize("case", [0, 1, 2])
def test_golden_preproc_case(golden, case):
    g = {k[len(f"case{case}_"):]: golden[k] for k in golden.files if k.startswith(f"case{case}_")}
    out = P.prepare_detection(golden["image_bgr"], golden["cam_K"], g["bbox_xyxy"], fov_variant="inference")
    np.testing.assert_allclose(out.Rz, g["Rz"], atol=1e-6)
    np.testing.assert_allclose(out.crops[:, :3], g["roi_rgb"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(out.crops[:, 3:], g["bbox_map"])
    np.testing.assert_allclose(out.box_loc, g["bbox_loc"], atol=1e-5)
    np.testing.assert_allclose(out.K_roi, g["roi_camK"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out.fov, g["fov"], atol=1e-5)


def test_golden_prototypes():
    g = np.load(DATA / "golden_model_n2.npz")["prototypes"]
    np.testing.assert_allclose(rotation_prototypes(4), g, atol=2e-6)


def test_training_fov_uses_principal_point(golden):
    K = golden["cam_K"].astype(np.float64)
    box = golden["case0_bbox_xyxy"]
    inf = P.prepare_detection(golden["image_bgr"], K, box, fov_variant="inference")
    tr = P.prepare_detection(golden["image_bgr"], K, box, fov_variant="training")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    shift = np.array([(cx - K[0, 2]) / K[0, 0], (cy - K[1, 2]) / K[1, 1]])
    np.testing.assert_allclose(tr.fov[:, :2] - inf.fov[:, :2], np.broadcast_to(shift, (4, 2)), atol=1e-9)
    np.testing.assert_array_equal(tr.crops, inf.crops)


def test_box_map_of_mask_rule():
    mask = np.zeros((1, 256, 256), bool)
    mask[0, 82:174, 74:195] = True  # xmax = 194, ymax = 173 (last covered pixels)
    bm = P.box_map(P.box_loc_from_masks(mask))[0]
    ys, xs = np.nonzero(bm)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (59, 208, 71, 183)


@pytest.mark.parametrize("box", [[10, 10, 10, 50], [800, 10, 900, 50], [np.nan, 0, 10, 10], [1, 2, 3]])
def test_bad_boxes_are_clear_errors(golden, box):
    with pytest.raises(P.InputError, match="box"):
        P.prepare_detection(golden["image_bgr"], golden["cam_K"], box)


def test_bad_camera_and_image(golden):
    with pytest.raises(P.InputError, match="camera"):
        P.prepare_detection(golden["image_bgr"], np.eye(2), [0, 0, 10, 10])
    with pytest.raises(P.InputError, match="image"):
        P.prepare_detection(np.zeros((5, 5, 4)), golden["cam_K"], [0, 0, 3, 3])
    with pytest.raises(P.InputError, match="expected 640x480"):
        P.check_image(golden["image_bgr"], size=(640, 480))

"""The one mask-to-box rule (mrcnet.runtime.preprocess.mask_extent) and the box formats built on it."""
import numpy as np
import pytest

from mrcnet.data import bop
from mrcnet.data.layout import coco_box
from mrcnet.runtime.preprocess import box_loc_from_masks, mask_box_xyxy, mask_extent


def _mask(h, w, x0, y0, x1, y1):
    """Mask with pixels x0..x1, y0..y1 (inclusive) set."""
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def test_mask_extent_is_inclusive_pixel_indices():
    m = _mask(6, 8, 3, 2, 5, 4)
    m[3, 4] = False  # holes do not change the extent
    np.testing.assert_array_equal(mask_extent(m), [3, 2, 5, 4])
    one = _mask(6, 8, 7, 5, 7, 5)  # a single pixel in the last column / row
    np.testing.assert_array_equal(mask_extent(one), [7, 5, 7, 5])
    np.testing.assert_array_equal(mask_extent(np.zeros((6, 8), bool)), [-1, -1, -1, -1])


def test_mask_extent_batches_and_matches_a_loop():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 4, 9, 11)) > 0.97
    masks[0, 0] = False
    got = mask_extent(masks)
    assert got.shape == (3, 4, 4) and got.dtype == np.int64
    for idx in np.ndindex(3, 4):
        ys, xs = np.nonzero(masks[idx])
        want = [-1] * 4 if len(xs) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]
        np.testing.assert_array_equal(got[idx], want)


def test_mask_extent_rejects_a_vector():
    with pytest.raises(ValueError, match="masks"):
        mask_extent(np.ones(5, bool))


def test_formats_derive_from_the_extent():
    m = _mask(6, 8, 3, 2, 5, 4)
    assert bop.bbox_from_mask(m) == [3, 2, 2, 2]  # BOP: w = x_max - x_min
    assert bop.bbox_from_mask(m, offset=(-10, -20)) == [13, 22, 2, 2]
    assert bop.bbox_from_mask(np.zeros((4, 4), bool)) == [-1, -1, -1, -1]
    assert coco_box(m) == [3.0, 2.0, 3.0, 3.0]  # COCO: w = x_max - x_min + 1
    np.testing.assert_array_equal(mask_box_xyxy(m), [3, 2, 6, 5])  # pixel edges
    np.testing.assert_allclose(box_loc_from_masks(m[None]), [[3 / 8, 2 / 6, 5 / 8, 4 / 6]])  # crop units
    np.testing.assert_array_equal(box_loc_from_masks(np.zeros((1, 6, 8), bool)), [[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="empty"):
        coco_box(np.zeros((4, 4), bool))

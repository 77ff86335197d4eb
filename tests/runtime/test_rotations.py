"""mrcnet.runtime.rotations against scipy's Rotation (a reference implementation) and the torch twins."""
import numpy as np
import pytest

from mrcnet.runtime import rotations as rot

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation  # scipy: the train extra


def _wxyz(q_xyzw):
    return np.concatenate([q_xyzw[..., 3:], q_xyzw[..., :3]], -1)


@pytest.fixture
def ref():
    """Random rotations plus the awkward ones: identity, 180 deg about each axis, tiny angles."""
    r = Rotation.random(200, random_state=0)
    special = Rotation.from_rotvec(np.array([[0, 0, 0], [np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi],
                                             [1e-9, 0, 0], [0, -3e-7, 2e-7], [np.pi / np.sqrt(2), np.pi / np.sqrt(2), 0]]))
    return Rotation.concatenate([r, special])


def test_quat_to_matrix_matches_scipy_any_norm_and_batch_shape(ref):
    q = _wxyz(ref.as_quat()) * np.linspace(0.5, 3.0, len(ref))[:, None]  # any non-zero norm
    np.testing.assert_allclose(rot.quat_to_matrix(q), ref.as_matrix(), atol=1e-12)
    assert rot.quat_to_matrix(q[:6].reshape(2, 3, 4)).shape == (2, 3, 3, 3)


def test_matrix_to_quat_matches_scipy_up_to_sign_and_round_trips(ref):
    q = rot.matrix_to_quat(ref.as_matrix())
    want = _wxyz(ref.as_quat())
    want = want * np.where(want[:, :1] < 0, -1.0, 1.0)
    assert np.all(q[:, 0] >= 0)
    # at w = 0 (180 deg) both signs are the same rotation: compare |q . q_ref|
    np.testing.assert_allclose(np.abs(np.sum(q * want, -1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(rot.quat_to_matrix(q), ref.as_matrix(), atol=1e-12)


def test_axis_angle_both_ways_match_scipy(ref):
    v = ref.as_rotvec()
    np.testing.assert_allclose(rot.axis_angle_to_matrix(v), ref.as_matrix(), atol=1e-12)
    got = rot.matrix_to_axis_angle(ref.as_matrix())
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(v, axis=-1), atol=1e-7)
    np.testing.assert_allclose(rot.axis_angle_to_matrix(got), ref.as_matrix(), atol=1e-7)
    assert rot.axis_angle_to_matrix(v.reshape(-1, 1, 3)).shape == (len(v), 1, 3, 3)


def test_rotation_about_axis_and_rotz():
    R = rot.rotation_about_axis(0.7, [0, 0, 5.0])  # any axis length
    np.testing.assert_allclose(R, Rotation.from_rotvec([0, 0, 0.7]).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(R, rot.rotz(0.7), atol=1e-12)
    batch = rot.rotation_about_axis(np.array([0.1, 0.2]), np.array([[1.0, 0, 0], [0, 2.0, 0]]))
    np.testing.assert_allclose(batch, Rotation.from_rotvec([[0.1, 0, 0], [0, 0.2, 0]]).as_matrix(), atol=1e-12)


def test_rotation_angle_deg_is_the_geodesic_angle(ref):
    a, b = ref[:100], ref[100:200]
    want = np.degrees((a.inv() * b).magnitude())
    np.testing.assert_allclose(rot.rotation_angle_deg(a.as_matrix(), b.as_matrix()), want, atol=1e-5)


def test_random_rotation_is_a_rotation_and_reproducible():
    R = rot.random_rotation(np.random.default_rng(3), (50,))
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    one = rot.random_rotation(np.random.default_rng(3))
    assert one.shape == (3, 3)
    np.testing.assert_array_equal(one, R[0])  # the same draws: rng.normal(size=(..., 4))


def test_torch_twins_agree():
    torch = pytest.importorskip("torch")
    from mrcnet import geometry as tg

    q = np.random.default_rng(1).normal(size=(20, 4))
    np.testing.assert_allclose(tg.quat_to_matrix(torch.from_numpy(q)).numpy(), rot.quat_to_matrix(q), atol=1e-12)
    th = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(tg.rotz(torch.from_numpy(th)).numpy(), rot.rotz(th), atol=1e-12)


def test_geometry_and_bop_names_are_the_same_functions():
    from mrcnet.data import bop, objects
    from mrcnet.runtime import geometry

    assert geometry.quat_to_matrix is rot.quat_to_matrix and geometry.rotz is rot.rotz
    assert bop.rotation_about_axis is rot.rotation_about_axis and objects.random_rotation is rot.random_rotation

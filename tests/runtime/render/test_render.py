"""The headless renderer (mrcnet.runtime.render) on Mesa llvmpipe: geometry, shading, errors, scenes."""
import ctypes
import ctypes.util

import numpy as np
import pytest

from mrcnet.runtime.render import (Light, Mesh, MeshError, RenderContextError, Renderer, SceneObject,
                                   load_mesh, vertex_normals)
from mrcnet.runtime.render import context as render_context
from mrcnet.runtime.render import renderer as render_module

K = np.array([[600.0, 0.0, 128.0], [0.0, 610.0, 120.0], [0.0, 0.0, 1.0]])
EYE = np.eye(3)


def plate(half_w, half_h, z=0.0):
    """A rectangle in the model's z = ``z`` plane, normal -z (towards a camera looking along +z)."""
    v = np.array([[-half_w, -half_h, z], [half_w, -half_h, z], [half_w, half_h, z], [-half_w, half_h, z]])
    return Mesh.from_arrays(v, [[0, 3, 2], [0, 2, 1]])


def cube(half):
    import trimesh

    tm = trimesh.creation.box(extents=(2 * half,) * 3)
    return Mesh.from_arrays(tm.vertices, tm.faces)


def rot(axis, deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


@pytest.fixture(scope="module")
def renderer(renderer):
    """conftest's renderer holding this module's meshes."""
    r = renderer
    r.add_object(1, plate(40.0, 30.0))
    r.add_object(2, cube(20.0))
    # two parallel plates 30 mm apart in one mesh, the nearer drawn first: the depth test must
    # keep it where the farther one is drawn afterwards
    a, b = plate(30.0, 30.0, z=-15.0), plate(10.0, 10.0, z=15.0)
    r.add_object(3, Mesh.from_arrays(np.vstack([a.vertices, b.vertices]), np.vstack([a.faces, b.faces + 4])))
    return r


def expected_box(u, v):
    """Tight pixel box of a convex projection under the pixel-centre rule: (xmin, ymin, xmax, ymax)."""
    return (int(np.ceil(u.min() - 0.5)), int(np.ceil(v.min() - 0.5)),
            int(np.ceil(u.max() - 0.5)) - 1, int(np.ceil(v.max() - 0.5)) - 1)


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max(), ys.max())


def test_fronto_parallel_plate_covers_exactly_the_projected_rectangle(renderer):
    t = np.array([7.3, -4.1, 500.0])
    out = renderer.render([1], EYE[None], t[None], K, width=256, height=240)
    uv = (plate(40.0, 30.0).vertices + t) @ K.T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    xmin, ymin, xmax, ymax = expected_box(u, v)
    want = np.zeros((240, 256), bool)
    want[ymin:ymax + 1, xmin:xmax + 1] = True
    np.testing.assert_array_equal(out.mask[0], want)
    np.testing.assert_allclose(out.depth[0][want], 500.0, atol=0.1)
    assert (out.depth[0][~want] == 0).all() and (out.rgb[0][~want] == 0).all()
    assert out.rgb.shape == (1, 240, 256, 3) and out.box_map is None  # non-square: no box map


def hull_distance(u, v, px, py):
    """Signed distance (pixels, > 0 inside) of points (px, py) to the convex hull of points (u, v)."""
    import cv2

    a = cv2.convexHull(np.stack([u, v], 1).astype(np.float32))[:, 0].astype(np.float64)
    edge = np.roll(a, -1, axis=0) - a
    inward = np.stack([-edge[:, 1], edge[:, 0]], 1) / np.linalg.norm(edge, axis=1, keepdims=True)
    inward *= np.sign(((a.mean(0) - a) * inward).sum(1, keepdims=True))
    d = (px[..., None] - a[:, 0]) * inward[:, 0] + (py[..., None] - a[:, 1]) * inward[:, 1]
    return d.min(-1)


def test_rotated_cube_covers_the_pixels_whose_centres_its_projection_contains(renderer):
    R = rot(0, 25) @ rot(1, -35) @ rot(2, 10)
    t = np.array([-5.0, 8.0, 420.0])
    out = renderer.render([2], R[None], t[None], K)
    X = cube(20.0).vertices.astype(np.float64) @ R.T + t
    uv = X @ K.T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    py, px = np.mgrid[0:256, 0:256] + 0.5
    dist = hull_distance(u, v, px, py)  # the silhouette of a convex solid: the hull of its vertices
    sure = np.abs(dist) > 1e-3
    assert sure.mean() > 0.99
    np.testing.assert_array_equal(out.mask[0][sure], (dist > 0)[sure])
    # the tight box lies within half a pixel (pixel centres) of the projected vertices' extent
    xmin, ymin, xmax, ymax = tight_box(out.mask[0])
    assert u.min() <= xmin + 0.5 and xmax + 0.5 <= u.max() and v.min() <= ymin + 0.5 and ymax + 0.5 <= v.max()
    # depth at every pixel of the face most turned to the camera: ray / face-plane intersection
    normals = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]])
    n_cam = normals @ R.T
    f = int(np.argmin(n_cam @ t))
    p0 = R @ (20.0 * normals[f]) + t
    ys, xs = np.nonzero(out.mask[0])
    rays = np.linalg.solve(K, np.stack([xs + 0.5, ys + 0.5, np.ones(len(xs))]))
    z = (n_cam[f] @ p0) / (n_cam[f] @ rays)
    local = (rays * z).T @ R - t @ R  # model coordinates of the ray / plane points
    on_face = (np.abs(local) <= 20.0 - 0.05).sum(1) == 2  # strictly inside face f's square
    assert on_face.sum() > 500
    np.testing.assert_allclose(out.depth[0][ys, xs][on_face], z[on_face], atol=0.1)


def test_plate_facing_the_camera_shades_to_the_spec_maximum(renderer):
    Kc = np.array([[600.0, 0, 128.0], [0, 600.0, 128.0], [0, 0, 1]])
    out = renderer.render([1], EYE[None], [[0.0, 0.0, 200.0]], Kc)  # covers 240 x 180 pixels
    # pixel (127, 127): centre 0.5 px from the principal point, where r = v
    assert abs(out.rgb[0, 127, 127, 0] - (0.8 + 0.3) * 0.6 - 0.06) <= 1 / 255
    assert abs(out.rgb[0, 127, 127, 0] - 0.72) <= 1 / 255
    np.testing.assert_array_equal(out.rgb[0, ..., 0], out.rgb[0, ..., 2])
    # elsewhere: (0.8 + 0.3) * 0.6 + 0.06 * (r.v)^10 with l = (0, 0, -1), n = (0, 0, -1), r = l
    for (x, y) in [(20, 50), (230, 200), (128, 60), (100, 150)]:
        ray = np.linalg.solve(Kc, [x + 0.5, y + 0.5, 1.0])
        rv = -ray[2] * -1 / np.linalg.norm(ray)
        want = 0.66 + 0.06 * max(rv, 0) ** 10
        assert abs(out.rgb[0, y, x, 0] - want) < 1e-4


def test_nearer_surface_wins_within_one_mesh(renderer):
    out = renderer.render([3], EYE[None], [[0.0, 0.0, 400.0]], K)
    d = out.depth[0]
    assert abs(d[120, 128] - 385.0) < 0.1  # the big plate at z = -15 hides the small one
    assert out.mask[0].sum() > 0 and np.allclose(d[out.mask[0]], 385.0, atol=0.1)


@pytest.mark.parametrize("t", [[0, 0, -400.0], [0, 0, -21.0], [5000.0, 0, 400.0], [0, -9000.0, 400.0]])
def test_behind_camera_or_out_of_view_gives_an_empty_mask(renderer, t):
    out = renderer.render([2, 2], np.stack([EYE, EYE]), [t, [0, 0, 400.0]], K)
    assert not out.mask[0].any() and (out.depth[0] == 0).all() and not out.box_map[0].any()
    assert out.mask[1].any()  # the other view of the batch is unaffected


def test_object_straddling_the_camera_plane_renders_its_front_part(renderer):
    out = renderer.render([1], rot(1, 80)[None], [[0.0, 0.0, 5.0]], K)
    assert (out.depth[0][out.mask[0]] >= 1.0 - 1e-3).all()


def test_batch_equals_single_views_and_passes(renderer, monkeypatch):
    R = np.stack([rot(0, 10 * i) @ rot(1, 7 * i) for i in range(5)])
    t = np.array([[3.0 * i, -2.0 * i, 380.0 + 20 * i] for i in range(5)])
    ids = [2, 1, 3, 2, 1]
    Ks = np.stack([K * [[1 + 0.05 * i], [1 + 0.05 * i], [1]] for i in range(5)])
    batch = renderer.render(ids, R, t, Ks, width=96, height=96)
    monkeypatch.setattr(render_module, "MAX_VIEWS_PER_PASS", 2)
    passes = renderer.render(ids, R, t, Ks, width=96, height=96)
    for i in range(5):
        one = renderer.render([ids[i]], R[i:i + 1], t[i:i + 1], Ks[i], width=96, height=96)
        for out in (batch, passes):  # tiles differ only by float rounding of the viewport offset
            np.testing.assert_array_equal(out.mask[i], one.mask[0])
            np.testing.assert_allclose(out.depth[i], one.depth[0], atol=1e-3, rtol=0)
            np.testing.assert_allclose(out.rgb[i], one.rgb[0], atol=1e-5, rtol=0)
            np.testing.assert_array_equal(out.box_map[i], one.box_map[0])


def test_box_map_and_network_input(renderer):
    out = renderer.render([2], rot(0, 30)[None], [[0.0, 0.0, 400.0]], K)
    xmin, ymin, xmax, ymax = tight_box(out.mask[0])
    np.testing.assert_allclose(out.box_loc[0], [xmin / 256, ymin / 256, xmax / 256, ymax / 256])
    ys, xs = np.nonzero(out.box_map[0])
    w, h = xmax - xmin, ymax - ymin
    assert abs(xs.min() - (xmin - 0.125 * w)) <= 0.5 and abs(xs.max() + 1 - (xmax + 0.125 * w)) <= 0.5
    assert abs(ys.min() - (ymin - 0.125 * h)) <= 0.5 and abs(ys.max() + 1 - (ymax + 0.125 * h)) <= 0.5
    x = out.network_input()
    assert x.shape == (1, 4, 256, 256) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 3], out.box_map[0])
    np.testing.assert_array_equal(x[0, 0], out.rgb[0, ..., 0])


def test_cull_backfaces_gives_the_same_image_for_a_closed_mesh(renderer):
    culled = Renderer(cull_backfaces=True)
    culled.add_object(2, renderer.mesh(2))
    R = rot(0, 25) @ rot(1, -35)
    a = renderer.render([2], R[None], [[0.0, 0.0, 400.0]], K)
    b = culled.render([2], R[None], [[0.0, 0.0, 400.0]], K)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.rgb, b.rgb, atol=1e-6)
    # a single-sided plate: culled when seen from behind, kept when seen from the front
    culled.add_object(1, renderer.mesh(1))
    t = [[0.0, 0.0, 400.0]] * 2
    out = culled.render([1, 1], np.stack([EYE, rot(1, 180)]), t, K)
    assert out.mask[0].any() and not out.mask[1].any()
    assert renderer.render([1], rot(1, 180)[None], t[:1], K).mask[0].any()
    culled.release()


@pytest.mark.parametrize("bad, match", [
    (lambda R: R.__setitem__((1, 0, 0), np.nan), r"R\[1\] contains NaN"),
    (lambda R: R.__setitem__((1, 0, 0), np.inf), r"R\[1\] contains NaN or inf"),
    (lambda R: R.__setitem__(1, R[1] * 1.01), r"R\[1\] is not orthonormal"),
    (lambda R: R.__setitem__(1, -R[1]), r"R\[1\] is a reflection"),
])
def test_bad_rotation_is_a_clear_error(renderer, bad, match):
    R = np.stack([EYE, EYE])
    bad(R)
    with pytest.raises(ValueError, match=match):
        renderer.render([2, 2], R, [[0, 0, 400.0]] * 2, K)


def test_other_bad_inputs_are_clear_errors(renderer):
    with pytest.raises(ValueError, match=r"unknown obj_id 99 \(view 1\)"):
        renderer.render([2, 99], np.stack([EYE, EYE]), [[0, 0, 400.0]] * 2, K)
    with pytest.raises(ValueError, match=r"t\[0\] contains NaN"):
        renderer.render([2], EYE[None], [[0, np.nan, 400.0]], K)
    with pytest.raises(ValueError, match=r"K\[0\]"):
        renderer.render([2], EYE[None], [[0, 0, 400.0]], np.diag([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="expected 2 poses"):
        renderer.render([2, 2], EYE[None], [[0, 0, 400.0]], K)
    with pytest.raises(ValueError, match="image size"):
        renderer.render([2], EYE[None], [[0, 0, 400.0]], K, width=0)


def test_area_weighted_vertex_normals():
    # vertex 0 shared by a big face in z = 0 (normal +z, area 2) and a small one in x = 0 (normal +x, area 0.5)
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1.0]], float)
    n = vertex_normals(v, np.array([[0, 1, 2], [0, 3, 4]]))
    want = np.array([1.0, 0, 4.0]) / np.sqrt(17)  # cross products: (0,0,4) and (1,0,0)
    np.testing.assert_allclose(n[0], want, atol=1e-6)
    np.testing.assert_allclose(n[1], [0, 0, 1], atol=1e-6)


def _write_ply_ascii(path, vertices, faces, extra=""):
    lines = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}",
             "property float x", "property float y", "property float z"]
    cols = ["nx", "ny", "nz", "red", "green", "blue", "texture_u", "texture_v"] if extra else []
    for c in cols:
        lines.append(f"property {'uchar' if c in ('red', 'green', 'blue') else 'float'} {c}")
    if faces is not None:
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    for i, p in enumerate(vertices):
        row = [f"{x:g}" for x in p]
        if extra:
            row += ["0", "0", "1", "200", "100", str(i * 10), "0.5", "0.25"]
        lines.append(" ".join(row))
    for f in faces if faces is not None else []:
        lines.append("3 " + " ".join(map(str, f)))
    path.write_text("\n".join(lines) + "\n")


def test_load_ply_ascii_binary_and_obj_keep_vertices_as_stored(tmp_path):
    import trimesh

    # two triangles sharing an edge but stored with duplicated vertices
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    _write_ply_ascii(tmp_path / "a.ply", v, f, extra="normals colours uv")
    m = load_mesh(tmp_path / "a.ply")
    assert m.vertices.shape == (6, 3) and m.faces.tolist() == f.tolist()
    np.testing.assert_allclose(m.normals, np.tile([0, 0, 1.0], (6, 1)), atol=1e-6)
    np.testing.assert_allclose(m.colors[:, :2], np.tile([200 / 255, 100 / 255], (6, 1)), atol=1e-6)
    assert m.name.endswith("a.ply")
    tm = trimesh.Trimesh(v, f, process=False)
    tm.export(tmp_path / "b.ply")  # binary, no normals / colours
    tm.export(tmp_path / "c.obj")
    for name in ("b.ply", "c.obj"):
        m = load_mesh(tmp_path / name)
        assert m.vertices.shape == (6, 3) and m.colors is None, name
        np.testing.assert_allclose(m.vertices, v, err_msg=name)


def test_load_textured_ply_samples_the_texture_into_vertex_colours(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "tex.png"), np.full((4, 4, 3), (255, 0, 0), np.uint8))  # BGR: blue
    lines = ["ply", "format ascii 1.0", "comment TextureFile tex.png", "element vertex 3",
             "property float x", "property float y", "property float z",
             "property float texture_u", "property float texture_v",
             "element face 1", "property list uchar int vertex_indices", "end_header",
             "0 0 0 0.1 0.1", "10 0 0 0.9 0.1", "0 10 0 0.1 0.9", "3 0 1 2"]
    (tmp_path / "textured.ply").write_text("\n".join(lines) + "\n")
    m = load_mesh(tmp_path / "textured.ply")
    np.testing.assert_allclose(m.uv, [[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]], atol=1e-6)
    np.testing.assert_allclose(m.colors, np.tile([0.0, 0.0, 1.0], (3, 1)), atol=1e-6)  # RGB


def test_mesh_without_faces_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "points_only.ply"
    _write_ply_ascii(path, np.eye(3), None)
    with pytest.raises(MeshError, match="points_only.ply has no faces"):
        load_mesh(path)
    assert issubclass(MeshError, ValueError)
    with pytest.raises(MeshError, match="not found: .*missing.ply"):
        load_mesh(tmp_path / "missing.ply")
    with pytest.raises(MeshError, match="<arrays> has no faces"):
        Mesh.from_arrays(np.eye(3), np.zeros((0, 3), int))


def test_missing_egl_is_a_one_line_error_naming_the_library(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)

    def no_lib(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_lib)
    with pytest.raises(RenderContextError, match=r"libEGL\.so\.1.*libegl1 libgl1 libgl1-mesa-dri") as e:
        render_context._find_system_library("EGL", "libEGL.so.1")
    assert "\n" not in str(e.value)


def test_context_is_shared_and_bad_devices_are_clear_errors(renderer):
    assert Renderer().ctx is renderer.ctx
    with pytest.raises(RenderContextError, match="unknown device"):
        render_context.resolve_device("tpu")
    with pytest.raises(RenderContextError, match="EGL device 99"):
        render_context.get_context(99)


# -- scenes ---------------------------------------------------------------------------------------
def test_scene_occlusion_instances_depth_and_composite(renderer):
    bg = np.full((240, 256, 3), (10, 20, 30), np.uint8)
    objects = [
        SceneObject(1, EYE, [0.0, 0.0, 600.0], color=(0.0, 0.0, 1.0), specular=0.0),  # far plate, blue
        SceneObject(2, rot(1, 30), [15.0, 5.0, 450.0], color=(1.0, 0.0, 0.0), specular=0.0),  # near cube, red
        SceneObject(2, EYE, [0.0, 0.0, -300.0]),                            # behind the camera
    ]
    lights = [Light.directional((0, 0, -1), (0.6, 0.6, 0.6)), Light.point((0, -500, 0), (0.3, 0.3, 0.3))]
    s = renderer.render_scene(objects, K, 256, 240, lights=lights, background=bg)
    assert s.rgb.shape == (240, 256, 3) and s.rgb.dtype == np.uint8
    assert s.instance.dtype == np.int32 and s.depth.dtype == np.float32 and s.masks_full.shape == (3, 240, 256)
    vis = s.masks_visible
    full = s.masks_full
    assert vis[1].any() and (vis[1] == full[1]).all()  # the near cube is fully visible
    assert (vis[0] <= full[0]).all() and vis[0].sum() < full[0].sum()  # the plate is partly hidden
    assert (full[0] & full[1]).any() and not (vis[0] & full[1]).any()
    assert not full[2].any() and not vis[2].any()
    np.testing.assert_allclose(s.visib_fract[1:], [1.0, 0.0])
    assert 0 < s.visib_fract[0] < 1
    # depth: the nearest surface; matches the single-object renders
    single = renderer.render([1, 2], np.stack([EYE, rot(1, 30)]), [[0, 0, 600.0], [15.0, 5.0, 450.0]], K,
                             width=256, height=240)
    np.testing.assert_allclose(s.depth[vis[0]], single.depth[0][vis[0]], atol=1e-3)
    np.testing.assert_allclose(s.depth[vis[1]], single.depth[1][vis[1]], atol=1e-3)
    np.testing.assert_array_equal(full[:2], single.mask)
    # composite: background where nothing, BGR colours on the objects
    back = s.instance == -1
    assert (s.rgb[back] == (10, 20, 30)).all() and (s.depth[back] == 0).all()
    cube_px = s.rgb[vis[1]].astype(int)
    plate_px = s.rgb[vis[0]].astype(int)
    assert (cube_px[:, 2] > 50).all() and (cube_px[:, :2] == 0).all()     # red is the 3rd (R of BGR)
    assert (plate_px[:, 0] > 50).all() and (plate_px[:, 1:] == 0).all()   # blue is the 1st


def test_scene_depth_test_is_precise_far_from_the_near_plane(renderer):
    # plates 0.05 mm apart at 1.5 m while a third object forces the near plane to ~1 mm: a
    # hyperbolic 24-bit depth buffer would resolve only ~0.13 mm there
    far, near = SceneObject(1, EYE, [0.0, 0.0, 1500.0]), SceneObject(1, EYE, [0.0, 0.0, 1499.95])
    for objects, nearer in (([far, near], 1), ([near, far], 0)):  # both drawing orders
        s = renderer.render_scene(objects + [SceneObject(2, EYE, [300.0, 0.0, 15.0])], K, 256, 240)
        on_plates = s.masks_full[0]
        assert on_plates.sum() > 500
        assert (s.instance[on_plates] == nearer).all()
        np.testing.assert_allclose(s.depth[on_plates], 1499.95, atol=0.01)


def test_scene_vertex_colours_defaults_and_errors(renderer, tmp_path):
    m = plate(40.0, 30.0)
    r = Renderer()
    r.add_object(5, Mesh.from_arrays(m.vertices, m.faces, colors=np.tile([0.0, 1.0, 0.0], (4, 1))))
    s = r.render_scene([SceneObject(5, EYE, [0, 0, 500.0], specular=0.0)], K, 128, 128)
    px = s.rgb[s.instance == 0].astype(int)
    assert len(px) > 0 and (px[:, 1] > 100).all() and (px[:, [0, 2]] == 0).all()  # green, default lights
    empty = r.render_scene([], K, 64, 48)
    assert empty.rgb.shape == (48, 64, 3) and (empty.instance == -1).all() and empty.masks_full.shape == (0, 48, 64)
    with pytest.raises(ValueError, match=r"objects\[0\] is not orthonormal"):
        r.render_scene([SceneObject(5, 2 * EYE, [0, 0, 500.0])], K, 64, 48)
    with pytest.raises(ValueError, match="background must be a uint8 BGR image of shape"):
        r.render_scene([SceneObject(5, EYE, [0, 0, 500.0])], K, 64, 48, background=np.zeros((48, 64, 3)))
    with pytest.raises(ValueError, match=r"unknown obj_id 7 \(objects\[0\]\)"):
        r.render_scene([SceneObject(7, EYE, [0, 0, 500.0])], K, 64, 48)
    with pytest.raises(ValueError, match=r"objects\[0\].color"):
        r.render_scene([SceneObject(5, EYE, [0, 0, 500.0], color=(1, 0))], K, 64, 48)
    with pytest.raises(ValueError, match="at most 8 lights"):
        r.render_scene([SceneObject(5, EYE, [0, 0, 500.0])], K, 64, 48, lights=[Light.directional()] * 9)
    r.release()


def test_import_is_torch_free_and_creates_no_context():
    import subprocess
    import sys

    code = ("import sys, mrcnet.runtime.render as r; from mrcnet.runtime.render import context; "
            "assert 'torch' not in sys.modules, 'torch imported'; assert not context._contexts, 'eager context'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_rendering_in_a_forked_child_is_a_clear_error_not_a_hang():
    import subprocess
    import sys

    code = """
import os, numpy as np
from mrcnet.runtime.render import Mesh, RenderContextError, Renderer
r = Renderer()
r.add_object(1, Mesh.from_arrays([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]]))
pid = os.fork()
if pid == 0:
    codes = []
    for make in (lambda: r.render([1], np.eye(3)[None], [[0, 0, 10.0]], np.eye(3)), lambda: Renderer().ctx):
        try:
            make()
            codes.append(1)
        except RenderContextError as e:
            codes.append(0 if "fork" in str(e) else 2)
    os._exit(10 * codes[0] + codes[1])
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0

"""Scene rendering for synthetic data: several objects, mutual occlusion, materials, lights.

Colours given by the user (object colours, light colours, mesh vertex colours) are RGB in [0, 1];
the output image is uint8 **BGR** (OpenCV order), composited over an optional BGR background.
Shading is two-sided Phong in camera space with no light attenuation:
``albedo * (ambient + sum_i light_i * max(0, n.l_i)) + specular * sum_i light_i * max(0, r_i.v)^shininess``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import moderngl
import numpy as np

from . import camera as cam
from . import shaders

#: ambient light (RGB) when none is given
DEFAULT_AMBIENT = (0.3, 0.3, 0.3)


@dataclass(frozen=True)
class Light:
    """A light in camera coordinates (OpenCV axes, mm).

    Attributes:
        kind: ``"directional"`` or ``"point"``.
        vector: directional: (3,) direction from the scene *towards* the light (normalised when
            drawn); point: (3,) position in mm.
        color: (3,) RGB intensity (1 = full).
    """

    kind: str
    vector: tuple
    color: tuple = (1.0, 1.0, 1.0)

    @classmethod
    def directional(cls, towards=(0.0, 0.0, -1.0), color=(1.0, 1.0, 1.0)) -> "Light":
        """A light infinitely far in direction ``towards`` (default: behind the camera, a head light)."""
        return cls("directional", tuple(float(x) for x in towards), tuple(float(x) for x in color))

    @classmethod
    def point(cls, position, color=(1.0, 1.0, 1.0)) -> "Light":
        """A point light at ``position`` (mm, camera frame), no attenuation."""
        return cls("point", tuple(float(x) for x in position), tuple(float(x) for x in color))


#: lights when none are given: one head light
DEFAULT_LIGHTS = (Light.directional((0.0, 0.0, -1.0), (0.7, 0.7, 0.7)),)


@dataclass
class SceneObject:
    """One object instance of a scene.

    Attributes:
        obj_id: id given to ``Renderer.add_object``.
        R: (3, 3) rotation model -> camera. t: (3,) translation, mm.
        color: (3,) RGB diffuse colour in [0, 1]; None: the mesh's vertex colours, else grey 0.6.
        specular: specular strength (0 = matte). shininess: Phong exponent.
    """

    obj_id: int
    R: np.ndarray
    t: np.ndarray
    color: Optional[Sequence[float]] = None
    specular: float = 0.2
    shininess: float = 20.0


@dataclass
class SceneResult:
    """Output of :func:`render_scene` for n objects, H x W pixels.

    Attributes:
        rgb: (H, W, 3) uint8 BGR, objects over the background.
        depth: (H, W) float32 camera z of the nearest surface, mm; 0 = background.
        instance: (H, W) int32 index into ``objects`` of the visible object; -1 = background.
        masks_full: (n, H, W) bool, each object rendered alone (unoccluded).
    """

    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    masks_full: np.ndarray

    @property
    def masks_visible(self) -> np.ndarray:
        """(n, H, W) bool visible (occluded) masks: ``instance == i``."""
        n = len(self.masks_full)
        return self.instance[None] == np.arange(n, dtype=np.int32)[:, None, None]

    @property
    def visib_fract(self) -> np.ndarray:
        """(n,) float64 visible / full pixel count per object (0 where the full mask is empty)."""
        full = self.masks_full.reshape(len(self.masks_full), -1).sum(1)
        vis = np.bincount(self.instance[self.instance >= 0], minlength=len(full))[: len(full)]
        return np.divide(vis, full, out=np.zeros(len(full)), where=full > 0)


def _check_lights(lights) -> list[Light]:
    lights = list(DEFAULT_LIGHTS if lights is None else lights)
    if len(lights) > shaders.MAX_LIGHTS:
        raise ValueError(f"at most {shaders.MAX_LIGHTS} lights, got {len(lights)}")
    for i, lt in enumerate(lights):
        if not isinstance(lt, Light) or lt.kind not in ("directional", "point"):
            raise ValueError(f"lights[{i}] must be a Light (directional or point), got {lt!r}")
        vec, col = np.asarray(lt.vector, float), np.asarray(lt.color, float)
        if vec.shape != (3,) or col.shape != (3,) or not (np.isfinite(vec).all() and np.isfinite(col).all()):
            raise ValueError(f"lights[{i}]: vector and color must be 3 finite numbers")
        if lt.kind == "directional" and not np.linalg.norm(vec) > 0:
            raise ValueError(f"lights[{i}]: a directional light needs a non-zero direction")
    return lights


def _check_background(background, width: int, height: int) -> np.ndarray:
    if background is None:
        return np.zeros((height, width, 3), np.uint8)
    bg = np.asarray(background)
    if bg.dtype != np.uint8 or bg.shape != (height, width, 3):
        raise ValueError(f"background must be a uint8 BGR image of shape ({height}, {width}, 3), "
                         f"got {bg.dtype} {bg.shape}")
    return bg


def render_scene(renderer, objects: Sequence[SceneObject], K, width: int, height: int,
                 lights=None, background=None, ambient=None) -> SceneResult:
    """Render ``objects`` together with one camera; see the module docstring for the shading.

    Args:
        renderer: a ``Renderer`` holding the objects' meshes.
        objects: list of :class:`SceneObject`.
        K: (3, 3) OpenCV camera matrix. width, height: image size, pixels.
        lights: list of :class:`Light` (at most ``MAX_LIGHTS``); None = :data:`DEFAULT_LIGHTS`.
        background: None (black) or (H, W, 3) uint8 BGR image.
        ambient: (3,) RGB ambient light; None = :data:`DEFAULT_AMBIENT`.
    Returns:
        :class:`SceneResult`.
    Raises:
        ValueError: bad pose (naming ``objects[i]``), camera, light, background or unknown obj_id.
    """
    objects = list(objects)
    n = len(objects)
    width, height = cam.check_size(width, height)
    K = cam.check_intrinsics(K, 1)[0]
    lights = _check_lights(lights)
    bg = _check_background(background, width, height)
    amb = np.asarray(DEFAULT_AMBIENT if ambient is None else ambient, np.float32).reshape(3)
    if n == 0:
        return SceneResult(bg.copy(), np.zeros((height, width), np.float32),
                           np.full((height, width), -1, np.int32), np.zeros((0, height, width), bool))
    try:
        R, t = cam.check_poses([o.R for o in objects], [o.t for o in objects], n)
    except ValueError as e:  # name the object rather than the view
        raise ValueError(str(e).replace("R[", "objects[").replace("t[", "objects[")) from None
    gpus = renderer._lookup([o.obj_id for o in objects], what="objects[{}]")
    for i, o in enumerate(objects):
        if o.color is not None:
            c = np.asarray(o.color, np.float64)
            if c.shape != (3,) or not np.isfinite(c).all():
                raise ValueError(f"objects[{i}].color must be 3 finite RGB numbers in [0, 1], got {o.color!r}")
        if not (np.isfinite(o.specular) and np.isfinite(o.shininess) and o.shininess >= 0):
            raise ValueError(f"objects[{i}]: specular and shininess must be finite, shininess >= 0")

    # one near/far for the whole scene, around every object's bounding sphere
    centres = np.stack([g.centre for g in gpus])
    z_centre = np.einsum("nij,nj->ni", R, centres)[:, 2] + t[:, 2]
    near, far, visible = cam.depth_range(z_centre, np.array([g.radius for g in gpus]))
    depth = np.zeros((height, width), np.float32)
    instance = np.full((height, width), -1, np.int32)
    rgb = bg.copy()
    if visible.any():
        zn, zf = near[visible].min(), far[visible].max()
        P = cam.projection(K, width, height, zn, zf)
        colour, z_id = _draw(renderer, objects, gpus, R, t, P, (zn, zf), lights, amb, visible, width, height)
        covered = z_id[..., 1] > 0
        depth[covered] = z_id[..., 0][covered]
        instance[covered] = np.rint(z_id[..., 1][covered]).astype(np.int32) - 1
        rgb[covered] = colour[covered]
    masks_full = renderer._render_headlight([o.obj_id for o in objects], R, t, K, width, height)[..., 1] > 0
    return SceneResult(rgb=rgb, depth=depth, instance=instance, masks_full=masks_full)


def _draw(renderer, objects, gpus, R, t, P, depth_range, lights, ambient, visible, width, height):
    """Draw the visible objects into the scene framebuffer -> (BGR (H,W,3) u8, (z, id+1) (H,W,2) f32)."""
    ctx = renderer.ctx
    prog = renderer._program("scene")
    fbo = renderer._target("scene", width, height)
    fbo.use()
    ctx.scissor = None
    fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
    ctx.enable_only(moderngl.DEPTH_TEST)
    ctx.depth_func = "<"
    ctx.viewport = (0, 0, width, height)

    vecs = np.zeros((shaders.MAX_LIGHTS, 4), np.float32)
    cols = np.zeros((shaders.MAX_LIGHTS, 3), np.float32)
    for i, lt in enumerate(lights):
        vecs[i, :3] = lt.vector
        vecs[i, 3] = 1.0 if lt.kind == "point" else 0.0
        cols[i] = lt.color
    prog["u_n_lights"].value = len(lights)
    prog["u_light_vec"].write(vecs.tobytes())
    prog["u_light_color"].write(cols.tobytes())
    prog["u_ambient"].write(ambient.tobytes())
    prog["u_P"].write(np.ascontiguousarray(P.T, dtype=np.float32).tobytes())
    prog["u_depth_range"].value = tuple(float(z) for z in depth_range)
    for i, (obj, gpu) in enumerate(zip(objects, gpus)):
        if not visible[i]:
            continue
        use_vertex = obj.color is None and gpu.mesh.colors is not None
        color = np.full(3, 0.6, np.float32) if obj.color is None else np.asarray(obj.color, np.float32).reshape(3)
        prog["u_R"].write(np.ascontiguousarray(R[i].T, dtype=np.float32).tobytes())
        prog["u_t"].write(t[i].astype(np.float32).tobytes())
        prog["u_color"].write(color.tobytes())
        prog["u_use_vertex_color"].value = 1.0 if use_vertex else 0.0
        prog["u_specular"].value = float(obj.specular)
        prog["u_shininess"].value = float(obj.shininess)
        prog["u_instance"].value = float(i)
        gpu.vao(prog, with_color=True).render(moderngl.TRIANGLES)
    colour = np.empty((height, width, 3), np.uint8)
    z_id = np.empty((height, width, 2), np.float32)
    fbo.read_into(colour, components=3, attachment=0, alignment=1, dtype="f1")
    fbo.read_into(z_id, components=2, attachment=1, alignment=4, dtype="f4")
    return colour, z_id

"""Batched headless renderer: N views of uploaded meshes in one call (docs/MODEL.md §4 shading).

The N views of a call are drawn into one framebuffer, stacked vertically (view i occupies rows
``[i*H, (i+1)*H)``), each with its own viewport and scissor, and read back in one transfer; the
memory layout of that read is already ``(N, H, W, 2)`` (grey level, camera z), so no copy or flip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

import moderngl
import numpy as np

from ..preprocess import box_loc_from_masks, box_map
from . import camera as cam
from . import shaders
from .context import Device, check_not_forked, describe, get_context
from .mesh import Mesh, load_mesh
from .scene import render_scene

#: most views drawn into one framebuffer (more are rendered in several passes)
MAX_VIEWS_PER_PASS = 64
#: colour of vertices for scene rendering when a mesh has no colours and the object none given
DEFAULT_GREY = 0.6


@dataclass
class RenderResult:
    """Output of :meth:`Renderer.render` for N views of H x W pixels.

    Attributes:
        rgb: (N, H, W, 3) float32 in [0, 1], MODEL.md §4 shading (grey: the 3 channels are equal, so
            RGB and BGR orders coincide); 0 on the background.
        mask: (N, H, W) bool, pixels the object covers (``depth > 0``).
        depth: (N, H, W) float32 camera-space z in mm at the pixel centres; 0 on the background.
        box_map: (N, H, W) float32 box map of the mask (docs/MODEL.md §1, §4, ``preprocess.box_map``); None when
            H != W (the box-map rule is defined for square crops).
        box_loc: (N, 4) float64 tight box of the mask ``(xmin/W, ymin/H, xmax/W, ymax/H)``, xmax/ymax
            the last covered pixel; zeros for an empty mask.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    box_map: Optional[np.ndarray]
    box_loc: np.ndarray

    def network_input(self) -> np.ndarray:
        """The stage-2 input: (N, 4, H, W) float32, BGR (= the grey level) and the box map."""
        if self.box_map is None:
            raise ValueError("network_input needs square renders (H == W) for the box map")
        n, h, w = self.mask.shape
        out = np.empty((n, 4, h, w), np.float32)
        out[:, :3] = self.rgb[..., 0][:, None]
        out[:, 3] = self.box_map
        return out


class _GpuMesh:
    """One uploaded mesh: interleaved (position, normal) buffer, colour buffer, index buffer."""

    def __init__(self, ctx, mesh: Mesh):
        self.mesh = mesh
        self.centre, self.radius = mesh.bounding_sphere
        pos_nrm = np.hstack([mesh.vertices, mesh.normals]).astype(np.float32)
        colors = mesh.colors if mesh.colors is not None else np.full((len(mesh.vertices), 3), DEFAULT_GREY)
        self.vbo = ctx.buffer(np.ascontiguousarray(pos_nrm).tobytes())
        self.cbo = ctx.buffer(np.ascontiguousarray(colors, dtype=np.float32).tobytes())
        self.ibo = ctx.buffer(np.ascontiguousarray(mesh.faces, dtype=np.uint32).tobytes())
        self._ctx = ctx
        self._vaos: dict = {}

    def vao(self, program, with_color: bool):
        key = (program.glo, with_color)
        vao = self._vaos.get(key)
        if vao is None:
            content = [(self.vbo, "3f 3f", "in_pos", "in_normal")]
            if with_color:
                content.append((self.cbo, "3f", "in_color"))
            vao = self._vaos[key] = self._ctx.vertex_array(program, content, index_buffer=self.ibo,
                                                           index_element_size=4)
        return vao

    def release(self):
        for vao in self._vaos.values():
            vao.release()
        for b in (self.vbo, self.cbo, self.ibo):
            b.release()
        self._vaos.clear()


class Renderer:
    """Headless OpenGL renderer of CAD models (OpenCV cameras, mm).

    Args:
        device: EGL device: None (the NVIDIA device of CUDA device ``cuda_device``, default 0;
            else EGL device 0, Mesa llvmpipe on a machine without NVIDIA EGL), an EGL device
            index, ``"cuda:K"`` or ``"cpu"`` (see ``render.context``). The OpenGL context is
            created on first use and shared by every Renderer of the process on that device.
        cull_backfaces: skip triangles facing away from the camera in :meth:`render` (about 2x
            faster on llvmpipe). Identical images only for closed, consistently outward-wound
            meshes seen from outside; off by default, like the official renderer.

    Not thread-safe: use a Renderer from one thread (EGL contexts are current per thread). EGL does
    not survive ``fork``: in a child forked after the parent rendered, rendering raises
    ``RenderContextError``; use 'spawn' workers that create their own Renderer.
    """

    def __init__(self, device: Device = None, cull_backfaces: bool = False, cuda_device: Optional[int] = None):
        self.device = device
        self.cuda_device = cuda_device
        self.cull_backfaces = bool(cull_backfaces)
        self._ctx = None
        self._pid = None
        self._objects: dict[int, _GpuMesh] = {}
        self._programs: dict = {}
        self._targets: dict = {}

    # -- context and GL objects -------------------------------------------------------------
    @property
    def ctx(self):
        """The moderngl context (created lazily)."""
        if self._ctx is None:
            self._ctx = get_context(self.device, self.cuda_device)
            self._pid = os.getpid()
        elif self._pid != os.getpid():
            check_not_forked()
        return self._ctx

    @property
    def description(self) -> str:
        """The renderer in use, one line: GL renderer and version (creates the context)."""
        return describe(self.ctx)

    def _program(self, name: str):
        prog = self._programs.get(name)
        if prog is None:
            src = {
                "headlight": (shaders.VERTEX, shaders.HEADLIGHT_FRAGMENT),
                "scene": (shaders.SCENE_VERTEX, shaders.SCENE_FRAGMENT),
            }[name]
            prog = self._programs[name] = self.ctx.program(vertex_shader=src[0], fragment_shader=src[1])
        return prog

    def _max_size(self) -> int:
        """Largest framebuffer side (pixels) this OpenGL supports."""
        info = self.ctx.info
        return int(min(info["GL_MAX_RENDERBUFFER_SIZE"], *info["GL_MAX_VIEWPORT_DIMS"]))

    def _target(self, kind: str, width: int, height: int, views: int = 1):
        """A cached framebuffer for ``views`` stacked H x W tiles ('views': RG32F + depth;
        'scene': RGBA8 + RG32F + depth)."""
        key = (kind, width, height)
        entry = self._targets.get(key)
        if entry is not None and entry[1] >= views:
            return entry[0]
        if entry is not None:
            for obj in entry[2]:
                obj.release()
        ctx = self.ctx
        size = (width, height * views)
        limit = self._max_size()
        if size[0] > limit or size[1] > limit:
            raise ValueError(f"render size {width}x{height} exceeds this OpenGL's limit of {limit} pixels")
        if kind == "views":
            attachments = [ctx.renderbuffer(size, components=2, dtype="f4")]
        else:
            attachments = [ctx.renderbuffer(size, components=4, dtype="f1"),
                           ctx.renderbuffer(size, components=2, dtype="f4")]
        depth = ctx.depth_renderbuffer(size)
        fbo = ctx.framebuffer(color_attachments=attachments, depth_attachment=depth)
        self._targets[key] = (fbo, views, [fbo, depth, *attachments])
        return fbo

    # -- objects ------------------------------------------------------------------------------
    def add_object(self, obj_id: int, mesh) -> None:
        """Upload a mesh (a :class:`Mesh` or a file path) under ``obj_id``; replaces an earlier one."""
        if not isinstance(mesh, Mesh):
            mesh = load_mesh(mesh)
        key = _obj_key(obj_id)
        old = self._objects.pop(key, None)
        if old is not None:
            old.release()
        self._objects[key] = _GpuMesh(self.ctx, mesh)

    def remove_object(self, obj_id: int) -> None:
        """Free the GPU buffers of ``obj_id`` (no error if absent)."""
        old = self._objects.pop(_obj_key(obj_id), None)
        if old is not None:
            old.release()

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    def mesh(self, obj_id: int) -> Mesh:
        """The uploaded mesh of ``obj_id``."""
        return self._lookup([obj_id])[0].mesh

    def _lookup(self, obj_ids: Iterable, what: str = "view {}") -> list[_GpuMesh]:
        out = []
        for i, oid in enumerate(obj_ids):
            gpu = self._objects.get(_obj_key(oid))
            if gpu is None:
                raise ValueError(f"unknown obj_id {oid} ({what.format(i)}): add it with add_object first; "
                                 f"known: {self.object_ids}")
            out.append(gpu)
        return out

    # -- rendering ----------------------------------------------------------------------------
    def render(self, obj_ids, R, t, K, width: int = 256, height: int = 256) -> RenderResult:
        """Render N views (one object each) with the MODEL.md §4 head-light shading.

        Args:
            obj_ids: (N,) ids given to :meth:`add_object`.
            R: (N, 3, 3) rotations model -> camera. t: (N, 3) translations, mm.
            K: (N, 3, 3) or (3, 3) OpenCV camera matrices (pixels).
            width, height: image size in pixels (the same for all N views).
        Returns:
            :class:`RenderResult`. An object behind the camera or outside the view gives an
            empty mask.
        Raises:
            ValueError: NaN/inf or non-orthonormal R, bad t/K/size, unknown obj_id (naming the view).
        """
        return _render_result(self._render_headlight(obj_ids, R, t, K, width, height))

    def render_network_input(self, obj_ids, R, t, K, size: int = 256) -> np.ndarray:
        """The stage-2 input of N views, straight from the framebuffer read: (N, 4, S, S) float32,
        channels 0-2 the grey level (BGR), channel 3 the box map of the mask; equal to
        ``render(...).network_input()`` without the (N, S, S, 3) colour, depth and map copies
        (arguments as :meth:`render`, square ``size`` x ``size`` views).

        CUDA-GL interop would go here: with the renderer and the backend on one GPU, the
        framebuffer could be registered with CUDA (``cudaGraphicsGLRegisterImage``) and this
        tensor built on the device for the regressor, skipping the read back to the host.
        """
        return _network_input(self._render_headlight(obj_ids, R, t, K, size, size))

    def render_scene(self, objects, K, width: int, height: int, lights=None, background=None,
                     ambient=None):
        """Render several objects in one image (synthetic data); see :func:`render.scene.render_scene`."""
        return render_scene(self, objects, K, width, height, lights=lights, background=background,
                            ambient=ambient)

    def _render_headlight(self, obj_ids, R, t, K, width, height) -> np.ndarray:
        """(N, H, W, 2) float32: MODEL.md §4 grey level and camera z (mm, 0 = background)."""
        ids = np.asarray(obj_ids).reshape(-1)
        n = len(ids)
        R, t = cam.check_poses(R, t, n)
        K = cam.check_intrinsics(K, n)
        width, height = cam.check_size(width, height)
        gpus = self._lookup(ids)
        out = np.empty((n, height, width, 2), np.float32)
        if n == 0:
            return out
        # per-view uniforms, computed at once in float64
        centres = np.stack([g.centre for g in gpus])
        radii = np.array([g.radius for g in gpus])
        z_centre = np.einsum("nij,nj->ni", R, centres)[:, 2] + t[:, 2]
        near, far, visible = cam.depth_range(z_centre, radii)
        norm_t = np.linalg.norm(t, axis=1, keepdims=True)
        light = np.where(norm_t > 0, -t / np.maximum(norm_t, 1e-300), np.array([0.0, 0.0, -1.0]))
        R_bytes = [np.ascontiguousarray(r.T, dtype=np.float32).tobytes() for r in R]
        P_bytes = [np.ascontiguousarray(cam.projection(K[i], width, height, near[i], far[i]).T,
                                        dtype=np.float32).tobytes() for i in range(n)]
        t32, light32 = t.astype(np.float32), light.astype(np.float32)

        ctx = self.ctx
        prog = self._program("headlight")
        u_R, u_t, u_P, u_light = prog["u_R"], prog["u_t"], prog["u_P"], prog["u_light"]
        per_pass = max(1, min(MAX_VIEWS_PER_PASS, self._max_size() // height))
        for start in range(0, n, per_pass):
            views = range(start, min(n, start + per_pass))
            if not visible[start:views.stop].any():
                out[start:views.stop] = 0.0
                continue
            k = len(views)
            fbo = self._target("views", width, height, min(n, per_pass))
            fbo.use()
            ctx.scissor = None
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=(0, 0, width, height * k))
            if self.cull_backfaces:
                ctx.enable_only(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
                ctx.front_face = "cw"  # window y is the image row: camera-facing triangles turn clockwise
                ctx.cull_face = "back"
            else:
                ctx.enable_only(moderngl.DEPTH_TEST)
            ctx.depth_func = "<"
            for j, i in enumerate(views):
                if not visible[i]:
                    continue
                tile = (0, j * height, width, height)
                ctx.viewport = tile
                ctx.scissor = tile
                u_R.write(R_bytes[i])
                u_t.write(t32[i].tobytes())
                u_P.write(P_bytes[i])
                u_light.write(light32[i].tobytes())
                gpus[i].vao(prog, with_color=False).render(moderngl.TRIANGLES)
            ctx.scissor = None
            fbo.read_into(out[views.start:views.stop], viewport=(0, 0, width, height * k),
                          components=2, attachment=0, alignment=4, dtype="f4")
        return out

    def release(self) -> None:
        """Free every GPU object of this renderer (the shared context stays)."""
        for key in list(self._objects):
            self.remove_object(key)
        for fbo_entry in self._targets.values():
            for obj in fbo_entry[2]:
                obj.release()
        self._targets.clear()
        for prog in self._programs.values():
            prog.release()
        self._programs.clear()


def _render_result(raw: np.ndarray) -> RenderResult:
    """RenderResult of a framebuffer read ``raw`` (N, H, W, 2): grey level, camera z (mm)."""
    width, height = raw.shape[2], raw.shape[1]
    depth = np.ascontiguousarray(raw[..., 1])
    mask = depth > 0
    rgb = np.repeat(raw[..., :1], 3, axis=-1)
    loc = box_loc_from_masks(mask)
    bmap = box_map(loc, size=width) if width == height else None
    return RenderResult(rgb=rgb, mask=mask, depth=depth, box_map=bmap, box_loc=loc)


def _network_input(raw: np.ndarray) -> np.ndarray:
    """The stage-2 input of a framebuffer read ``raw`` (N, S, S, 2) -> (N, 4, S, S) float32: the grey
    level in channels 0-2, the box map of the mask (z > 0) in channel 3."""
    n, size = raw.shape[0], raw.shape[1]
    out = np.empty((n, 4, size, size), np.float32)
    out[:, 0] = raw[..., 0]
    out[:, 1] = out[:, 0]
    out[:, 2] = out[:, 0]
    box_map(box_loc_from_masks(raw[..., 1] > 0), size=size, out=out[:, 3])
    return out


def _obj_key(obj_id) -> int:
    """Object ids are integers (BOP ids); numpy integers and integral floats are accepted."""
    try:
        key = int(obj_id)
    except (TypeError, ValueError):
        raise ValueError(f"obj_id must be an integer, got {obj_id!r}") from None
    if key != obj_id:
        raise ValueError(f"obj_id must be an integer, got {obj_id!r}")
    return key

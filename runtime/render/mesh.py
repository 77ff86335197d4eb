"""Triangle meshes for the renderer: loading (BOP PLY, OBJ via trimesh) and MODEL.md §4 vertex normals.

Vertices are kept exactly as the file stores them (no merging, no reordering: ``process=False``),
so a model made of several meshes with duplicated vertices along their seams shades like the
official renderer does. Units are the file's (BOP models: millimetres).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

from ..errors import error_line


class MeshError(ValueError):
    """A mesh file that cannot be rendered (missing, unreadable, no faces, bad indices)."""


@dataclass(frozen=True, eq=False)
class Mesh:
    """An indexed triangle mesh ready to upload.

    Attributes:
        vertices: (V, 3) float32, model units (mm for BOP models).
        faces: (F, 3) int32 vertex indices, F >= 1.
        normals: (V, 3) float32 unit vertex normals, area-weighted (:func:`vertex_normals`);
            zero for vertices that belong to no face or only to degenerate faces.
        colors: (V, 3) float32 RGB in [0, 1], or None when the file has no colour.
        uv: (V, 2) float32 texture coordinates, or None.
        name: where the mesh came from (a path, or ``"<arrays>"``), used in error messages.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: Optional[np.ndarray] = None
    uv: Optional[np.ndarray] = None
    name: str = "<arrays>"

    @classmethod
    def from_arrays(cls, vertices, faces, colors=None, uv=None, name: str = "<arrays>") -> "Mesh":
        """Build a mesh from arrays; normals are computed with :func:`vertex_normals`.

        Args:
            vertices: (V, 3) positions (mm). faces: (F, 3) indices into ``vertices``.
            colors: optional (V, 3) RGB in [0, 1] (or uint8 0..255). uv: optional (V, 2).
        Raises:
            MeshError: no faces, wrong shapes, non-finite vertices or out-of-range indices.
        """
        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
            raise MeshError(f"mesh {name}: vertices must be (V, 3) with V >= 1, got shape {v.shape}")
        if f.size == 0:
            raise MeshError(f"mesh {name} has no faces (a point cloud cannot be rendered)")
        if f.ndim != 2 or f.shape[1] != 3:
            raise MeshError(f"mesh {name}: faces must be triangles (F, 3), got shape {f.shape}")
        if not np.all(np.isfinite(v)):
            raise MeshError(f"mesh {name} has NaN/inf vertex coordinates")
        if f.min() < 0 or f.max() >= len(v):
            raise MeshError(f"mesh {name}: face indices out of range [0, {len(v)})")
        f = f.astype(np.int32)
        c = None
        if colors is not None:
            c = np.asarray(colors)
            c = c[:, :3].astype(np.float32) / (255.0 if c.dtype == np.uint8 else 1.0)
            if c.shape != (len(v), 3):
                raise MeshError(f"mesh {name}: colors must be (V, 3), got shape {c.shape}")
        t = None if uv is None else np.asarray(uv, dtype=np.float32).reshape(len(v), 2)
        return cls(
            vertices=v.astype(np.float32),
            faces=f,
            normals=vertex_normals(v, f),
            colors=c,
            uv=t,
            name=str(name),
        )

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @cached_property
    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """(centre (3,) float64 mm, radius mm) of a sphere holding every vertex (box centre)."""
        v = self.vertices.astype(np.float64)
        centre = (v.min(axis=0) + v.max(axis=0)) / 2
        return centre, float(np.sqrt(((v - centre) ** 2).sum(axis=1).max()))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (docs/MODEL.md §4).

    Each vertex gets the normalised sum of the *unnormalised* cross products
    ``(v1 - v0) x (v2 - v0)`` of the faces that use it (so each face weighs by twice its area).
    Only faces listed for a vertex index count: duplicated vertices are not merged.

    Args:
        vertices: (V, 3) float. faces: (F, 3) int.
    Returns:
        (V, 3) float32; zero rows for vertices with no (non-degenerate) face.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    idx = f.reshape(-1)
    w = np.repeat(fn, 3, axis=0)
    for k in range(3):
        n[:, k] = np.bincount(idx, weights=w[:, k], minlength=len(v))
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0).astype(np.float32)


def load_mesh(path) -> Mesh:
    """Load a PLY (ascii or binary) or OBJ model through trimesh, vertices as stored.

    Normals stored in the file are ignored (recomputed area-weighted, docs/MODEL.md §4); vertex colours are
    kept (RGB in [0, 1]); a texture, when trimesh can read it, is sampled into vertex colours and
    the texture coordinates are kept in ``uv``. Several meshes in one file are concatenated.

    Args:
        path: file path (str or PathLike).
    Raises:
        MeshError (a ValueError): the file is missing, unreadable, or has no faces.
    """
    import trimesh  # slow to import (about 0.5 s): loaded when the first mesh is read, not with the runtime

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeshError(f"mesh file not found: {path}")
    try:  # fix_texture=False: never split vertices by texture coordinate (keep the file's vertices)
        tm = trimesh.load(path, force="mesh", process=False, maintain_order=True, fix_texture=False)
    except Exception as e:  # trimesh raises many types; one clear line for the user
        raise MeshError(f"cannot read mesh {path}: {error_line(e, with_type=True)}") from e
    faces = getattr(tm, "faces", None)
    if faces is None or len(faces) == 0:
        raise MeshError(f"mesh {path} has no faces (a point cloud cannot be rendered)")
    colors, uv = _visual_arrays(tm)
    return Mesh.from_arrays(tm.vertices, faces, colors=colors, uv=uv, name=path)


def _visual_arrays(tm) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(vertex colours (V,3) uint8 or None, uv (V,2) or None) of a trimesh mesh.

    Colours: the PLY's own per-vertex red/green/blue first (trimesh hides them behind a texture
    when the file also has texture coordinates), else trimesh's colour visuals, else the texture
    image (when one was loaded) sampled at each vertex.
    """
    n = len(tm.vertices)
    visual = getattr(tm, "visual", None)
    kind = getattr(visual, "kind", None)
    uv = getattr(visual, "uv", None) if kind == "texture" else None
    uv = np.asarray(uv) if uv is not None and len(uv) == n else None
    raw = (tm.metadata or {}).get("_ply_raw", {}).get("vertex", {}).get("data")
    if isinstance(raw, dict) and all(c in raw for c in ("red", "green", "blue")):
        rgb = np.column_stack([np.asarray(raw[c]).reshape(-1) for c in ("red", "green", "blue")])
        if len(rgb) == n:
            return (rgb.astype(np.uint8) if rgb.dtype.kind in "ui" else rgb.astype(np.float32)), uv
    if kind in ("vertex", "face"):
        return np.asarray(visual.vertex_colors)[:, :3], uv
    if kind == "texture" and getattr(getattr(visual, "material", None), "image", None) is not None:
        try:
            return np.asarray(visual.to_color().vertex_colors)[:, :3], uv
        except Exception:  # an unreadable texture is not fatal: render untextured
            pass
    return None, uv

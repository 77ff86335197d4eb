"""Procedural T-LESS-like industrial parts with symmetries declared by construction.

Each part family builds a textureless mesh in millimetres (overall sizes about 30-150 mm) with
trimesh (boolean operations through manifold3d) *and* the rigid transformations that map the part
onto itself. Declared symmetries are what the construction guarantees; sizes are drawn so that no
accidental extra symmetry appears (e.g. box sides differ by at least 15 %).

Output (:func:`write_objects`): a BOP models folder

    <out>/models/obj_000001.ply ...   binary PLY, vertices split at sharp edges (crisp shading)
    <out>/models/models_info.json     diameter, min/size, symmetries_discrete / _continuous
    <out>/models_eval/                a copy of models/ (BOP evaluation models)

Models are centred on their bounding-box centre. Symmetries follow BOP: a discrete symmetry is a
4x4 matrix ``[[R, t], [0, 1]]`` (t in mm) with ``R X + t`` mapping the model onto itself; a
continuous one is ``{"axis", "offset"}`` (rotation by any angle about ``axis`` through ``offset``).
:func:`check_symmetries` renders a part at R and at ``R * S`` for each declared ``S`` and compares
the masks.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from mrcnet.runtime.rotations import random_rotation

from . import bop

log = logging.getLogger(__name__)

ROUND_SECTIONS = 64  # polygon sides of round features (continuous symmetry): < 0.15 % radial error
#: smallest mask IoU between renders at R and R*S for a declared symmetry S to hold (continuous
#: symmetries of 64-gon approximations reach about 0.997 at 128 px; asymmetric turns < 0.9)
SYMMETRY_IOU_MIN = 0.99


# --------------------------------------------------------------------------------------------
# Small geometry helpers.
# --------------------------------------------------------------------------------------------

def _rot(axis, angle: float) -> np.ndarray:
    return bop.rotation_about_axis(angle, axis)


def _T(R=None, t=None) -> np.ndarray:
    """4x4 rigid transform from R (3, 3) and t (3,)."""
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = R
    if t is not None:
        T[:3, 3] = t
    return T


def _cyclic(axis, n: int) -> list[np.ndarray]:
    """The n-1 non-identity rotations of the cyclic group C_n about ``axis`` (through the origin)."""
    return [_T(_rot(axis, 2 * np.pi * k / n)) for k in range(1, n)]


def _dihedral(n: int) -> list[np.ndarray]:
    """The 2n-1 non-identity elements of D_n: C_n about z, and the n flips about x rotated by C_n."""
    flips = [_T(_rot([0, 0, 1], 2 * np.pi * k / n) @ _rot([1, 0, 0], np.pi)) for k in range(n)]
    return _cyclic([0, 0, 1], n) + flips


Z_AXIS = {"axis": [0.0, 0.0, 1.0], "offset": [0.0, 0.0, 0.0]}
FLIP_X = _T(_rot([1, 0, 0], np.pi))


def _box(ex, ey, ez, centre=(0, 0, 0)):
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built
    m = trimesh.creation.box(extents=(ex, ey, ez))
    m.apply_translation(centre)
    return m


def _cyl(radius, height, centre=(0, 0, 0), axis="z", sections=ROUND_SECTIONS):
    """Cylinder along ``axis`` ('x', 'y' or 'z') centred at ``centre``."""
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built
    m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    if axis == "x":
        m.apply_transform(_T(_rot([0, 1, 0], np.pi / 2)))
    elif axis == "y":
        m.apply_transform(_T(_rot([1, 0, 0], np.pi / 2)))
    m.apply_translation(centre)
    return m


def _union(*meshes):
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built
    return trimesh.boolean.union(list(meshes), engine="manifold")


def _minus(base, *cutters):
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built
    return trimesh.boolean.difference([base, *cutters], engine="manifold")


def _distinct(rng, lo, hi, n, min_ratio=1.15, tries=1000):
    """n sizes in [lo, hi], sorted descending, each at least ``min_ratio`` times the next."""
    for _ in range(tries):
        v = np.sort(rng.uniform(lo, hi, n))[::-1]
        if np.all(v[:-1] / v[1:] >= min_ratio):
            return v
    raise RuntimeError("cannot draw distinct sizes")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Part families: rng -> (trimesh.Trimesh, discrete symmetries [4x4], continuous symmetries).
# --------------------------------------------------------------------------------------------

def make_bracket(rng):
    """Asymmetric bracket: block with a corner notch (through z), a rebate along one edge (through
    x), an off-centre hole and an off-centre side pin. No symmetry, and none of its outlines along
    the block's axes is symmetric either, so a turned bracket never shows the same silhouette
    (tests/reference/data/test_synth.py; with a through notch only, a roll about the pin kept the end-on outline)."""
    a, b, c = _distinct(rng, 25, 110, 3)
    body = _box(a, b, c)
    notch = _box(a * 0.5, b * 0.55, c * 1.2, centre=(a * 0.5, b * 0.4, 0))
    rebate = _box(a * 1.2, b * 0.4, c * 0.5, centre=(0, b * 0.4, c * 0.35))
    r = min(a, b) * 0.09
    hole = _cyl(r, c * 2, centre=(-a * 0.22, -b * 0.18, 0), sections=32)
    pin = _cyl(min(b, c) * 0.2, a * 0.35, centre=(-a * 0.65, -b * 0.2, -c * 0.2), axis="x",
               sections=32)
    return _union(_minus(body, notch, rebate, hole), pin), [], []


def make_bushing(rng):
    """Cylinder with a coaxial through bore: continuous about z, and the flip about x."""
    R = rng.uniform(15, 55)
    h = rng.uniform(0.5, 2.0) * R
    bore = _cyl(R * rng.uniform(0.3, 0.6), h * 2)
    return _minus(_cyl(R, h), bore), [FLIP_X], [Z_AXIS]


def make_plate_holes(rng):
    """Rectangular plate with four corner holes and a central hole: D2 (three 180 deg turns)."""
    a, b = _distinct(rng, 40, 150, 2, min_ratio=1.2)
    t = rng.uniform(5, 14)
    r = min(a, b) * rng.uniform(0.06, 0.1)
    cut = [_cyl(r, t * 3, centre=(sx * a * 0.35, sy * b * 0.32, 0), sections=32)
           for sx in (-1, 1) for sy in (-1, 1)]
    cut.append(_cyl(min(a, b) * 0.18, t * 3, sections=32))
    return _minus(_box(a, b, t), *cut), [_T(_rot(ax, np.pi)) for ax in np.eye(3)], []


def make_connector(rng):
    """Block with two pins on top and a through hole along y: the 180 deg turn about z."""
    a, b, c = _distinct(rng, 25, 100, 3)
    body = _box(a, b, c)
    pin_r = min(a, b) * 0.12
    pins = [_cyl(pin_r, c * 0.8, centre=(s * a * 0.28, 0, c * 0.5 + c * 0.3), sections=32) for s in (-1, 1)]
    hole = _cyl(min(a, c) * 0.15, b * 2, axis="y", sections=32)
    return _minus(_union(body, *pins), hole), [_T(_rot([0, 0, 1], np.pi))], []


def make_hex_nut(rng):
    """Hexagonal prism with a round bore: D6 (5 turns about z, 6 flips)."""
    R = rng.uniform(18, 55)
    h = R * rng.uniform(0.35, 0.9)
    # 48 bore sides: a multiple of 6 and symmetric about x, so the bore keeps the D6 symmetry
    return _minus(_cyl(R, h, sections=6), _cyl(R * rng.uniform(0.35, 0.55), h * 2, sections=48)), \
        _dihedral(6), []


def make_l_bracket(rng):
    """Equal-legged L bracket with a hole in each leg: the 180 deg turn about the (1, 0, 1) diagonal."""
    L = rng.uniform(40, 120)
    T = L * rng.uniform(0.1, 0.2)
    W = L * rng.uniform(0.4, 0.8)
    leg_a = _box(L, W, T, centre=(L / 2, 0, T / 2))
    S = _T(_rot([1, 0, 1], np.pi))  # (x, y, z) -> (z, -y, x): maps leg A onto leg B
    leg_b = leg_a.copy()
    leg_b.apply_transform(S)
    hole_a = _cyl(min(W, L) * 0.12, T * 3, centre=(L * 0.65, 0, T / 2), sections=32)
    hole_b = hole_a.copy()
    hole_b.apply_transform(S)
    return _minus(_union(leg_a, leg_b), hole_a, hole_b), [S], []


def make_cap(rng):
    """Cylinder with a blind bore from the top: continuous about z only."""
    R = rng.uniform(15, 50)
    h = rng.uniform(0.6, 2.0) * R
    depth = h * rng.uniform(0.4, 0.75)
    bore = _cyl(R * rng.uniform(0.4, 0.7), depth * 2, centre=(0, 0, h / 2))
    return _minus(_cyl(R, h), bore), [], [Z_AXIS]


def make_flange(rng):
    """Disc with a hub on one side, a bore and four bolt holes: C4 about z."""
    R = rng.uniform(25, 70)
    t = R * rng.uniform(0.12, 0.25)
    hub_r = R * rng.uniform(0.35, 0.5)
    hub_h = R * rng.uniform(0.3, 0.7)
    disc = _cyl(R, t, centre=(0, 0, t / 2))
    hub = _cyl(hub_r, hub_h, centre=(0, 0, t + hub_h / 2 - 0.01 * t))
    bolt_r = (R - hub_r) * rng.uniform(0.15, 0.25)
    ring = (R + hub_r) / 2
    bolts = [_cyl(bolt_r, t * 3, centre=(ring * np.cos(a), ring * np.sin(a), t / 2), sections=32)
             for a in np.arange(4) * np.pi / 2]
    bore = _cyl(hub_r * 0.55, (t + hub_h) * 3)
    return _minus(_union(disc, hub), bore, *bolts), _cyclic([0, 0, 1], 4), []


def make_block(rng):
    """Box with distinct sides and a central through hole along z: D2."""
    a, b, c = _distinct(rng, 25, 120, 3)
    hole = _cyl(min(a, b) * rng.uniform(0.1, 0.25), c * 3, sections=32)
    return _minus(_box(a, b, c), hole), [_T(_rot(ax, np.pi)) for ax in np.eye(3)], []


def make_plate_slot(rng):
    """Plate with a central hole and one off-centre hole on the x axis: the flip about x only."""
    a, b = _distinct(rng, 40, 150, 2, min_ratio=1.2)
    t = rng.uniform(5, 14)
    cut = [_cyl(min(a, b) * 0.15, t * 3, sections=32),
           _cyl(min(a, b) * 0.1, t * 3, centre=(a * 0.32, 0, 0), sections=32)]
    return _minus(_box(a, b, t), *cut), [FLIP_X], []


def make_stepped_shaft(rng):
    """Two coaxial cylinders of different radii with a through bore: continuous about z only."""
    R1 = rng.uniform(15, 45)
    R2 = R1 * rng.uniform(0.45, 0.75)
    h1 = R1 * rng.uniform(0.4, 1.0)
    h2 = R1 * rng.uniform(0.6, 1.6)
    big = _cyl(R1, h1, centre=(0, 0, h1 / 2))
    small = _cyl(R2, h2, centre=(0, 0, h1 + h2 / 2 - 0.01 * h1))
    bore = _cyl(R2 * 0.5, (h1 + h2) * 3)
    return _minus(_union(big, small), bore), [], [Z_AXIS]


#: name -> builder, in the order parts are made (object i uses family i mod len): the first three
#: cover no symmetry, continuous + discrete, and a discrete group.
FAMILIES: dict[str, Callable] = {
    "bracket": make_bracket,
    "bushing": make_bushing,
    "plate_holes": make_plate_holes,
    "connector": make_connector,
    "hex_nut": make_hex_nut,
    "l_bracket": make_l_bracket,
    "cap": make_cap,
    "flange": make_flange,
    "block": make_block,
    "plate_slot": make_plate_slot,
    "stepped_shaft": make_stepped_shaft,
}


# --------------------------------------------------------------------------------------------
# Assembling a part: centring, symmetries in the centred frame, models_info entry.
# --------------------------------------------------------------------------------------------

@dataclass
class Part:
    """A generated part. ``mesh``: trimesh.Trimesh in mm, centred on its bounding-box centre,
    vertices split at sharp edges. ``info``: its models_info entry. ``family``: builder name."""

    obj_id: int
    family: str
    mesh: object
    info: bop.ModelInfo


def _clean(x: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    x = np.where(np.abs(x) < tol, 0.0, x)
    return x + 0.0  # no negative zeros


def make_part(obj_id: int, family: str, seed: int) -> Part:
    """Build one part of ``family`` deterministically from ``(seed, obj_id)``."""
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built

    if family not in FAMILIES:
        raise ValueError(f"unknown part family {family!r}; known: {', '.join(FAMILIES)}")
    rng = np.random.default_rng([int(seed), int(obj_id)])
    mesh, disc, cont = FAMILIES[family](rng)
    if not mesh.is_watertight:
        log.warning("part %d (%s) is not watertight", obj_id, family)
    lo, hi = mesh.bounds
    c = (lo + hi) / 2
    mesh.apply_translation(-c)
    # symmetry x -> R x + t of the original maps the centred part by R y + (R c + t - c)
    disc_c = []
    for S in disc:
        S = np.asarray(S, dtype=np.float64).copy()
        S[:3, 3] = S[:3, :3] @ c + S[:3, 3] - c
        disc_c.append(_clean(np.round(S, 12)))
    cont_c = [{"axis": _clean(np.asarray(s["axis"], float)),
               "offset": _clean(np.round(np.asarray(s["offset"], float) - c, 9))} for s in cont]
    # split vertices at sharp edges so that area-weighted vertex normals keep the edges crisp
    shaded = trimesh.graph.smooth_shade(mesh, angle=np.radians(30), facet_minarea=None)
    verts = np.asarray(shaded.vertices, dtype=np.float64)
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    info = bop.ModelInfo(
        diameter=float(points_diameter(verts)),
        min_x=float(lo[0]), min_y=float(lo[1]), min_z=float(lo[2]),
        size_x=float(hi[0] - lo[0]), size_y=float(hi[1] - lo[1]), size_z=float(hi[2] - lo[2]),
        symmetries_discrete=disc_c, symmetries_continuous=cont_c)
    return Part(obj_id=obj_id, family=family, mesh=shaded, info=info)


def points_diameter(pts: np.ndarray) -> float:
    """Largest distance (mm) between two of the (N, 3) points (through their convex hull)."""
    pts = np.asarray(pts, dtype=np.float64)
    try:
        from scipy.spatial import ConvexHull  # scipy: the train extra, slow to import
        pts = pts[ConvexHull(pts).vertices]
    except Exception:  # degenerate (flat) point sets: fall back to all points
        pass
    best = 0.0
    for i in range(0, len(pts), 512):
        d = ((pts[i:i + 512, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d.max()))
    return float(np.sqrt(best))


def write_ply(path, mesh) -> None:
    """Binary little-endian PLY with float x, y, z, nx, ny, nz and int faces, written atomically.

    The header carries no timestamp, so equal meshes give equal bytes.
    """
    v = np.asarray(mesh.vertices, dtype="<f4")
    n = np.asarray(mesh.vertex_normals, dtype="<f4")
    f = np.asarray(mesh.faces, dtype="<i4")
    header = ("ply\nformat binary_little_endian 1.0\ncomment mrcnet-synth procedural part, mm\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property float nx\nproperty float ny\nproperty float nz\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    vert = np.empty(len(v), dtype=[("p", "<f4", 3), ("n", "<f4", 3)])
    vert["p"], vert["n"] = v, n
    face = np.empty(len(f), dtype=[("k", "u1"), ("i", "<i4", 3)])
    face["k"], face["i"] = 3, f
    with bop.atomic_open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vert.tobytes())
        fh.write(face.tobytes())


def family_for(index: int, families: list[str] | None = None) -> str:
    """The family of the ``index``-th part (0-based): round robin over ``families``."""
    names = list(families or FAMILIES)
    return names[index % len(names)]


def write_objects(out_dir, count: int, seed: int = 0, families: list[str] | None = None,
                  progress: bool = True, eval_copy: bool = True) -> list[Part]:
    """Write ``count`` parts (obj ids 1..count) as a BOP models folder under ``out_dir``.

    :param out_dir: dataset folder; writes ``models/`` (and ``models_eval/`` when ``eval_copy``).
    :param seed: same seed, same bytes.
    :param families: family names to cycle through (default: all, in :data:`FAMILIES` order).
    :return: the parts.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    for fam in families or []:
        if fam not in FAMILIES:
            raise ValueError(f"unknown part family {fam!r}; known: {', '.join(FAMILIES)}")
    models = Path(out_dir) / "models"
    models.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in tqdm(range(count), desc="objects", unit="obj", disable=not progress):
        part = make_part(i + 1, family_for(i, families), seed)
        write_ply(models / f"obj_{part.obj_id:06d}.ply", part.mesh)
        parts.append(part)
    bop.save_models_info(models / "models_info.json", {p.obj_id: p.info for p in parts})
    if eval_copy:
        ev = Path(out_dir) / "models_eval"
        ev.mkdir(parents=True, exist_ok=True)
        for p in sorted(models.iterdir()):
            if p.suffix in (".ply", ".json"):
                shutil.copyfile(p, ev / p.name)
    return parts


# --------------------------------------------------------------------------------------------
# Symmetry check by rendering.
# --------------------------------------------------------------------------------------------

def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def symmetry_samples(info: bop.ModelInfo, n_continuous: int = 3, rng=None) -> list[np.ndarray]:
    """4x4 transforms to check: every declared discrete symmetry, and for each continuous one
    ``n_continuous`` random angles (combined with a random discrete one when there are any)."""
    rng = rng or np.random.default_rng(0)
    out = [np.asarray(S, float).reshape(4, 4) for S in info.symmetries_discrete]
    for s in info.symmetries_continuous:
        o = np.asarray(s["offset"], float)
        for _ in range(n_continuous):
            R = bop.rotation_about_axis(rng.uniform(0.1, 2 * np.pi - 0.1), s["axis"])
            C = _T(R, o - R @ o)
            if info.symmetries_discrete:
                D = out[int(rng.integers(len(info.symmetries_discrete)))]
                C = C @ D
            out.append(C)
    return out


def check_symmetries(renderer, obj_id: int, info: bop.ModelInfo, n_poses: int = 2,
                     size: int = 128, seed: int = 0, transforms: list | None = None,
                     rotations: list | None = None) -> list[float]:
    """Render the part (already added to ``renderer`` as ``obj_id``) at random R and at
    ``R * S`` (pose ``(R R_s, R t_s + t)``) for each symmetry S; return the mask IoU of each pair.

    :param transforms: 4x4 transforms to test (default: :func:`symmetry_samples`).
    :param rotations: (3, 3) views R to test instead of ``n_poses`` random ones.
    :return: IoUs, one per (view, transform), view-major; an empty list for an asymmetric part.
    """
    rng = np.random.default_rng(seed)
    Ss = symmetry_samples(info, rng=rng) if transforms is None else [np.asarray(S, float) for S in transforms]
    if not Ss:
        return []
    f = size * 1.2
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    z = 1.2 * f * info.diameter / size  # the part spans about 80 % of the view
    views = [random_rotation(rng) for _ in range(n_poses)] if rotations is None else rotations
    ious = []
    for R in views:
        R = np.asarray(R, np.float64)
        t = np.array([0.0, 0.0, z])
        Rs = [R] + [R @ S[:3, :3] for S in Ss]
        ts = [t] + [R @ S[:3, 3] + t for S in Ss]
        out = renderer.render(np.full(len(Rs), obj_id), np.stack(Rs), np.stack(ts), K,
                              width=size, height=size)
        ious += [mask_iou(out.mask[0], m) for m in out.mask[1:]]
    return ious


# --------------------------------------------------------------------------------------------
# Distractors: simple shapes that occlude but are not annotated.
# --------------------------------------------------------------------------------------------

def make_distractor(rng):
    """A random non-target shape (sphere, torus, capsule, cone, slab), mm, centred:
    trimesh.Trimesh about 20-120 mm across."""
    import trimesh  # trimesh: slow to import (about 0.5 s), only when meshes are built

    kind = int(rng.integers(5))
    s = rng.uniform(10, 60)
    if kind == 0:
        m = trimesh.creation.icosphere(subdivisions=3, radius=s)
    elif kind == 1:
        m = trimesh.creation.torus(major_radius=s, minor_radius=s * rng.uniform(0.15, 0.4))
    elif kind == 2:
        m = trimesh.creation.capsule(height=s * rng.uniform(1, 3), radius=s * rng.uniform(0.2, 0.5))
    elif kind == 3:
        m = trimesh.creation.cone(radius=s, height=s * rng.uniform(1, 2.5))
    else:
        m = trimesh.creation.box(extents=rng.uniform(0.2, 1.0, 3) * 2 * s)
    lo, hi = m.bounds
    m.apply_translation(-(lo + hi) / 2)
    return m

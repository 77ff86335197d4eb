"""Training targets (docs/MODEL.md §5): symmetry tensors, symmetry matching, soft bin labels.

Shared by the sample pipeline (:mod:`mrcnet.data.samples`, one sample at a time) and the losses
(:mod:`mrcnet.train.losses`, batched): every function takes torch tensors with any leading batch
dimensions ``...`` and works on CPU or GPU. Units: millimetres (vertices, translations), crop units
for 2D offsets (``[-0.5, 0.5]``), normalised depth ``d = t_z / fx_roi``.

Definitions (the official release's):

- Symmetry-closest member: among the symmetry transforms ``(S_R, S_t)`` of the object, the pose
  ``(R S_R, R S_t + t)`` whose rotation is closest to a reference rotation ``R_ref`` in mean squared
  vertex distance, i.e. the one maximising ``tr(C R_ref^T R S_R)`` with ``C = mean(v v^T)`` the
  vertices' second moment (closed form, no loop over vertices).
- Rotation labels: for each prototype ``P`` the symmetry member ``(R', t')`` closest to ``P``;
  ``e = mean_v |R' v + t' - P v|`` (mm); label ``exp(-e / (0.03 * diameter))`` in (0, 1].
- Depth labels: ``softmax_i(-((d - c_i) / (0.5 * spacing))^2)`` over the bin centres ``c_i``.
- Cell labels: the same on the 2D grid with the squared distance to the cell centres; it
  factorises into the outer product of the x and y 1D labels, flattened row-major (``iy * n + ix``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mrcnet.data.bop import rotation_about_axis, symmetry_transforms
from mrcnet.geometry import quat_to_matrix
from mrcnet.runtime.geometry import BinSpec, cell_centers, depth_bin_centers, rotation_prototypes

ROT_SIGMA = 0.03  # rotation label width, as a fraction of the object diameter
DEPTH_SIGMA = 0.5  # depth / cell label width, in bin spacings
MASK_STRIDE = 4  # the visible-mask target is the network's 1/4 map: side = crop size // MASK_STRIDE


# ---------------------------------------------------------------------------- object tensors
SYMMETRY_SAMPLINGS = ("official", "bop")


def symmetry_tensors(info, max_sym_disc_step: float = 0.01, sampling: str = "official"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The object's symmetry group as arrays: ``R`` (S, 3, 3) float32 and ``t`` (S, 3) float32 mm.

    ``sampling``:

    - ``"bop"``: as :func:`mrcnet.data.bop.symmetry_transforms` (the BOP toolkit's set, identity first;
      continuous rotations ``R_c`` at every step from 0, ``t = R_c t_d + t_c`` with the offset term
      ``t_c = offset - R_c offset``);
    - ``"official"`` (the training labels and losses of the official release): discrete members as
      BOP's, but a continuous symmetry is sampled from the *first step* on (angle 0, the identity, is
      left out: the nearest member is one step, 360/315 deg, away) and the members' translations are
      ``R_c t_d`` (the continuous offset term is left out). Objects without continuous symmetries get
      BOP's set.
    """
    if sampling not in SYMMETRY_SAMPLINGS:
        raise ValueError(f"symmetry sampling {sampling!r} is not one of {SYMMETRY_SAMPLINGS}")
    cont = list(info["symmetries_continuous"]) if "symmetries_continuous" in info else []
    if sampling == "bop" or not cont:
        trans = symmetry_transforms(info, max_sym_disc_step)
        R = np.stack([np.asarray(s["R"], np.float64) for s in trans])
        t = np.stack([np.asarray(s["t"], np.float64).reshape(3) for s in trans])
        return R.astype(np.float32), t.astype(np.float32)
    disc = symmetry_transforms({"symmetries_discrete": list(info["symmetries_discrete"]) if "symmetries_discrete" in info
                                else []})
    steps = int(np.ceil(np.pi / max_sym_disc_step))
    Rc = [rotation_about_axis(i * 2.0 * np.pi / steps, np.asarray(c["axis"], np.float64))
          for c in cont for i in range(1, steps)]
    R = np.stack([rc @ np.asarray(d["R"], np.float64) for d in disc for rc in Rc])
    t = np.stack([rc @ np.asarray(d["t"], np.float64).reshape(3) for d in disc for rc in Rc])
    return R.astype(np.float32), t.astype(np.float32)


def surface_points(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points spread uniformly over the mesh surface (area-weighted, deterministic): (n, 3) f32 mm.

    The model points of the rotation labels, the symmetry matching and the vertex losses. The
    official code uses the model's vertices, which on BOP's uniformly meshed models is the same
    distribution; CAD meshes are not uniform (a large flat face has 4 vertices, a small cylinder
    hundreds), and vertex-weighted distances would then ignore most of the object (a bracket whose
    vertices sit on its pin gets labels blind to a roll about the pin's axis).
    vertices (V, 3) mm, faces (F, 3) int.
    """
    import trimesh  # trimesh: slow to import (about 0.5 s), only when sampling mesh surfaces

    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64).reshape(-1, 3), np.asarray(faces).reshape(-1, 3),
                           process=False)
    pts, _ = trimesh.sample.sample_surface(mesh, int(n), seed=int(seed))
    return np.asarray(pts, np.float32)


def second_moment(vertices: Tensor, mask: Tensor | None = None) -> Tensor:
    """``C = mean(v v^T)`` of (..., V, 3) vertices (valid where ``mask`` (..., V) is true): (..., 3, 3) mm^2."""
    if mask is None:
        return vertices.transpose(-1, -2) @ vertices / vertices.shape[-2]
    m = mask.to(vertices.dtype)[..., None]
    n = m.sum(-2, keepdim=True).clamp_min(1.0)
    return (vertices * m).transpose(-1, -2) @ vertices / n


# --------------------------------------------------------------------------- symmetry matching
def match_symmetry(R: Tensor, t: Tensor, R_ref: Tensor, sym_R: Tensor, sym_t: Tensor, corr: Tensor,
                   sym_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The member of the symmetry group of pose (R, t) whose rotation is closest to ``R_ref``.

    R (..., 3, 3), t (..., 3) mm: the ground truth; R_ref (..., 3, 3); sym_R (..., S, 3, 3),
    sym_t (..., S, 3) mm; corr (..., 3, 3) vertex second moment; sym_mask (..., S) bool (padding
    false). Returns ``R @ sym_R[s*]`` (..., 3, 3) and ``R @ sym_t[s*] + t`` (..., 3), with ``s*``
    maximising ``tr(C R_ref^T R S_R)`` (no gradient flows through the choice).
    """
    cand = R.unsqueeze(-3) @ sym_R  # (..., S, 3, 3)
    # tr(C R_ref^T cand) = sum_ij (R_ref C)_ij cand_ij
    score = ((R_ref @ corr).unsqueeze(-3) * cand).sum((-1, -2))  # (..., S)
    if sym_mask is not None:
        score = score.masked_fill(~sym_mask, float("-inf"))
    s = score.argmax(-1)
    R_m = torch.gather(cand, -3, s[..., None, None, None].expand(*s.shape, 1, 3, 3)).squeeze(-3)
    t_all = (R.unsqueeze(-3) @ sym_t.unsqueeze(-1)).squeeze(-1) + t.unsqueeze(-2)  # (..., S, 3)
    t_m = torch.gather(t_all, -2, s[..., None, None].expand(*s.shape, 1, 3)).squeeze(-2)
    return R_m, t_m


# ------------------------------------------------------------------------------- soft labels
_PROTO_CACHE: dict = {}


def prototype_matrices(n_side: int, device=None, dtype=torch.float32) -> Tensor:
    """Rotation-bin prototypes as matrices (n_rot, 3, 3) (order of :func:`rotation_prototypes`)."""
    key = (int(n_side), str(device), dtype)
    if key not in _PROTO_CACHE:
        q = torch.from_numpy(rotation_prototypes(n_side)).to(dtype=torch.float64)
        _PROTO_CACHE[key] = quat_to_matrix(q).to(device=device, dtype=dtype)
    return _PROTO_CACHE[key]


def rotation_distances(R: Tensor, vertices: Tensor, sym_R: Tensor, sym_t: Tensor, protos: Tensor,
                       chunk: int = 1152) -> Tensor:
    """Mean vertex distance (mm) between each prototype and its symmetry-closest member of R.

    R (3, 3); vertices (V, 3) mm; sym_R (S, 3, 3), sym_t (S, 3); protos (P, 3, 3) -> (P,).
    Vectorised over prototypes (in chunks of ``chunk`` to bound memory at P x V x 3).
    """
    corr = second_moment(vertices)
    out = []
    for P in protos.split(chunk):
        n = len(P)
        R_m, t_m = match_symmetry(R.expand(n, 3, 3), torch.zeros(n, 3, dtype=R.dtype, device=R.device), P,
                                  sym_R.expand(n, *sym_R.shape), sym_t.expand(n, *sym_t.shape),
                                  corr.expand(n, 3, 3))
        diff = vertices @ (R_m - P).transpose(-1, -2) + t_m[:, None, :]  # (n, V, 3)
        out.append(diff.norm(dim=-1).mean(-1))
    return torch.cat(out)


def rotation_labels(R: Tensor, vertices: Tensor, sym_R: Tensor, sym_t: Tensor, diameter: float,
                    n_side: int, sigma: float = ROT_SIGMA) -> Tensor:
    """Soft rotation labels ``exp(-e / (sigma * diameter))`` over the bins: (n_rot,) float32 in (0, 1].

    R (3, 3) ground-truth rotation (in the crop's rotated frame); vertices (V, 3) mm;
    sym_R (S, 3, 3), sym_t (S, 3) mm; diameter mm.
    """
    R = R.to(torch.float32)
    protos = prototype_matrices(n_side, R.device)
    e = rotation_distances(R, vertices.to(torch.float32), sym_R.to(torch.float32), sym_t.to(torch.float32),
                           protos)
    return torch.exp(-e / (sigma * float(diameter)))


def gaussian_bin_labels(x: Tensor, centers: Tensor, spacing: float, sigma: float = DEPTH_SIGMA) -> Tensor:
    """``softmax_i(-((x - c_i) / (sigma * spacing))^2)``: x (...), centers (n,) -> (..., n)."""
    r = (x.unsqueeze(-1) - centers) / (sigma * spacing)
    return torch.softmax(-(r * r), dim=-1)


def depth_labels(d: Tensor, bins: BinSpec, depth_range: tuple[float, float]) -> Tensor:
    """Soft depth labels: normalised depth (...) -> (..., n_depth) summing to 1."""
    near, far = float(depth_range[0]), float(depth_range[1])
    c = torch.as_tensor(depth_bin_centers(near, far, bins.n_depth), dtype=d.dtype, device=d.device)
    return gaussian_bin_labels(d, c, (far - near) / bins.n_depth)


def cell_labels(dxy: Tensor, bins: BinSpec) -> Tensor:
    """Soft 2D cell labels: offsets (..., 2) (dx, dy) crop units -> (..., n_cells^2) summing to 1,
    row-major (``iy * n + ix``)."""
    n = bins.n_cells
    c = torch.as_tensor(cell_centers(n), dtype=dxy.dtype, device=dxy.device)
    lx = gaussian_bin_labels(dxy[..., 0], c, 1.0 / n)
    ly = gaussian_bin_labels(dxy[..., 1], c, 1.0 / n)
    return (ly.unsqueeze(-1) * lx.unsqueeze(-2)).flatten(-2)


def depth_bin_table(bins: BinSpec, depth_range: tuple[float, float], device=None) -> Tensor:
    """Depth bin centres (n_depth,) float32 (normalised depth)."""
    return torch.as_tensor(depth_bin_centers(float(depth_range[0]), float(depth_range[1]), bins.n_depth),
                           dtype=torch.float32, device=device)


def cell_table(bins: BinSpec, device=None) -> Tensor:
    """Cell centres (n_cells,) float32 (crop units)."""
    return torch.as_tensor(cell_centers(bins.n_cells), dtype=torch.float32, device=device)

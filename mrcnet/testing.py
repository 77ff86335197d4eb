"""Test helpers: the deterministic weight fill of ``tests/data/README.md``, golden-data access and
small ASCII PLY meshes (torch-free at import: torch is imported inside the functions that need it).

The fill makes a network's numbers reproducible without a checkpoint: every tensor of an
official-format state dict is a pure function of its key and shape. ``golden_model_n2.npz`` was
computed by the official code with these weights (``n_obj = 2``).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

#: tests/data of the repository (golden npz files, official state-dict manifest)
TEST_DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


#: the 12 outward triangles of the 8 corners ``[(x, y, z) for x in (-,+) for y in (-,+) for z in (-,+)]``
BOX_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)


def box_mesh(size_mm=(60.0, 40.0, 20.0)) -> tuple[np.ndarray, np.ndarray]:
    """A closed box centred at the origin: vertices (8, 3) float32 mm, faces (12, 3) int32
    (:data:`BOX_FACES`). size_mm: edge lengths (x, y, z), or one number for a cube."""
    sx, sy, sz = np.broadcast_to(np.asarray(size_mm, np.float64), (3,)) / 2
    v = np.array([(x, y, z) for x in (-sx, sx) for y in (-sy, sy) for z in (-sz, sz)], np.float32)
    return v, BOX_FACES.copy()


def write_ply(path, vertices, faces=BOX_FACES) -> Path:
    """An ASCII PLY of a triangle mesh: vertices (V, 3) mm, faces (F, 3) indices (default
    :data:`BOX_FACES`: 8 box corners in :func:`box_mesh` order). Returns the path."""
    lines = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x",
             "property float y", "property float z", f"element face {len(faces)}",
             "property list uchar int vertex_indices", "end_header"]
    lines += [" ".join(f"{float(c):.9g}" for c in v) for v in np.asarray(vertices)]
    lines += ["3 " + " ".join(str(int(i)) for i in f) for f in np.asarray(faces)]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_box_ply(path, size_mm=(60.0, 40.0, 20.0)) -> Path:
    """An ASCII PLY of :func:`box_mesh` (8 vertices, 12 triangles, centred at the origin, mm)."""
    return write_ply(path, *box_mesh(size_mm))


def deterministic_uniform(key: str, n: int) -> np.ndarray:
    """``n`` float64 numbers in [-1, 1) from the splitmix64-style hash of ``(crc32(key), i)``."""
    seed = np.uint64(zlib.crc32(key.encode()))
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) * _GOLDEN + seed * _MIX1
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53 * 2.0 - 1.0


def deterministic_tensor(key: str, shape: Iterable[int]) -> np.ndarray:
    """The float32 array the compat fill rule assigns to the state-dict entry ``key`` of ``shape``."""
    shape = tuple(int(s) for s in shape)
    u = deterministic_uniform(key, int(np.prod(shape, dtype=np.int64)))
    if key.endswith("bias"):
        v = 0.1 * u
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[2:] if len(shape) == 5 else shape[1:]))
        v = u * np.sqrt(3.0 / fan_in)
    else:
        v = 1.0 + 0.1 * u
    return v.astype(np.float32).reshape(shape)


def official_manifest(n_obj: int | None = None) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the official T-LESS state dict, optionally with ``n_obj`` objects."""
    with open(TEST_DATA / "official_state_dict_tless.json") as f:
        manifest = {k: tuple(v) for k, v in json.load(f).items()}
    if n_obj is not None:
        manifest = {
            k: ((n_obj,) + s[1:] if k.startswith("backbone.decoder.") else s) for k, s in manifest.items()
        }
    return manifest


def deterministic_official_state_dict(manifest: Mapping[str, Iterable[int]]):
    """Official-format state dict (torch tensors) filled by the compat rule, aliases applied
    (``backbone.base_model.{4..7}.*`` take the values of ``backbone.layer{1..4}.0.*``)."""
    import torch  # torch only in the golden helpers: the mesh helpers of this module are used torch-free

    sd = {k: torch.from_numpy(deterministic_tensor(k, s)) for k, s in manifest.items()}
    for k in sd:
        if k.startswith("backbone.base_model."):
            parts = k.split(".")
            idx = int(parts[2])
            if 4 <= idx <= 7:
                src = f"backbone.layer{idx - 3}.0." + ".".join(parts[3:])
                sd[k] = sd[src]
    return sd


def load_golden(name: str = "golden_model_n2.npz") -> dict[str, np.ndarray]:
    """All arrays of a golden npz in tests/data as a dict."""
    with np.load(TEST_DATA / name) as z:
        return {k: z[k] for k in z.files}


def max_rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the golden tolerance metric, 1e-3 passes)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != expected {e.shape}")
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-30))


#: golden_model_n2.npz key -> (model output key, channels kept (None = all)); the depth range of
#: the golden network is T-LESS's (0.05, 1.7).
GOLDEN_OUTPUTS: dict[str, tuple[str, "int | None"]] = {
    "emb_real": ("emb", None),
    "mask_real": ("mask_logit", None),
    "pose_logits": ("pose_logits", None),
    "depth_logits": ("depth_logits", None),
    "trans_logits": ("trans_logits", None),
    "pose_id": ("pose_id", None),
    "depth_id": ("depth_id", None),
    "quat_init": ("quat_init", None),
    "rot_init": ("R_init", None),
    "trans_xy_init": ("persp_init", 2),
    "trans_3d_init": ("t_init", None),
    "mask_synt": ("mask_logit_synt", None),
    "reg_x8_head": ("reg_x8", 8),  # output of decoder.reg_conv_x8 (after GN + SiLU)
    "reg_pool": ("reg_map", 16),  # output of decoder.reg_pool (ASPP): its first 16 = the input's
    "pose_res": ("pose_res", None),
    "depth_res": ("depth_res", None),
    "trans_res": ("trans_res", None),
    "rot_final": ("R", None),
    "translation_persp": ("persp", None),
    "trans_3d_final": ("t", None),
}
GOLDEN_DEPTH_RANGE = (0.05, 1.7)


def golden_model(n_obj: int = 2, preset: str = "paper"):
    """The network with the deterministic official-format weights (through the official key
    mapping: aliases and the unused stem included), as the golden data was computed."""
    from mrcnet.checkpoint import convert_official_state_dict, model_from_state_dict  # imports torch, as above

    sd = convert_official_state_dict(deterministic_official_state_dict(official_manifest(n_obj)))
    return model_from_state_dict(sd, GOLDEN_DEPTH_RANGE, preset)


def golden_inputs(z: Mapping[str, np.ndarray]) -> dict:
    """Model inputs (torch) of a golden npz: crops, obj_index, fov, K_roi, render."""
    import torch  # torch: as above

    return {
        "crops": torch.from_numpy(z["input_real"]),
        "obj_index": torch.from_numpy(z["obj_cls"]).long(),
        "fov": torch.from_numpy(z["fov"]),
        "K_roi": torch.from_numpy(z["intrinsics"]),
        "render": torch.from_numpy(z["input_synt"]),
    }


def golden_view(out: Mapping, key: str) -> np.ndarray:
    """The model output compared with golden ``key`` (see :data:`GOLDEN_OUTPUTS`)."""
    name, keep = GOLDEN_OUTPUTS[key]
    a = out[name].detach().cpu().numpy()
    return a if keep is None else a[:, :keep]

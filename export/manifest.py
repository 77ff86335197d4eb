"""The export directory's ``manifest.json``: one place for its keys, writing and validation.

Torch-free (json + hashlib only). Layout of an export directory (docs/ARCHITECTURE.md,
"Export directory")::

    out/
      manifest.json          # this module
      classifier.onnx        # stage 1 (graph names: CLASSIFIER_INPUTS / CLASSIFIER_OUTPUTS)
      regressor.onnx         # stage 2 (REGRESSOR_INPUTS / REGRESSOR_OUTPUTS)
      classifier.int8.onnx   # optional (--precision int8, ONNX Runtime CPU)
      engines/               # optional TensorRT engines (see mrcnet.export.tensorrt)
      models/                # copies of the BOP PLY meshes of the exported objects

Manifest keys: ``format_version``, ``dataset``, ``preset``, ``obj_ids`` (list; the 0-based
``obj_index`` fed to the graphs is the position in this list), ``depth_range`` [near, far]
(normalised depth ``t_z / fx_roi``), ``bins`` {n_side, n_depth, n_cells}, ``fov_variant``,
``n_rot`` (4 in-plane rotations per detection), ``crop_size`` (256 px), ``bn_group`` (4: BatchNorm
statistics per group of 4 consecutive crops, so N must be a multiple of 4), ``models_dir``,
``classifier`` / ``regressor`` {onnx, inputs, outputs[, int8_onnx]}, ``engines`` {precision:
{classifier, regressor, ...}}, ``project_version``, ``checkpoint_sha256``; informative extras the
runtime ignores: ``parity`` (figures measured at export time), ``n_params``, ``sizes_bytes``.

The format itself (parsing, validation) is :mod:`mrcnet.runtime.manifest`; this module builds and
writes it and owns the graph I/O names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

# re-exported: the exporter hashes checkpoints and graphs, and writes files, with them
from mrcnet.runtime.formats.files import atomic_write_bytes, sha256_file  # noqa: F401

from mrcnet.runtime.manifest import (  # the runtime's parser is the one place for the format
    CLASSIFIER_INPUTS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    GraphSpec,
    Manifest,
    ManifestError,
    load_manifest,
)
from mrcnet.runtime.geometry import BinSpec

CLASSIFIER_ONNX = "classifier.onnx"
REGRESSOR_ONNX = "regressor.onnx"
MODELS_DIR = "models"
ENGINES_DIR = "engines"

#: Classifier outputs: logits (N,n_rot) (N,n_depth) (N,n_cells^2); R_init (N,3,3); t_init (N,3) mm;
#: persp_init (N,3) = (dx, dy, d) of the argmax bins; rot_score / depth_score (N,) max logits (TTA);
#: feat_x4 (N,E+1,S/4,S/4), feat_x8 (N,D,S/8,S/8), feat_x16 (N,D,S/16,S/16) real-crop features.
#: (Inputs: ``CLASSIFIER_INPUTS`` = crops (N,4,S,S) f32 BGR/255 + box map; obj_index (N,) int64;
#: fov (N,3) f32; K_roi (N,3,3) f32 crop cameras in pixels.)
CLASSIFIER_OUTPUTS = ("pose_logits", "depth_logits", "trans_logits", "R_init", "t_init", "persp_init",
                      "rot_score", "depth_score", "feat_x4", "feat_x8", "feat_x16")
#: Regressor (stage 2) inputs: render (N,4,S,S) f32 (rendered BGR in [0,1] + its box map); the rest
#: are classifier inputs/outputs of the same names (the runtime chains them by name).
REGRESSOR_INPUTS = ("render", "obj_index", "fov", "K_roi", "feat_x4", "feat_x8", "feat_x16",
                    "R_init", "t_init", "persp_init")
#: Regressor outputs, per crop in the rotated crop frame (before TTA selection / un-rotation):
#: R (N,3,3), t (N,3) mm, persp (N,3) = (dx, dy, d). The TTA scores are the classifier's
#: rot_score / depth_score (ONNX forbids a graph output with an input's name).
REGRESSOR_OUTPUTS = ("R", "t", "persp")

#: manifest keys copied into each ONNX graph's metadata_props (values JSON-encoded strings)
METADATA_KEYS = ("format_version", "dataset", "preset", "obj_ids", "depth_range", "bins", "fov_variant",
                 "n_rot", "crop_size", "bn_group", "project_version", "checkpoint_sha256")


def build_manifest(*, dataset: str, preset: str, obj_ids: Iterable[int], depth_range, bins: BinSpec,
                   fov_variant: str, crop_size: int, bn_group: int, project_version: str,
                   checkpoint_sha256: str | None, n_rot: int = 4, engines: Mapping | None = None,
                   box_rule: str = "clip") -> Manifest:
    """The runtime's :class:`Manifest` with the standard file names and this module's graph I/O names.

    ``bins``: :class:`BinSpec`; ``depth_range``: (near, far) normalised depth; ``fov_variant``:
    ``"inference"`` (official) or ``"training"``; ``box_rule``: ``"clip"`` or ``"official"``
    (:func:`mrcnet.runtime.preprocess.detection_square`)."""
    return Manifest(
        dataset=str(dataset), preset=str(preset), obj_ids=[int(i) for i in obj_ids],
        depth_range=(float(depth_range[0]), float(depth_range[1])), bins=bins,
        classifier=GraphSpec(CLASSIFIER_ONNX, list(CLASSIFIER_INPUTS), list(CLASSIFIER_OUTPUTS)),
        regressor=GraphSpec(REGRESSOR_ONNX, list(REGRESSOR_INPUTS), list(REGRESSOR_OUTPUTS)),
        fov_variant=str(fov_variant), box_rule=str(box_rule), n_rot=int(n_rot), crop_size=int(crop_size), bn_group=int(bn_group),
        models_dir=MODELS_DIR, engines=dict(engines or {}), project_version=str(project_version),
        checkpoint_sha256=checkpoint_sha256 or "",
    )


def metadata_props(manifest: Manifest, graph: str) -> dict[str, str]:
    """The ``{key: JSON string}`` stored in an ONNX graph's metadata_props (plus ``graph``)."""
    d = manifest.to_dict()
    props = {k: json.dumps(d[k]) for k in METADATA_KEYS}
    props["graph"] = json.dumps(graph)
    return props


def listed_files(d: Mapping) -> list[str]:
    """Relative names of the files a manifest dict ``d`` points to: graphs (also ``onnx_fp32``),
    engines and the object models."""
    names = [d["classifier"]["onnx"], d["regressor"]["onnx"]]
    names += [v for v in (d.get("onnx_fp32") or {}).values() if isinstance(v, str)]
    for e in (d.get("engines") or {}).values():
        names += [e[g] for g in ("classifier", "regressor") if isinstance(e.get(g), str)]
    names += [f"{d.get('models_dir', MODELS_DIR)}/obj_{int(i):06d}.ply" for i in d["obj_ids"]]
    return sorted(set(names))


def file_records(out_dir, names: Iterable[str]) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` of the files of ``names`` that exist in ``out_dir``."""
    out = Path(out_dir)
    return {n: {"bytes": (out / n).stat().st_size, "sha256": sha256_file(out / n)}
            for n in names if (out / n).is_file()}


def update_file_records(out_dir, d: dict) -> dict:
    """Set ``d["files"]`` (sizes and SHA-256 of every listed file, :func:`listed_files`) in place."""
    d["files"] = file_records(out_dir, listed_files(d))
    return d


def write_manifest(out_dir, manifest: Manifest, **extra: Any) -> Path:
    """Validate and write ``out_dir/manifest.json`` atomically; ``extra`` adds informative keys the
    runtime ignores (``parity``, ``n_params``, ``sizes_bytes``...). The ``files`` key records the
    size and SHA-256 of every graph, engine and model file (the runtime refuses damaged ones).
    Returns the path."""
    manifest.validate()
    d = manifest.to_dict()
    d.update({k: v for k, v in extra.items() if v is not None})
    update_file_records(out_dir, d)
    manifest.files = d["files"]
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(d, indent=2) + "\n").encode())
    return path


def read_manifest(out_dir) -> Manifest:
    """:func:`mrcnet.runtime.manifest.load_manifest` (validates keys and graph files)."""
    return load_manifest(out_dir)

"""The export directory's ``manifest.json``: one place for its keys, writing and validation.

Torch-free (json + hashlib only). Layout of an export directory (docs/ARCHITECTURE.md,
"Export directory")::

    out/
      manifest.json          # this module
      classifier.onnx        # stage 1 (graph names: CLASSIFIER_INPUTS / CLASSIFIER_OUTPUTS)
      regressor.onnx         # stage 2 (REGRESSOR_INPUTS / REGRESSOR_OUTPUTS)
      classifier.int8.onnx   # optional (--backend onnx --precision int8, ONNX Runtime CPU)
      classifier.fp16.onnx   # optional (--backend tensorrt --precision fp16: the fp16 graph)
      classifier.trt-int8.onnx  # optional (--backend tensorrt --precision int8: symmetric QDQ)
      engines/               # optional TensorRT engines (see mrcnet.export.tensorrt)
      models/                # copies of the BOP PLY meshes of the exported objects

Manifest keys: ``format_version``, ``dataset``, ``preset``, ``obj_ids`` (list; the 0-based
``obj_index`` fed to the graphs is the position in this list), ``depth_range`` [near, far]
(normalised depth ``t_z / fx_roi``), ``bins`` {n_side, n_depth, n_cells}, ``fov_variant``,
``n_rot`` (4 in-plane rotations per detection), ``crop_size`` (256 px), ``bn_group`` (4: BatchNorm
statistics per group of 4 consecutive crops, so N must be a multiple of 4), ``models_dir``,
``classifier`` / ``regressor`` {onnx, inputs, outputs[, int8_onnx]}, ``engines`` {precision:
{classifier, regressor, ...}}, ``project_version``, ``checkpoint_sha256``; informative extras the
runtime ignores: ``parity`` (figures measured at export time), ``n_params``, ``sizes_bytes``,
``precision_graphs`` {fp16|int8: {classifier, regressor}} (the TensorRT precision graphs, read by
``mrcnet-export --engines-only``), ``condconv_form`` (the per-object convolutions' export form,
:func:`mrcnet.export.optimize.condconv_form`; ``--engines-only`` refuses the ONNX Runtime-only
``sorted``).

The format itself (parsing, validation, the graph I/O and file names and :func:`build_manifest`) is
:mod:`mrcnet.runtime.manifest` (re-exported here); this module writes it (file records, ONNX metadata).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

# re-exported: the exporter hashes checkpoints and graphs, and writes files, with them
from mrcnet.runtime.formats.files import atomic_write_bytes, sha256_file  # noqa: F401

# re-exported: the format, its graph I/O and file names and the builder live beside the parser
from mrcnet.runtime.manifest import (  # noqa: F401
    CLASSIFIER_INPUTS,
    CLASSIFIER_ONNX,
    CLASSIFIER_OUTPUTS,
    ENGINES_DIR,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODELS_DIR,
    REGRESSOR_INPUTS,
    REGRESSOR_ONNX,
    REGRESSOR_OUTPUTS,
    GraphSpec,
    Manifest,
    ManifestError,
    build_manifest,
    load_manifest,
)

#: manifest keys copied into each ONNX graph's metadata_props (values JSON-encoded strings)
METADATA_KEYS = ("format_version", "dataset", "preset", "obj_ids", "depth_range", "bins", "fov_variant",
                 "n_rot", "crop_size", "bn_group", "project_version", "checkpoint_sha256")


def metadata_props(manifest: Manifest, graph: str) -> dict[str, str]:
    """The ``{key: JSON string}`` stored in an ONNX graph's metadata_props (plus ``graph``)."""
    d = manifest.to_dict()
    props = {k: json.dumps(d[k]) for k in METADATA_KEYS}
    props["graph"] = json.dumps(graph)
    return props


def listed_files(d: Mapping) -> list[str]:
    """Relative names of the files a manifest dict ``d`` points to: graphs (also ``onnx_fp32`` and
    the ``precision_graphs``), engines and the object models."""
    names = [d["classifier"]["onnx"], d["regressor"]["onnx"]]
    names += [v for v in (d.get("onnx_fp32") or {}).values() if isinstance(v, str)]
    for e in (d.get("engines") or {}).values():
        names += [e[g] for g in ("classifier", "regressor") if isinstance(e.get(g), str)]
    for files in (d.get("precision_graphs") or {}).values():  # the TensorRT fp16 / int8 graphs
        names += [files[g] for g in ("classifier", "regressor") if isinstance(files.get(g), str)]
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

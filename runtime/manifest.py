"""The export directory contract: ``manifest.json`` + ONNX graphs + engines + ``models/`` (no torch).

An export directory (written by ``mrcnet-export``, read by ``mrcnet-run``) is self-contained::

    DIR/manifest.json        this module's Manifest, as JSON
    DIR/classifier.onnx      stage 1
    DIR/regressor.onnx       stage 2
    DIR/*.engine             optional TensorRT engines (manifest "engines")
    DIR/models/obj_XXXXXX.ply  BOP models of the exported objects (mm)

The contract is documented in docs/ARCHITECTURE.md ("Export directory"); this module is the one
place that parses and validates it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

# the demo's paths (mrcnet.runtime.assets); also importable from here, as before
from .assets import (DEMO_CAMERA, DEMO_CHECKPOINT, DEMO_CLIP,  # noqa: F401
                     DEMO_DETECTIONS, DEMO_DIR, DEMO_EXPORT_DIR, DEMO_MODELS)
from .formats.files import atomic_write_text, sha256_file
from .geometry import TTA_GROUP, BinSpec
from .preprocess import BOX_RULES, FOV_VARIANTS
from .render.mesh import load_mesh

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def demo_export_problem(export_dir=None) -> str | None:
    """Why the demo export (default :data:`DEMO_EXPORT_DIR`) cannot serve the shipped demo model:
    ``None`` when it is an export of the shipped checkpoint (same sha256), else a short reason
    (missing, unreadable, or exported from another checkpoint, e.g. before an update)."""
    d = Path(export_dir) if export_dir is not None else DEMO_EXPORT_DIR
    path = d / MANIFEST_NAME
    if not path.is_file():
        return f"no export in {d}"
    try:
        have = str(json.loads(path.read_text()).get("checkpoint_sha256", ""))
    except (OSError, ValueError, AttributeError) as e:
        return f"{path}: unreadable ({type(e).__name__})"
    if have != sha256_file(DEMO_CHECKPOINT):
        return f"{d} was exported from another checkpoint than the shipped {DEMO_CHECKPOINT.name}"
    return None


# Names of the graph interface (docs/ARCHITECTURE.md "Network graph names").
CLASSIFIER_INPUTS = ("crops", "obj_index", "fov", "K_roi")
CLASSIFIER_REQUIRED_OUTPUTS = ("R_init", "t_init")
REGRESSOR_REQUIRED_OUTPUTS = ("R", "t")
SCORE_OUTPUTS = ("rot_score", "depth_score")  # max rotation / depth logit per crop (TTA)

# The standard file names of an export directory and the graphs' I/O names (build_manifest).
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


class ManifestError(ValueError):
    """An export directory that cannot be used; the message names the directory or file."""


@dataclass
class GraphSpec:
    """One ONNX graph of the export: file name (relative to the directory) and I/O names."""

    onnx: str
    inputs: list[str]
    outputs: list[str]


@dataclass
class Manifest:
    """Parsed ``manifest.json`` of an export directory.

    obj_ids: BOP object ids; the network's ``obj_index`` is the position in this list.
    depth_range: (near, far) in normalised depth units (t_z / fx_roi).
    engines: precision -> {"classifier": file, "regressor": file, "max_detections": int, ...}.
    files: relative file name -> {"bytes": int, "sha256": hex} of the graphs, engines and models
    written by the exporter; :func:`load_manifest` checks them (a damaged file is refused).
    precision_graphs: precision ("fp16" | "int8") -> {"classifier": file, "regressor": file}, the
    TensorRT precision graphs engines are built from.
    extra: every other key of the JSON as read (``onnx_fp32``, ``parity``, ``calibration``...): the
    runtime does not use them; :meth:`to_dict` writes them back, so a read-modify-write keeps them.
    root: the export directory (absolute), not stored in the JSON.
    """

    dataset: str
    preset: str
    obj_ids: list[int]
    depth_range: tuple[float, float]
    bins: BinSpec
    classifier: GraphSpec
    regressor: GraphSpec
    fov_variant: str = "inference"
    box_rule: str = "clip"  # preprocess.BOX_RULES: how a detection box becomes the crop square
    n_rot: int = TTA_GROUP
    crop_size: int = 256
    bn_group: int = TTA_GROUP
    models_dir: str = MODELS_DIR
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    project_version: str = ""
    checkpoint_sha256: str = ""
    format_version: int = FORMAT_VERSION
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    precision_graphs: dict[str, dict[str, str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path = Path(".")

    # ---------------------------------------------------------------- paths
    def path(self, name: str) -> Path:
        """A file of the export directory (relative names resolve against ``root``)."""
        return self.root / name

    def model_path(self, obj_id: int) -> Path:
        """BOP model file of one object: ``root/models_dir/obj_XXXXXX.ply``."""
        return self.root / self.models_dir / f"obj_{int(obj_id):06d}.ply"

    def obj_index(self, obj_id: int) -> int:
        """Position of ``obj_id`` in ``obj_ids`` (the network's object index); KeyError if absent."""
        try:
            return self.obj_ids.index(int(obj_id))
        except ValueError:
            raise KeyError(f"object {obj_id} is not in the exported model (objects: {self.obj_ids})") from None

    def load_meshes(self, obj_ids=None) -> dict:
        """Load the BOP models (``runtime.render.mesh.Mesh``) of ``obj_ids`` (default all)."""
        out = {}
        for oid in self.obj_ids if obj_ids is None else obj_ids:
            p = self.model_path(oid)
            if not p.is_file():
                raise ManifestError(f"export {self.root}: model of object {oid} missing ({p})")
            out[int(oid)] = load_mesh(p)
        return out

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        """The JSON form: the fields, then the ``extra`` keys (a field wins over an extra key)."""
        d = asdict(self)
        d.pop("root")
        extra = d.pop("extra")
        d["bins"] = {"n_side": self.bins.n_side, "n_depth": self.bins.n_depth, "n_cells": self.bins.n_cells}
        d["depth_range"] = list(self.depth_range)
        d.update({k: v for k, v in extra.items() if k not in d})
        return d

    def save(self, directory) -> Path:
        """Write ``directory/manifest.json``; returns its path."""
        p = Path(directory) / MANIFEST_NAME
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def from_dict(cls, d: dict, root=".") -> "Manifest":
        where = f"export {root}"
        try:
            if int(d.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
                raise ManifestError(f"{where}: manifest format_version {d['format_version']} is newer than "
                                    f"this runtime supports ({FORMAT_VERSION}); upgrade mrcnet-edge")
            m = cls(
                dataset=str(d["dataset"]),
                preset=str(d["preset"]),
                obj_ids=[int(i) for i in d["obj_ids"]],
                depth_range=(float(d["depth_range"][0]), float(d["depth_range"][1])),
                bins=BinSpec(int(d["bins"]["n_side"]), int(d["bins"]["n_depth"]), int(d["bins"]["n_cells"])),
                classifier=GraphSpec(str(d["classifier"]["onnx"]), list(d["classifier"]["inputs"]),
                                     list(d["classifier"]["outputs"])),
                regressor=GraphSpec(str(d["regressor"]["onnx"]), list(d["regressor"]["inputs"]),
                                    list(d["regressor"]["outputs"])),
                fov_variant=str(d.get("fov_variant", "inference")),
                box_rule=str(d.get("box_rule", "clip")),
                n_rot=int(d.get("n_rot", TTA_GROUP)),
                crop_size=int(d.get("crop_size", 256)),
                bn_group=int(d.get("bn_group", TTA_GROUP)),
                models_dir=str(d.get("models_dir", MODELS_DIR)),
                engines=dict(d.get("engines") or {}),
                project_version=str(d.get("project_version", "")),
                checkpoint_sha256=str(d.get("checkpoint_sha256", "")),
                format_version=int(d.get("format_version", FORMAT_VERSION)),
                files={str(k): dict(v) for k, v in (d.get("files") or {}).items()},
                precision_graphs={str(k): dict(v) for k, v in (d.get("precision_graphs") or {}).items()},
                extra={k: v for k, v in d.items() if k not in _FIELDS},
                root=Path(root).resolve(),
            )
        except ManifestError:
            raise
        except KeyError as e:
            raise ManifestError(f"{where}: manifest.json lacks key {e}") from None
        except (TypeError, ValueError, IndexError) as e:
            raise ManifestError(f"{where}: malformed manifest.json ({e})") from None
        m.validate()
        return m

    def validate(self) -> None:
        """Check the graph interface names and basic facts; ManifestError naming the problem."""
        where = f"export {self.root}"
        if not self.obj_ids:
            raise ManifestError(f"{where}: manifest lists no objects")
        if self.fov_variant not in FOV_VARIANTS:
            raise ManifestError(f"{where}: fov_variant {self.fov_variant!r} not in {FOV_VARIANTS}")
        if self.box_rule not in BOX_RULES:
            raise ManifestError(f"{where}: box_rule {self.box_rule!r} not in {BOX_RULES}")
        if self.n_rot != self.bn_group:
            raise ManifestError(f"{where}: n_rot {self.n_rot} != bn_group {self.bn_group} (one BatchNorm "
                                "group per detection)")
        missing = [n for n in CLASSIFIER_INPUTS if n not in self.classifier.inputs]
        missing += [n for n in CLASSIFIER_REQUIRED_OUTPUTS if n not in self.classifier.outputs]
        missing += [n for n in REGRESSOR_REQUIRED_OUTPUTS if n not in self.regressor.outputs]
        if "render" not in self.regressor.inputs:
            missing.append("render")
        if missing:
            raise ManifestError(f"{where}: graphs lack the contract tensors {missing}")
        known = set(self.classifier.inputs) | set(self.classifier.outputs) | {"render"}
        unknown = [n for n in self.regressor.inputs if n not in known]
        if unknown:
            raise ManifestError(f"{where}: regressor inputs {unknown} are neither 'render' nor classifier tensors")
        for n in SCORE_OUTPUTS:
            if n not in self.classifier.outputs and n not in self.regressor.outputs:
                raise ManifestError(f"{where}: no graph outputs {n!r} (needed for the TTA selection)")


_FIELDS = frozenset(f.name for f in fields(Manifest))


def precision_problem(backend_name: str, precision) -> str | None:
    """Why ``precision`` (an engine set of ``engines``) cannot apply to the backend named
    ``backend_name``: ONNX Runtime runs the fp32 graphs, so any other precision there would be
    silently ignored. None when it applies (TensorRT, or no / fp32 precision)."""
    if precision is None or precision == "fp32" or "tensorrt" in str(backend_name).lower():
        return None
    return (f"--precision {precision}: selects TensorRT engines; backend {backend_name} runs the fp32 ONNX "
            "graphs (use --backend tensorrt, or leave --precision out)")


def verify_files(m: Manifest) -> None:
    """Check every file listed in ``m.files`` that exists against its recorded size and SHA-256
    (about 1 s per GB); ManifestError naming the damaged file. Missing files are left to the
    callers that need them."""
    for name, rec in sorted(m.files.items()):
        p = m.path(name)
        if not p.is_file():
            continue
        size = p.stat().st_size
        if "bytes" in rec and int(rec["bytes"]) != size:
            raise ManifestError(f"export {m.root}: {name} is damaged ({size} bytes, manifest.json says "
                                f"{rec['bytes']}); export again")
        if rec.get("sha256") and sha256_file(p) != rec["sha256"]:
            raise ManifestError(f"export {m.root}: {name} is damaged (its SHA-256 differs from manifest.json); "
                                "export again")


def build_manifest(*, dataset: str, preset: str, obj_ids: Iterable[int], depth_range, bins: BinSpec,
                   fov_variant: str, crop_size: int, bn_group: int, project_version: str,
                   checkpoint_sha256: str | None, n_rot: int = TTA_GROUP, engines: Mapping | None = None,
                   box_rule: str = "clip") -> Manifest:
    """A :class:`Manifest` with the standard file names and this module's graph I/O names (the exporter
    writes it; the reference builds one for an in-memory model).

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


def load_manifest(directory, verify: bool = True) -> Manifest:
    """Read and validate ``directory/manifest.json``; ManifestError (one line) if unusable.
    verify: check the files' sizes and hashes (:func:`verify_files`)."""
    root = Path(os.fspath(directory))
    if not root.is_dir():
        raise ManifestError(f"export directory not found: {root}")
    p = root / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(f"export {root}: no {MANIFEST_NAME} (not an mrcnet-export directory)")
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"export {root}: cannot read {MANIFEST_NAME}: {e}") from None
    if not isinstance(d, dict):
        raise ManifestError(f"export {root}: {MANIFEST_NAME} is not a JSON object")
    m = Manifest.from_dict(d, root)
    for g in (m.classifier, m.regressor):
        if not m.path(g.onnx).is_file() and not m.engines:
            raise ManifestError(f"export {root}: graph file {g.onnx} missing")
    if verify:
        verify_files(m)
    return m

"""BOP inference: every target of a BOP split through the shared pose pipeline -> BOP'19 results CSV.

The library behind ``mrcnet-infer`` (and ``benchmarks/parity.py``). One code path for every model:

- an export directory (``mrcnet-export``) runs on a runtime backend (``onnxruntime``, ``tensorrt``;
  default ``auto``), with the export's ``manifest.json``;
- a ``.pth`` checkpoint (official or project format) runs on :class:`mrcnet.inference.TorchBackend`
  with a manifest built in memory from the checkpoint's metadata (:func:`checkpoint_manifest`):
  official checkpoints get the official-inference ``fov`` variant (docs/MODEL.md §1), the meshes come from
  the dataset's ``models/``;

both through :class:`mrcnet.runtime.pipeline.Pipeline` (same preprocessing, renderer, TTA selection).

Detections per image (:func:`select_detections`): for each target ``{obj_id, inst_count}`` of
``test_targets_bop19.json`` (or targets derived from the annotations when the file is absent), the
``inst_count`` best-scored detections of that object (BOP'22 detections file), or, without a
detections file, the ground-truth boxes (``bbox_visib`` of ``scene_gt_info.json``) of the
``inst_count`` most visible instances of the object (detection score 1).

Results (BOP'19 CSV ``scene_id,im_id,obj_id,score,R,t,time``): R row-major, t in mm; ``score`` =
the detection score; ``time`` = seconds spent on the image (pipeline total: preprocessing, both
networks, rendering, TTA selection; not image decoding), the same for all estimates of the image.
The CSV is written incrementally to ``<out>.partial`` (one flush per image) and moved onto ``<out>``
(``os.replace``) when every image is done; ``<out>.progress.jsonl`` records each finished image with
the CSV byte offset after it, so an interrupted run resumes where it stopped (:func:`infer_split`).
An image that cannot be read or processed is reported and skipped: it gets no rows (its targets
count as misses) and is not retried on resume (``--no-resume`` starts afresh).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from mrcnet.data import bop
from mrcnet.runtime.backends import BackendError, create_backend
from mrcnet.runtime.datasets import DatasetPathError, dataset_name, find_dataset, render_models_dir
from mrcnet.runtime.detections import Detection
from mrcnet.runtime.errors import ParameterError
from mrcnet.runtime.formats.bop import (DEFAULT_METHOD, RESULTS_HEADER, bop_results_name, format_result_row,
                                       load_bop_results)
from mrcnet.runtime.formats.files import check_out_file
from mrcnet.runtime.geometry import rotation_angle_deg
from mrcnet.runtime.manifest import ManifestError, build_manifest, load_manifest, precision_problem
from mrcnet.runtime.pipeline import Pipeline, STAGES
from mrcnet.runtime.preprocess import InputError
from mrcnet.runtime.render import Renderer

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
#: next to the results CSV while a run is in progress: the rows so far, and the finished images
PROGRESS_SUFFIX = ".progress.jsonl"
PARTIAL_SUFFIX = ".partial"


class InferError(ValueError):
    """Unusable inference input (model, backend, dataset, detections); the message names it."""


class InferParameterError(InferError, ParameterError):
    """An InferError about one parameter (``model``, ``backend``, ``data_dir``; ``mrcnet-infer``
    names it by its flag)."""

    __init__ = ParameterError.__init__
    __reduce__ = ParameterError.__reduce__


# ----------------------------------------------------------------------------------- the model
def is_checkpoint(model) -> bool:
    """True for a checkpoint file (``.pth``/``.pt``/any file), False for an export directory."""
    return Path(model).is_file()


def checkpoint_manifest(torch_model, root, models_dir: str = "models"):
    """The runtime :class:`~mrcnet.runtime.manifest.Manifest` of an in-memory PyTorch model.

    torch_model: an ``MRCNet`` with ``meta`` (from :func:`mrcnet.checkpoint.load_checkpoint`, or set
    by the caller: ``obj_ids``, ``depth_range``, ``dataset``, ``preset``, ``fov_variant``).
    root / models_dir: where ``obj_XXXXXX.ply`` of its objects are (``root/models_dir``).
    The fov variant is put in the runtime's words (:func:`mrcnet.checkpoint.normalise_fov_variant`);
    ``n_rot`` = ``bn_group`` = the model's BatchNorm group (4 = one TTA group per detection).
    """
    from mrcnet.checkpoint import normalise_fov_variant  # imports torch; an export directory is evaluated torch-free

    meta = dict(getattr(torch_model, "meta", None) or {})
    obj_ids = meta.get("obj_ids") or list(range(1, torch_model.n_obj + 1))
    group = int(torch_model.bn_group)
    m = build_manifest(
        dataset=meta.get("dataset") or "", preset=meta.get("preset", torch_model.cfg.name), obj_ids=obj_ids,
        depth_range=meta.get("depth_range") or list(torch_model.tables.depth_range), bins=torch_model.cfg.bins,
        fov_variant=normalise_fov_variant(meta.get("fov_variant", "inference")), crop_size=torch_model.cfg.crop_size,
        bn_group=group, n_rot=group, project_version="", checkpoint_sha256=None,
        box_rule=meta.get("box_rule", "clip"))
    m.root = Path(root).resolve()
    m.models_dir = str(models_dir)
    return m


def open_model(model, backend: Optional[str] = None, *, models_root=None, models_dir: str = "models",
               dataset: Optional[str] = None, device: str = "cpu", threads: int = 0,
               precision: Optional[str] = None):
    """(backend, manifest) for a checkpoint or an export directory.

    model: ``.pth`` checkpoint -> ``backend`` must be None or "torch" (TorchBackend on ``device``;
    ``dataset`` names the preset of an official checkpoint whose object count is ambiguous); its
    meshes are read from ``models_root/models_dir`` (the BOP dataset's models).
    Export directory -> ``backend`` None ("auto": TensorRT engines when usable, else ONNX Runtime),
    "onnxruntime" or "tensorrt" (``precision`` picks the engine set); meshes from the export.
    threads: ONNX Runtime intra-op threads (0 = default). Raises :class:`InferError` (one line).
    """
    if backend is not None and backend not in BACKENDS:
        raise InferParameterError("backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(model)
    if not path.exists():
        raise InferParameterError("model", f"not found: {path} (expected a .pth checkpoint or an export directory)")
    if is_checkpoint(path):
        if backend not in (None, "torch"):
            raise InferParameterError("model", "a checkpoint runs on {backend} torch only; "
                                      f"export it (mrcnet-export) to run on {backend}", path)
        from mrcnet.checkpoint import CheckpointError  # torch-backed, as above
        from mrcnet.inference import TorchBackend  # torch-backed, as above

        try:
            be = TorchBackend.from_checkpoint(path, dataset=dataset, device=device)
        except CheckpointError as e:
            raise InferParameterError("model", str(e), path) from None
        if models_root is None:
            raise InferParameterError("model", "a checkpoint needs the dataset's models folder for rendering", path)
        man = checkpoint_manifest(be.model, models_root, models_dir)
        return be, man

    if backend == "torch":
        raise InferParameterError("model", "{backend} torch needs a .pth checkpoint, not an export directory", path)
    try:
        man = load_manifest(path)
        be = create_backend(man, backend or "auto", threads=threads, precision=precision)
    except (ManifestError, BackendError) as e:
        raise InferError(str(e)) from None
    problem = precision_problem(be.name, precision)
    if problem:
        be.close()
        raise InferError(problem)
    return be, man


def results_path(out, data_root, model, split: str, dataset: Optional[str] = None,
                 method: Optional[str] = None) -> Path:
    """Where the results CSV goes: ``out`` when it names a ``.csv`` file, else the folder ``out``
    (default ``results`` in the working directory) with BOP's name ``METHOD_DATASET-SPLIT.csv``
    (:func:`mrcnet.runtime.formats.bop.bop_results_name`; the split without its type, as BOP names
    T-LESS's ``test_primesense`` results ``tless-test``, also when ``split`` is the whole folder name). The dataset: ``dataset``, else
    the data folder's name when it names a preset, else an export's manifest dataset, else the
    folder's name. Raises :class:`InferError` for a name BOP cannot parse."""
    if out is not None and Path(out).suffix.lower() == ".csv":
        return Path(out)
    name = dataset_name(data_root, dataset)
    if name is None and Path(model).is_dir():
        try:
            name = load_manifest(model).dataset or None
        except ManifestError:
            name = None
    name = name or Path(data_root).resolve().name
    try:
        base = str(split).split("_", 1)[0]  # a split folder given whole (test_primesense): its split
        return Path("results" if out is None else out) / bop_results_name(method or DEFAULT_METHOD, name, base)
    except ValueError as e:
        raise InferError(f"{e}; pass --method/--dataset, or --out FILE.csv") from None


# --------------------------------------------------------------------------------- detections
def select_detections(rec, targets: Sequence[dict], detections: Optional[Sequence[dict]] = None,
                      all_detections: bool = False) -> tuple[list, list]:
    """The detections to run for one image and the targets left without any.

    rec: :class:`mrcnet.data.bop.ImageRecord`; targets: its ``{obj_id, inst_count}`` entries;
    detections: the image's BOP'22 detections (``category_id``, ``score``, ``bbox`` [x, y, w, h] px)
    or None for ground-truth boxes (``bbox_visib``, the ``inst_count`` instances of highest
    ``visib_fract``; instances with an empty box are not used). all_detections: every detection of
    a target object instead of its ``inst_count`` best (as the official inference, which runs every
    detection of its objects; BOP's evaluation keeps the best-scored estimates).
    Returns ([Detection (box xyxy px)], [(obj_id, missing count)]).
    """
    out, missing = [], []
    for t in targets:
        oid, n = int(t["obj_id"]), int(t["inst_count"])
        if detections is None:
            cands = []
            for inst in rec.instances:
                if inst.obj_id != oid or inst.info is None:
                    continue
                x, y, w, h = inst.info.get("bbox_visib", (-1, -1, -1, -1))
                if w > 0 and h > 0:
                    cands.append((float(inst.info.get("visib_fract", 0.0)),
                                  Detection(oid, (x, y, x + w, y + h), 1.0, "gt")))
            cands.sort(key=lambda c: -c[0])  # stable: ties keep the annotation order
            chosen = [d for _, d in cands[:n]]
        else:
            cands = sorted((d for d in detections if int(d["category_id"]) == oid), key=lambda d: -d["score"])
            chosen = []
            for d in (cands if all_detections else cands[:n]):
                x, y, w, h = d["bbox"]
                chosen.append(Detection(oid, (x, y, x + w, y + h), d["score"], "json"))
        if len(chosen) < n:
            missing.append((oid, n - len(chosen)))
        out += chosen
    return out, missing


# ---------------------------------------------------------------------------------- results
@dataclass
class InferSummary:
    """What :func:`infer_split` did. Times: ``stage_ms`` = mean ms per image and stage
    (``mrcnet.runtime.pipeline.STAGES`` + "total") over the images run in this call."""

    out: str
    backend: str
    model: str
    images: int = 0             # images with targets in the split
    done: int = 0               # images run in this call
    resumed: int = 0            # images already done by an interrupted run
    estimates: int = 0          # CSV rows written in this call
    bad_images: list = field(default_factory=list)           # [(scene_id, im_id, reason)]
    skipped_detections: list = field(default_factory=list)   # [(scene_id, im_id, obj_id, reason)]
    missing_detections: int = 0  # target instances without a detection
    unknown_targets: list = field(default_factory=list)  # [(scene_id, im_id)] targets naming no indexed image
    seconds: float = 0.0        # wall time of this call
    stage_ms: dict = field(default_factory=dict)
    complete: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        s = [f"{self.out}: {self.estimates} estimates for {self.done} images ({self.resumed} resumed) of "
             f"{self.images}, backend {self.backend}, {self.seconds:.1f} s"]
        if self.stage_ms:
            s.append("mean ms per image: " + ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items()))
        if self.missing_detections:
            s.append(f"{self.missing_detections} target instance(s) had no detection")
        if self.unknown_targets:
            a, b = self.unknown_targets[0]
            s.append(f"{len(self.unknown_targets)} target(s) name images not in the dataset (first: scene {a} "
                     f"image {b}); they count as misses")
        if self.skipped_detections:
            s.append(f"{len(self.skipped_detections)} detection(s) skipped (first: {self.skipped_detections[0]})")
        if self.bad_images:
            s.append(f"{len(self.bad_images)} image(s) skipped: " +
                     "; ".join(f"scene {a} image {b}: {r}" for a, b, r in self.bad_images[:5]))
        if not self.complete:
            s.append(f"incomplete: rows so far are in {self.out}{PARTIAL_SUFFIX}; run again to resume")
        return s


class ResumableResultsWriter:
    """BOP'19 results CSV written per image to ``<path>.partial`` + a progress log; resumable.

    ``<path>.progress.jsonl``: first line ``{"settings": {...}}``, then one line per finished image
    ``{"scene_id", "im_id", "rows", "offset"}`` (CSV byte size after its rows). Opening an existing
    run with the same settings truncates the partial CSV to the last recorded offset (rows of an
    image interrupted mid-write are dropped) and reports the finished images in ``done``; other
    settings raise :class:`InferError` unless ``resume=False`` (then it starts afresh).
    :meth:`finish` moves the CSV onto ``path`` (``os.replace``) and deletes the progress log.
    """

    def __init__(self, path, settings: dict, resume: bool = True):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.progress = self.path.with_name(self.path.name + PROGRESS_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.done: set[tuple[int, int]] = set()
        offset = None
        if resume and self.progress.is_file() and self.partial.is_file():
            offset = self._read_progress()
        if offset is None:
            with open(self.partial, "wb") as f:
                f.write((RESULTS_HEADER + "\n").encode("ascii"))
            with open(self.progress, "w", encoding="utf8") as f:
                f.write(json.dumps({"settings": self.settings}) + "\n")
            self.done = set()
        else:
            with open(self.partial, "r+b") as f:
                f.truncate(offset)
        self._csv = open(self.partial, "ab")
        self._log = open(self.progress, "a", encoding="utf8")

    def _read_progress(self) -> Optional[int]:
        """Finished images of the previous run (into ``done``) and the CSV size after the last one;
        None when the log is unreadable or inconsistent (the run starts afresh)."""
        lines = self.progress.read_text(encoding="utf8").splitlines()
        try:
            head = json.loads(lines[0])["settings"]
        except (IndexError, KeyError, TypeError, json.JSONDecodeError):
            return None
        if head != self.settings:
            diff = sorted(k for k in set(head) | set(self.settings) if head.get(k) != self.settings.get(k))
            raise InferError(f"{self.partial}: an interrupted run with other settings ({', '.join(diff)}) is "
                             f"there; use --no-resume to start afresh, or another --out")
        offset, done = len(RESULTS_HEADER) + 1, set()
        for ln in lines[1:]:
            try:
                r = json.loads(ln)
                key, off = (int(r["scene_id"]), int(r["im_id"])), int(r["offset"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break  # a torn last line: that image is redone
            done.add(key)
            offset = off
        if offset > self.partial.stat().st_size:
            return None
        self.done = done
        return offset

    def write_image(self, scene_id: int, im_id: int, rows: Sequence[dict]) -> None:
        """Append the rows (``{scene_id, im_id, obj_id, score, R (3,3), t (3,) mm, time s}``) of one
        image, flush, then record the image as done."""
        if rows:
            self._csv.write("".join(format_result_row(r) + "\n" for r in rows).encode("ascii"))
        self._csv.flush()
        os.fsync(self._csv.fileno())
        self._log.write(json.dumps({"scene_id": int(scene_id), "im_id": int(im_id), "rows": len(rows),
                                    "offset": self._csv.tell()}) + "\n")
        self._log.flush()
        self.done.add((int(scene_id), int(im_id)))

    def close(self) -> None:
        for f in (self._csv, self._log):
            if not f.closed:
                f.close()

    def finish(self) -> None:
        """Close and publish ``path`` atomically; remove the progress log."""
        self.close()
        os.replace(self.partial, self.path)
        self.progress.unlink(missing_ok=True)


def _pose_rows(scene_id: int, im_id: int, poses, seconds: float) -> list[dict]:
    return [{"scene_id": scene_id, "im_id": im_id, "obj_id": p.obj_id, "score": p.det_score,
             "R": p.R, "t": p.t, "time": seconds} for p in poses]


def infer_split(data_dir, model, out, *, split: str = "test", split_type: Optional[str] = None,
                backend: Optional[str] = None, detections=None, targets=None, dataset: Optional[str] = None,
                device: str = "cpu", threads: int = 0, precision: Optional[str] = None, resume: bool = True,
                progress: bool = True, renderer=None, limit: Optional[int] = None,
                report: Optional[Callable[[str], None]] = None, opened: Optional[tuple] = None,
                models=None, all_detections: bool = False, method: Optional[str] = None,
                tta_select: str = "score") -> InferSummary:
    """Run every target image of a BOP split and write the BOP'19 results CSV ``out``.

    data_dir: BOP dataset folder (``models/``, ``<split>[_<split_type>]/<scene>/``,
    ``test_targets_bop19.json``; a folder, or a dataset name found as ``$BOP_PATH/<name>``:
    :func:`mrcnet.runtime.datasets.find_dataset`); model: checkpoint or export directory (:func:`open_model`, with
    ``backend``, ``dataset``, ``device``, ``threads``, ``precision``); detections: BOP'22 detections
    file, or None for ground-truth boxes; targets: targets file (default: the dataset's, else derived
    from the annotations). resume: continue an interrupted run with the same settings.
    renderer: a ``mrcnet.runtime.render.Renderer`` (created when None). limit: run at most this many
    new images, then stop (the CSV stays partial; for tests and chunked runs). report: called with
    one line per skipped image (default: log warning). opened: (backend, manifest) already open
    (e.g. an int8 ONNX Runtime backend of an export); ``model`` is then only recorded, and the
    backend is left open. models: the models folder a checkpoint renders with (name inside the
    dataset folder, or a path; default: the dataset preset's for the split, e.g. T-LESS
    ``models_cad``, else ``models``: :func:`mrcnet.runtime.datasets.render_models_dir`).
    A split without ground truth (ITODD's test split: no ``scene_gt.json``) runs from its targets
    file and needs ``detections``. all_detections: see :func:`select_detections`. out: a ``.csv``
    file, or a folder (None: ``results``) for BOP's name with ``method`` (:func:`results_path`).
    tta_select: the TTA selection (:data:`mrcnet.runtime.geometry.TTA_SELECT_MODES`; "score" is the official rule).
    Returns :class:`InferSummary`; raises :class:`InferError` / ``BopFormatError`` naming the input.
    """
    say = report or (lambda msg: log.warning("%s", msg))
    t_start = time.perf_counter()
    try:
        root = find_dataset(data_dir)
    except DatasetPathError as e:
        raise InferError(str(e)) from None
    out = results_path(out, root, model, split, dataset, method)
    check_out_file(out)
    split_folder = bop.split_dirname(split, split_type)
    has_targets_file = targets is not None or (root / bop.TARGETS_FILENAME).is_file()
    try:
        models_dir = render_models_dir(root, dataset, split_folder, models)
    except DatasetPathError as e:
        raise InferError(str(e)) from None
    ds = bop.BopDataset(root, split, split_type=split_type, models=str(models_dir.resolve()),
                        require_gt=not has_targets_file)
    no_gt = sorted({rec.scene_id for rec in ds if not (rec.scene_dir / "scene_gt.json").is_file()})
    if no_gt and detections is None:
        raise InferParameterError("data_dir", f"split {split_folder} has no ground truth (scene {no_gt[0]:06d} has no "
                                  "scene_gt.json): pass {detections} (e.g. the BOP'22 default detections)", root)
    target_list = ds.targets(targets)
    tpath = ds.targets_path(targets)
    unknown = []
    if tpath is not None:  # targets of images that are missing or in skipped scenes: say so
        indexed = {(r.scene_id, r.im_id) for r in ds}
        unknown = sorted({(t["scene_id"], t["im_id"]) for t in bop.load_test_targets(tpath)} - indexed)
        if unknown:
            say(f"{tpath}: {len(unknown)} target image(s) are not in {ds.split_dir} (first: scene {unknown[0][0]} "
                f"image {unknown[0][1]}); they count as misses")
    if not target_list:
        raise InferParameterError("data_dir", f"split {bop.split_dirname(split, split_type)} has no targets", root)
    grouped_dets = None
    if detections is not None:
        grouped_dets = bop.group_detections(bop.load_detections(detections))

    if opened is not None:
        be, man = opened
    else:
        be, man = open_model(model, backend, models_root=root, models_dir=str(models_dir.resolve()),
                             dataset=dataset, device=device, threads=threads, precision=precision)
    settings = {"data": str(root.resolve()), "split": bop.split_dirname(split, split_type),
                "model": str(Path(model).resolve()), "backend": be.name,
                "detections": None if detections is None else str(Path(detections).resolve()),
                "targets": None if targets is None else str(Path(targets).resolve()),
                "all_detections": bool(all_detections),
                # recorded when not the official rule (progress files of earlier runs stay resumable)
                **({"tta_select": tta_select} if tta_select != "score" else {})}
    summary = InferSummary(out=str(out), backend=be.name, model=str(model), unknown_targets=unknown)
    if renderer is None:
        renderer = Renderer()
    try:
        pipe = Pipeline(be, man, renderer, tta_select=tta_select)  # (re)uploads the model's meshes: a shared renderer may hold others
    except ManifestError as e:  # a model of another dataset (T-LESS weights on LM-O data...)
        if opened is None:
            be.close()
        raise InferParameterError("model", str(e), model) from None
    writer = ResumableResultsWriter(out, settings, resume=resume)
    by_image: dict = {}
    for t in target_list:
        by_image.setdefault((t["scene_id"], t["im_id"]), []).append(t)
    keys = sorted(by_image)
    summary.images = len(keys)
    todo = [k for k in keys if k not in writer.done]
    summary.resumed = len(keys) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    sums = {s: 0.0 for s in (*STAGES, "total")}
    try:
        for key in tqdm(todo, desc=f"infer {be.name}", unit="img", disable=not progress):
            scene_id, im_id = key
            try:
                rec = ds.image(scene_id, im_id)
                img = rec.load_image("bgr")
                dets, missing = select_detections(rec, by_image[key], None if grouped_dets is None
                                                  else grouped_dets.get(key, []), all_detections)
                res = pipe.estimate_frame(img, rec.K, dets) if dets else None
            except (bop.BopFormatError, InputError, KeyError) as e:
                msg = str(e.args[0]) if isinstance(e, KeyError) else str(e)
                summary.bad_images.append((scene_id, im_id, msg))
                say(f"skipped scene {scene_id} image {im_id}: {msg}")
                writer.write_image(scene_id, im_id, [])  # no estimates: its targets count as misses
                continue
            summary.missing_detections += sum(n for _, n in missing)
            rows = []
            if res is not None:
                for d, why in res.skipped:
                    oid = getattr(d, "obj_id", None)
                    summary.skipped_detections.append((scene_id, im_id, oid, why))
                rows = _pose_rows(scene_id, im_id, res.poses, res.timings["total"] / 1000.0)
                for s in sums:
                    sums[s] += res.timings.get(s, 0.0)
            writer.write_image(scene_id, im_id, rows)
            summary.done += 1
            summary.estimates += len(rows)
        summary.complete = all(k in writer.done for k in keys)
        if summary.complete:
            writer.finish()
    finally:
        writer.close()
        if opened is None:
            pipe.close()
    if summary.done:
        summary.stage_ms = {s: v / summary.done for s, v in sums.items()}
    summary.seconds = time.perf_counter() - t_start
    return summary


def compare_results(reference, other, max_deg: float = 1.0, max_mm: float = 1.0) -> dict:
    """Pose agreement of two results CSVs on the same targets (e.g. a backend vs torch).

    Rows are paired by (scene_id, im_id, obj_id) and their order within that key (both runs see
    the same detections in the same order). Returns ``{"pairs", "unpaired", "within" (share of pairs
    with rotation angle < max_deg degrees and translation distance < max_mm mm), "rot_deg"
    {median, max}, "trans_mm" {median, max}}``.
    """
    def keyed(rows):
        out: dict = {}
        for r in rows:
            out.setdefault((r["scene_id"], r["im_id"], r["obj_id"]), []).append(r)
        return out

    a, b = keyed(load_bop_results(reference)), keyed(load_bop_results(other))
    rot, tr, unpaired = [], [], 0
    for k in set(a) | set(b):
        ra, rb = a.get(k, []), b.get(k, [])
        unpaired += abs(len(ra) - len(rb))
        for x, y in zip(ra, rb):
            rot.append(float(rotation_angle_deg(x["R"], y["R"])))
            tr.append(float(np.linalg.norm(x["t"] - y["t"])))
    rot_a, tr_a = np.asarray(rot), np.asarray(tr)
    n = len(rot)
    return {"pairs": n, "unpaired": unpaired,
            "within": float(np.mean((rot_a < max_deg) & (tr_a < max_mm))) if n else float("nan"),
            "thresholds": {"deg": max_deg, "mm": max_mm},
            "rot_deg": {"median": float(np.median(rot_a)) if n else float("nan"),
                        "max": float(rot_a.max()) if n else float("nan")},
            "trans_mm": {"median": float(np.median(tr_a)) if n else float("nan"),
                         "max": float(tr_a.max()) if n else float("nan")}}

"""The torch-free pose pipeline: frame + camera + detections -> object poses (docs/MODEL.md §1-4).

One frame: every valid detection becomes a TTA group of ``n_rot`` crops (``preprocess``); the
detections go through the classifier in chunks of at most the backend's capacity (``max_crops``:
the TensorRT profile's maximum, a memory bound for ONNX Runtime) and ``max_detections``; per chunk
the renderer draws each crop's object at its stage-1 pose (R_init, t_init) with the crop camera
K_roi and the regressor refines. The BatchNorm statistics are per detection (``bn_group`` =
``n_rot``), so chunks give the same poses as one batch. The TTA selection picks and un-rotates the
rotation and translation of each detection (``geometry.tta_select``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np

from . import preprocess as P
from .detections import Detection, as_detection
from .geometry import TTA_SELECT_MODES, tta_select
from .manifest import SCORE_OUTPUTS, Manifest

log = logging.getLogger(__name__)

STAGES = ("preprocess", "classifier", "render", "regressor", "postprocess")


@dataclass
class Pose:
    """One estimated object pose in the camera frame.

    obj_id: BOP object id; R (3, 3) float64 model -> camera rotation; t (3,) float64 mm
    (``X_cam = R X_model + t``); score: the TTA-selected crop's max rotation logit (``rot_score``);
    box (4,) the detection box xyxy in pixels; timings: the frame's per-stage times in ms (shared
    by all poses of the frame: the detections run batched).
    """

    obj_id: int
    R: np.ndarray
    t: np.ndarray
    score: float
    box: np.ndarray
    timings: dict = field(default_factory=dict)
    det_score: float = 1.0

    def to_dict(self) -> dict:
        return {"obj_id": self.obj_id, "R": np.round(self.R, 7).tolist(), "t": np.round(self.t, 4).tolist(),
                "score": round(float(self.score), 5), "det_score": round(float(self.det_score), 4),
                "box": [round(float(v), 2) for v in self.box]}


@dataclass
class FrameResult:
    """poses: estimated poses; skipped: (detection, reason) of detections that were not run;
    timings: ms per stage (``STAGES``) plus "total"."""

    poses: list[Pose]
    skipped: list[tuple[Detection, str]]
    timings: dict


@dataclass
class PreparedFrame:
    """A frame between :meth:`Pipeline.prepare` and :meth:`Pipeline.finish`: image (H, W, 3)
    uint8, K (3, 3), pending: detections not yet preprocessed, kept / skipped detections so far,
    batches / index: the crops (``CropBatch`` per detection) and object indices of the next chunk,
    tm: stage times in ms."""

    image: np.ndarray
    K: np.ndarray
    pending: Iterator
    kept: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    batches: list = field(default_factory=list)
    index: list = field(default_factory=list)
    tm: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})


class Pipeline:
    """Pose estimation with a backend, the export's manifest and a renderer.

    backend: a ``backends.Backend`` (or ``mrcnet.inference.TorchBackend``).
    manifest: the export's ``Manifest`` (objects, crop size, n_rot, fov variant).
    renderer: an object with ``add_object(obj_id, mesh)`` and
      ``render(obj_ids, R, t, K, width, height) -> .rgb (N,H,W,3) [0,1], .mask (N,H,W)``
      (``runtime.render.Renderer``). meshes: {obj_id: Mesh} to upload; None loads every object's
      model from the export directory; pass {} when the renderer already holds them.
    max_detections: most detections per backend call (default: the backend's capacity; never more).
    tta_select: how each detection's rotation is picked from its TTA group
      (``geometry.TTA_SELECT_MODES``: "score", the official rule, or "agreement").
    """

    def __init__(self, backend, manifest: Manifest, renderer, meshes: Optional[dict] = None,
                 max_detections: Optional[int] = None, tta_select: str = "score"):
        if tta_select not in TTA_SELECT_MODES:
            raise ValueError(f"tta_select {tta_select!r} is not one of {TTA_SELECT_MODES}")
        self.tta_mode = tta_select
        self.backend = backend
        self.chunk = chunk_size(backend, manifest.n_rot, max_detections)
        self.manifest = manifest
        self.renderer = renderer
        self.meshes = manifest.load_meshes() if meshes is None else meshes
        for oid, mesh in self.meshes.items():
            renderer.add_object(int(oid), mesh)
        outs = set(backend.classifier_outputs)
        self._cls_fetch = ["R_init", "t_init"] + [n for n in SCORE_OUTPUTS if n in outs]
        reg_outs = set(backend.regressor_outputs)
        self._reg_fetch = ["R", "t"] + [n for n in SCORE_OUTPUTS if n in reg_outs and n not in outs]
        missing = [n for n in SCORE_OUTPUTS if n not in outs and n not in reg_outs]
        if missing:
            raise ValueError(f"backend {backend.name}: graphs do not output {missing} (TTA scores)")

    # ------------------------------------------------------------------------------ API
    def estimate(self, frame_bgr: np.ndarray, K: np.ndarray, detections: Iterable) -> list[Pose]:
        """Poses of the detections in one frame (see :meth:`estimate_frame`); bad ones are skipped."""
        return self.estimate_frame(frame_bgr, K, detections).poses

    def estimate_frame(self, frame_bgr: np.ndarray, K: np.ndarray, detections: Iterable) -> FrameResult:
        """frame_bgr (H, W, 3) uint8 BGR (or (H, W) grey); K (3, 3) camera; detections: Detection
        objects or (obj_id, box xyxy) pairs. A detection of an unknown object or with an empty /
        out-of-image box is reported in ``skipped`` (and logged); the others still run. A bad
        frame or camera raises ``preprocess.InputError``. Same as ``finish(prepare(...))``."""
        return self.finish(self.prepare(frame_bgr, K, detections))

    def prepare(self, frame_bgr: np.ndarray, K: np.ndarray, detections: Iterable) -> "PreparedFrame":
        """The CPU-only first part of :meth:`estimate_frame` (checks, crops of the first chunk of
        detections): a run loop can do it for the next frame in another thread while
        :meth:`finish` runs the networks and the renderer on this one. Raises
        ``preprocess.InputError`` for a bad frame or camera."""
        t0 = time.perf_counter()
        prep = PreparedFrame(P.check_image(frame_bgr, "frame"), P.check_camera(K), iter(detections))
        self._fill(prep)
        prep.tm["total"] = _ms(t0)
        return prep

    def finish(self, prep: "PreparedFrame") -> FrameResult:
        """Networks, renderer and TTA selection of a :meth:`prepare`-d frame, chunk by chunk (the
        crops of the next chunk are made after the current one ran: a crowded frame's crops never
        pile up). -> FrameResult; timings include the prepare part."""
        t0 = time.perf_counter()
        tm, chunks = prep.tm, []
        while prep.batches:
            batches, index = prep.batches, prep.index
            prep.batches, prep.index = [], []
            chunks.append(self._run_chunk(batches, index, tm))
            self._fill(prep)
        kept, skipped = prep.kept, prep.skipped
        for d, why in skipped:
            log.warning("skipped detection %s: %s", d.to_dict() if isinstance(d, Detection) else d, why)
        tm["total"] += _ms(t0)
        if not kept:
            return FrameResult([], skipped, tm)
        R, t, score = (np.concatenate(parts) for parts in zip(*chunks))
        poses = []
        for i, d in enumerate(kept):  # a damaged graph or a degenerate input gives NaN / inf: never a result
            if np.all(np.isfinite(R[i])) and np.all(np.isfinite(t[i])) and np.isfinite(score[i]):
                poses.append(Pose(d.obj_id, R[i], t[i], float(score[i]), d.box.copy(), tm, d.score))
            else:
                skipped.append((d, "non-finite pose from the network (NaN or inf): not a result"))
                log.warning("skipped detection %s: non-finite pose", d.to_dict())
        return FrameResult(poses, skipped, tm)

    def _fill(self, prep: "PreparedFrame") -> None:
        """Preprocess ``prep``'s pending detections until one chunk (``self.chunk`` detections)
        is ready or none is left; bad detections go to ``prep.skipped``. Adds the time to
        ``prep.tm["preprocess"]``."""
        m = self.manifest
        t0 = time.perf_counter()
        for raw in prep.pending:
            try:
                d = as_detection(raw)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                prep.skipped.append((raw, f"malformed detection ({e})"))
                continue
            try:
                oi = m.obj_index(d.obj_id)
            except KeyError as e:
                prep.skipped.append((d, str(e.args[0])))
                continue
            try:
                prep.batches.append(P.prepare_detection(prep.image, prep.K, d.box, m.n_rot, m.fov_variant,
                                                        m.crop_size, box_rule=m.box_rule))
            except P.InputError as e:
                prep.skipped.append((d, str(e)))
                continue
            prep.kept.append(d)
            prep.index.append(oi)
            if len(prep.batches) == self.chunk:
                break
        prep.tm["preprocess"] += _ms(t0)

    def _run_chunk(self, batches: list, index: list, tm: dict):
        """Classifier, render, regressor and TTA selection of one chunk of detections; adds the
        stage times (ms) to ``tm``. -> R (D,3,3), t (D,3) mm, score (D,)."""
        m = self.manifest
        t0 = time.perf_counter()
        cb = P.CropBatch.concat(batches)
        obj_index = np.repeat(np.asarray(index, np.int64), m.n_rot)
        feeds = {"crops": cb.crops, "obj_index": obj_index, "fov": cb.fov.astype(np.float32),
                 "K_roi": cb.K_roi.astype(np.float32)}
        t1 = time.perf_counter()
        tm["preprocess"] += _ms(t0, t1)

        out1 = self.backend.run_classifier(feeds, fetch=self._cls_fetch)
        t2 = time.perf_counter()
        tm["classifier"] += _ms(t1, t2)

        render = render_inputs(self.renderer, m.obj_ids, obj_index, out1["R_init"], out1["t_init"], cb.K_roi,
                               m.crop_size)
        t3 = time.perf_counter()
        tm["render"] += _ms(t2, t3)

        out2 = self.backend.run_regressor({"render": render}, fetch=self._reg_fetch)
        t4 = time.perf_counter()
        tm["regressor"] += _ms(t3, t4)

        D, T = len(batches), m.n_rot
        scores = {**out1, **out2}
        res = tta_select(
            np.asarray(out2["R"], np.float64).reshape(D, T, 3, 3),
            np.asarray(out2["t"], np.float64).reshape(D, T, 3),
            np.asarray(scores["rot_score"], np.float64).reshape(D, T),
            np.asarray(scores["depth_score"], np.float64).reshape(D, T),
            cb.Rz.reshape(D, T, 3, 3),
            mode=self.tta_mode,
        )
        tm["postprocess"] += _ms(t4)
        return res

    def close(self) -> None:
        self.backend.close()


def chunk_size(backend, n_rot: int, max_detections: Optional[int] = None) -> int:
    """Detections per backend call: ``max_detections`` (None: no own limit) capped by the backend's
    capacity ``max_crops // n_rot`` (None: unbounded); at least 1. ValueError when the backend
    cannot take even one detection or ``max_detections`` < 1."""
    if max_detections is not None and int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    cap = getattr(backend, "max_crops", None)
    if cap is not None and int(cap) < n_rot:
        raise ValueError(f"backend {getattr(backend, 'name', backend)} takes at most {cap} crops per call, "
                         f"less than one detection ({n_rot} crops)")
    limits = [int(v) for v in (max_detections, None if cap is None else int(cap) // n_rot) if v is not None]
    return min(limits) if limits else 1 << 30


def render_inputs(renderer, obj_ids, obj_index: np.ndarray, R_init: np.ndarray, t_init: np.ndarray,
                  K_roi: np.ndarray, size: int) -> np.ndarray:
    """Stage-2 input (docs/MODEL.md §4): each crop's object ``obj_ids[obj_index]`` rendered at (R_init (N,3,3),
    t_init (N,3) mm) with its crop camera K_roi (N,3,3), ``size`` x ``size`` -> (N, 4, S, S) float32:
    the render's colour (grey: BGR == RGB) in [0, 1] and the box map of its mask
    (``RenderResult.network_input``). renderer: ``render_network_input(obj_ids, R, t, K, size)``
    or ``render(obj_ids, R, t, K, width, height)``, holding the objects (``runtime.render.Renderer``)."""
    ids = np.asarray(obj_ids, np.int64)[np.asarray(obj_index, np.int64)]
    args = (ids, np.asarray(R_init, np.float64), np.asarray(t_init, np.float64), np.asarray(K_roi, np.float64))
    if hasattr(renderer, "render_network_input"):  # the tensor without the full RenderResult
        return renderer.render_network_input(*args, size=size)
    return renderer.render(*args, width=size, height=size).network_input()


def _ms(a: float, b: Optional[float] = None) -> float:
    return ((time.perf_counter() if b is None else b) - a) * 1000.0

"""Output layouts of ONNX detectors and their decoding (no torch): NMS here with OpenCV.

Three layouts, told apart by the graph's outputs (:func:`classify_output`, :func:`output_layout`):

* ``RAW``: a standard Ultralytics export (YOLOv8 / YOLO11 ``yolo export format=onnx``): one
  output (1, 4 + C, A): for each of A anchors ``cx, cy, w, h`` in letterboxed input pixels, then
  C per-class scores in [0, 1]. Decoded by :func:`decode_raw`: best class per anchor, score
  threshold, class-aware NMS (``cv2.dnn.NMSBoxesBatched``), at most ``max_det`` boxes. Segment /
  pose exports append mask or keypoint rows after the class scores; the class count then comes
  from the model's ``names`` metadata.
* ``ROWS``: NMS inside, one output (1, N, 6) of ``x1, y1, x2, y2, score, class`` rows in input
  pixels (Ultralytics ``nms=True``, YOLOv10 / YOLO26 end-to-end exports); padding rows score 0.
* ``SPLIT``: NMS inside, separate outputs boxes (1, M, 4) xyxy, scores (1, M), classes (1, M)
  (+ optional ``num_dets``), matched by name (TensorRT EfficientNMS-style exports).

Ultralytics writes metadata into its ONNX files (``names``: ``{0: 'obj_000001', ...}``,
``imgsz``: ``[640, 640]``, ``task``): :func:`parse_names`, :func:`parse_imgsz`.
"""
from __future__ import annotations

import ast
import re
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

RAW, ROWS, SPLIT = "ultralytics-raw", "nms-rows", "nms-outputs"
#: the layout cannot be told from the graph (symbolic dimensions): decided on the first output
DEFERRED = "deferred"
#: IoU above which a box is suppressed by a better one of the same class (Ultralytics' default)
NMS_IOU = 0.7
#: most boxes kept per frame after NMS, and most candidates entering NMS (Ultralytics' defaults)
MAX_DET, MAX_NMS = 300, 30000
_OBJ_NAME = re.compile(r"^obj_0*(\d+)$")


def classify_output(shape: Sequence) -> Optional[str]:
    """``RAW``, ``ROWS``, ``DEFERRED`` or None (neither) for one output shape; a dimension may be
    symbolic (a str or None). ROWS: (1, N, 6); RAW: (1, 4 + C, A) with C >= 1 and A > 4 + C
    (anchors outnumber channels: 8400 vs 84) or A symbolic."""
    shape = tuple(shape)
    if len(shape) != 3 or (isinstance(shape[0], int) and shape[0] != 1):
        return None
    d1, d2 = shape[1:]
    i1, i2 = isinstance(d1, int), isinstance(d2, int)
    if i2 and d2 == 6:  # (1, N, 6): a raw output with exactly 6 anchors does not occur
        return ROWS
    if i1 and i2:
        return RAW if d1 >= 5 and d2 > d1 else None
    if i1:
        return RAW if d1 >= 5 else None
    return None if i2 else DEFERRED


def output_layout(outputs: Sequence[tuple[str, Sequence]]) -> Optional[str]:
    """The layout of a detector from its outputs ``[(name, shape), ...]``: three or more outputs
    are ``SPLIT``; one (or two: a segment model's mask prototypes second) are classified by the
    first's shape (:func:`classify_output`); None when it is neither."""
    if len(outputs) >= 3:
        return SPLIT
    if not outputs:
        return None
    kind = classify_output(outputs[0][1])
    if len(outputs) == 2 and kind not in (RAW, DEFERRED):
        return None
    return kind


def _literal(metadata: Mapping[str, str], key: str):
    """The Python literal of a metadata value (Ultralytics writes ``str(value)``); None when absent
    or not a literal."""
    text = metadata.get(key)
    if not text:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def parse_names(metadata: Mapping[str, str]) -> Optional[list[str]]:
    """Class names from an Ultralytics ONNX file's ``names`` metadata (``"{0: 'a', 1: 'b'}"``),
    in class order; None when absent or unreadable."""
    names = _literal(metadata, "names")
    if isinstance(names, dict):
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            return None
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def parse_imgsz(metadata: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """(width, height) of the ``imgsz`` metadata (``"[640, 640]"`` = [height, width], or one int);
    None when absent or unreadable."""
    v = _literal(metadata, "imgsz")
    if isinstance(v, int):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return int(v[1]), int(v[0])
    return None


def class_map_from_names(names: Optional[Sequence[str]]) -> Optional[dict[int, int]]:
    """{class: BOP object id} when every class name is ``obj_<id>`` (the names ``mrcnet-synth
    yolo`` gives, kept by Ultralytics in the exported file), else None."""
    if not names:
        return None
    ids = [_OBJ_NAME.match(n) for n in names]
    if not all(ids):
        return None
    return {c: int(m.group(1)) for c, m in enumerate(ids)}


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_threshold: float,
        iou_threshold: float = NMS_IOU, max_det: int = MAX_DET) -> np.ndarray:
    """Indices kept by class-aware NMS (``cv2.dnn.NMSBoxesBatched``), best score first.

    boxes (M, 4) xyxy pixels, scores (M,), classes (M,) ints: a box is suppressed only by a better
    box of its own class overlapping it by more than ``iou_threshold``; boxes below
    ``score_threshold`` are dropped; at most ``max_det`` kept."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    rects = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(rects, np.asarray(scores, np.float32).reshape(-1),
                                   np.asarray(classes, np.int32).reshape(-1), float(score_threshold),
                                   float(iou_threshold), 1.0, int(max_det))
    return np.asarray(keep, np.int64).reshape(-1)


def decode_raw(pred: np.ndarray, score_threshold: float, iou_threshold: float = NMS_IOU,
               n_classes: Optional[int] = None, max_det: int = MAX_DET,
               max_nms: int = MAX_NMS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ultralytics raw output (1, 4 + C, A) -> (boxes (M, 4) xyxy input pixels, scores (M,),
    classes (M,) int64) after the score threshold and class-aware NMS (:func:`nms`).

    Each anchor gives its best class (Ultralytics' single-label decoding); ``n_classes``: use the
    first C class rows only (segment / pose exports have more rows after them); at most
    ``max_nms`` best candidates enter NMS."""
    p = np.asarray(pred, np.float32)
    p = p[0] if p.ndim == 3 else p
    nc = p.shape[0] - 4 if n_classes is None else int(n_classes)
    cls_scores = p[4:4 + nc]  # (C, A)
    classes = cls_scores.argmax(axis=0)
    scores = cls_scores[classes, np.arange(p.shape[1])]
    cand = np.nonzero(scores >= score_threshold)[0]
    if len(cand) > max_nms:
        cand = cand[np.argsort(-scores[cand], kind="stable")[:max_nms]]
    cx, cy, w, h = p[:4, cand].astype(np.float64)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes, scores[cand], classes[cand], score_threshold, iou_threshold, max_det)
    return boxes[keep], scores[cand][keep].astype(np.float64), classes[cand][keep].astype(np.int64)


def decode_rows(pred: np.ndarray, score_threshold: float, max_det: int = MAX_DET
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NMS-inside rows (1, N, 6) ``x1, y1, x2, y2, score, class`` -> (boxes (M, 4), scores (M,),
    classes (M,) int64) of the rows scoring at least ``score_threshold``, best first."""
    p = np.asarray(pred, np.float64).reshape(-1, 6)
    p = p[p[:, 4] >= score_threshold]
    p = p[np.argsort(-p[:, 4], kind="stable")[:max_det]]
    return p[:, :4], p[:, 4], np.rint(p[:, 5]).astype(np.int64)

"""What every detection source shares (no torch): :class:`Detection`, :class:`DetectionError`,
the class map (detector class -> BOP object id) and the letterbox of the frame to a detector input.

A detection is an object id and a box ``(x1, y1, x2, y2)`` in pixels of the full frame. Sources
implement ``__call__(frame_index, frame_bgr) -> list[Detection]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

import cv2
import numpy as np

from ..formats.files import InputFileError, load_yaml


class DetectionError(ValueError):
    """A detection file / detector that cannot be used; the message names it."""


@dataclass
class Detection:
    """One detected object: BOP object id, box (4,) float64 xyxy in pixels, score in [0, 1]."""

    obj_id: int
    box: np.ndarray
    score: float = 1.0
    source: str = "detector"  # "json", "detector", "onnx", "track"

    def __post_init__(self):
        self.obj_id = int(self.obj_id)
        self.box = np.asarray(self.box, np.float64).reshape(-1)
        self.score = float(self.score)

    def to_dict(self) -> dict:
        return {"obj_id": self.obj_id, "box": [round(float(v), 2) for v in self.box],
                "score": round(self.score, 4), "source": self.source}


def as_detection(d) -> Detection:
    """A Detection from a Detection, a dict (obj_id, box xyxy | bbox xywh) or an (obj_id, box) pair."""
    if isinstance(d, Detection):
        return d
    if isinstance(d, Mapping):
        if "box" in d:
            box = d["box"]
        else:
            x, y, w, h = np.asarray(d["bbox"], np.float64)
            box = (x, y, x + w, y + h)
        return Detection(d.get("obj_id", d.get("category_id")), box, d.get("score", 1.0), d.get("source", "detector"))
    obj_id, box = d[0], d[1]
    return Detection(obj_id, box, d[2] if len(d) > 2 else 1.0)


# --------------------------------------------------------------------------------- class map
#: key of data.yaml (``mrcnet-synth yolo``) holding {detector class: BOP object id}
DATA_YAML_OBJ_IDS = "bop_obj_ids"


def parse_class_map(text: Optional[str]) -> Optional[dict[int, int]]:
    """Detector class -> BOP object id from ``"0:1,1:5"`` ({0: 1, 1: 5}) or from the path of a
    ``data.yaml`` written by ``mrcnet-synth yolo`` (its ``bop_obj_ids``); None/"" -> None."""
    if not text:
        return None
    text = str(text)
    if text.lower().endswith((".yaml", ".yml")) or os.path.isfile(text):
        return class_map_from_yaml(text)
    out = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            c, o = part.split(":")
            out[int(c)] = int(o)
        except ValueError:
            raise DetectionError(f"class map {text!r}: expected 'class:obj_id' pairs like 0:1,1:5 "
                                 f"or a data.yaml, got {part!r}") from None
    return out


def class_map_from_yaml(path) -> dict[int, int]:
    """{class: BOP object id} from the ``bop_obj_ids`` of a data.yaml (``mrcnet-synth yolo``)."""
    path = os.fspath(path)
    try:
        data = load_yaml(path)
    except InputFileError as e:
        raise DetectionError(f"class map {e}") from None
    ids = data.get(DATA_YAML_OBJ_IDS) if isinstance(data, dict) else None
    if not isinstance(ids, dict) or not ids:
        raise DetectionError(f"class map {path}: no '{DATA_YAML_OBJ_IDS}' mapping (class: BOP object id); "
                             "write the dataset with mrcnet-synth yolo or give pairs like 0:1,1:5")
    try:
        return {int(c): int(o) for c, o in ids.items()}
    except (TypeError, ValueError):
        raise DetectionError(f"class map {path}: '{DATA_YAML_OBJ_IDS}' must map integers to integers") from None


def to_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                  class_map: Optional[Mapping[int, int]], min_score: float, source: str = "onnx") -> list[Detection]:
    """Detections of (M, 4) xyxy frame boxes, (M,) scores, (M,) classes: weaker than ``min_score``
    dropped; classes through ``class_map`` (classes not in it dropped; None: class = object id)."""
    dets = []
    for b, s, c in zip(boxes, scores, classes):
        if s < min_score:
            continue
        if class_map is not None:
            if int(c) not in class_map:
                continue
            oid = class_map[int(c)]
        else:
            oid = int(c)
        dets.append(Detection(oid, b, float(s), source))
    return dets


# --------------------------------------------------------------------------------- letterbox
@dataclass
class LetterBox:
    """Resize-and-pad of a frame to the detector input: ``x_in = scale * x + pad``."""

    scale: float
    pad: tuple[float, float]

    def to_frame(self, boxes: np.ndarray, frame_size: Optional[tuple[int, int]] = None) -> np.ndarray:
        """(M, 4) xyxy boxes in input pixels -> frame pixels, clipped to ``frame_size`` (W, H) if given."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad[0]) / self.scale
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad[1]) / self.scale
        if frame_size is not None:
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, frame_size[0])
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, frame_size[1])
        return b


def letterbox(frame: np.ndarray, size: tuple[int, int], fill: int = 114) -> tuple[np.ndarray, LetterBox]:
    """Resize (keep aspect) and pad a (H, W, 3) frame to ``size`` = (width, height), the image
    centred (Ultralytics' LetterBox: grey 114 padding, the odd pixel on the right / bottom)."""
    h, w = frame.shape[:2]
    W, H = size
    s = min(W / w, H / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    px, py = (W - nw) // 2, (H - nh) // 2
    out = np.full((H, W, 3), fill, np.uint8)
    out[py:py + nh, px:px + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, LetterBox(s, (px, py))

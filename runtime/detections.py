"""Detection sources for the runtime (no torch): BOP'22/COCO JSON files and ONNX detectors.

A detection is an object id and a box ``(x1, y1, x2, y2)`` in pixels of the full frame. Sources
implement ``__call__(frame_index, frame_bgr) -> list[Detection]``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from .formats.bop import BopFormatError, load_detections


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


# ------------------------------------------------------------------------------ JSON files
class JsonDetections:
    """Detections from a JSON file, keyed by frame.

    Accepted layouts (``bbox`` is ``[x, y, w, h]`` in pixels; ``category_id`` / ``obj_id`` is the
    BOP object id; the frame index is ``image_id`` / ``im_id``):

    * BOP'22 default detections / COCO results: a list of records
      ``{"scene_id", "image_id", "category_id", "bbox", "score"}``;
    * COCO: ``{"annotations": [...records...]}``;
    * a dict keyed by frame index: ``{"0": [{"obj_id", "bbox" | "box"(xyxy), "score"}, ...]}``.

    scene_id: keep only records of this scene (BOP files hold several); min_score: drop weaker
    boxes; top_k_per_object: keep the best k boxes of each object per frame (None: all).
    """

    def __init__(self, path, scene_id: Optional[int] = None, min_score: float = 0.0,
                 top_k_per_object: Optional[int] = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DetectionError(f"detections file not found: {self.path}")
        try:
            records = load_detections(self.path, strict=False)
        except BopFormatError as e:
            raise DetectionError(f"detections file {e}") from None
        self.by_frame: dict[int, list[Detection]] = defaultdict(list)
        scenes = sorted({r["scene_id"] for r in records if r["scene_id"] is not None})
        if scene_id is not None and scenes and int(scene_id) not in scenes:
            raise DetectionError(f"detections file {self.path}: no detections of --scene-id {scene_id} "
                                 f"(scenes in the file: {', '.join(map(str, scenes[:10]))})")
        for r in records:
            if scene_id is not None and r["scene_id"] is not None and r["scene_id"] != int(scene_id):
                continue
            x, y, w, h = r["bbox"]
            self.by_frame[r["image_id"]].append(Detection(r["category_id"], (x, y, x + w, y + h), r["score"], "json"))
        for frame, dets in self.by_frame.items():
            dets = [d for d in dets if d.score >= min_score]
            dets.sort(key=lambda d: -d.score)
            if top_k_per_object is not None:
                count: dict[int, int] = defaultdict(int)
                kept = []
                for d in dets:
                    if count[d.obj_id] < top_k_per_object:
                        kept.append(d)
                        count[d.obj_id] += 1
                dets = kept
            self.by_frame[frame] = dets

    @property
    def frames(self) -> list[int]:
        return sorted(self.by_frame)

    def __call__(self, frame_index: int, frame_bgr=None) -> list[Detection]:
        return [Detection(d.obj_id, d.box.copy(), d.score, d.source) for d in self.by_frame.get(int(frame_index), [])]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_frame.values())


# ----------------------------------------------------------------------------- ONNX detector
def parse_class_map(text: Optional[str]) -> Optional[dict[int, int]]:
    """``"0:1,1:5"`` -> {0: 1, 1: 5} (detector class -> BOP object id); None/"" -> None."""
    if not text:
        return None
    out = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            c, o = part.split(":")
            out[int(c)] = int(o)
        except ValueError:
            raise DetectionError(f"class map {text!r}: expected 'class:obj_id' pairs like 0:1,1:5, got {part!r}") from None
    return out


@dataclass
class LetterBox:
    """Resize-and-pad of a frame to the detector input: ``x_in = scale * x + pad``."""

    scale: float
    pad: tuple[float, float]

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad[0]) / self.scale
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad[1]) / self.scale
        return b


def letterbox(frame: np.ndarray, size: tuple[int, int], fill: int = 114) -> tuple[np.ndarray, LetterBox]:
    """Resize (keep aspect) and pad a (H, W, 3) frame to ``size`` = (width, height)."""
    h, w = frame.shape[:2]
    W, H = size
    s = min(W / w, H / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    px, py = (W - nw) // 2, (H - nh) // 2
    out = np.full((H, W, 3), fill, np.uint8)
    out[py:py + nh, px:px + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, LetterBox(s, (px, py))


class OnnxDetector:
    """A 2D detector exported to ONNX with YOLO-style post-NMS outputs.

    Input: one image tensor (1, 3, H, W) float32, RGB in [0, 1] (``rgb=False``: BGR). A fixed H, W
    in the graph means letterbox (aspect kept, grey padding); a dynamic one gets the frame as is.
    Outputs, matched by name (``*box*``, ``*score*``, ``*class*``/``*label*``, optional
    ``num*``), else by position (boxes, scores, classes): boxes (1, M, 4) or (M, 4) xyxy in input
    pixels, scores (1, M), classes (1, M). With ``num_dets`` only the first num rows count.
    class_map: detector class -> BOP object id (None: the class *is* the object id); classes not in
    the map are dropped. score_threshold: drop weaker detections.
    """

    def __init__(self, path, class_map: Optional[Mapping[int, int]] = None, score_threshold: float = 0.25,
                 rgb: bool = True, providers: Optional[Sequence[str]] = None):
        import onnxruntime as ort

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DetectionError(f"detector not found: {self.path}")
        try:
            self.session = ort.InferenceSession(self.path, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:
            raise DetectionError(f"detector {self.path}: cannot load ({str(e).splitlines()[0]})") from None
        inp = self.session.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 4:
            raise DetectionError(f"detector {self.path}: expected one (1,3,H,W) image input, got "
                                 f"{[(i.name, i.shape) for i in inp]}")
        self.input_name = inp[0].name
        h, w = inp[0].shape[2:]
        self.input_size = (w, h) if isinstance(w, int) and isinstance(h, int) else None
        self.out_names = [o.name for o in self.session.get_outputs()]
        self.roles = self._roles(self.out_names)
        self.class_map = dict(class_map) if class_map else None
        self.score_threshold = float(score_threshold)
        self.rgb = rgb

    def _roles(self, names: list[str]) -> dict[str, str]:
        roles = {}
        for n in names:
            low = n.lower()
            for role, keys in (("num", ("num",)), ("boxes", ("box",)), ("scores", ("score", "conf")),
                               ("classes", ("class", "label", "cls"))):
                if role not in roles and any(k in low for k in keys):
                    roles[role] = n
                    break
        if not all(r in roles for r in ("boxes", "scores", "classes")):
            if len(names) < 3:
                raise DetectionError(f"detector {self.path}: expected outputs boxes, scores, classes; got {names}")
            rest = [n for n in names if n != roles.get("num")]
            roles.update(boxes=rest[0], scores=rest[1], classes=rest[2])
        return roles

    def __call__(self, frame_index: int, frame_bgr: np.ndarray) -> list[Detection]:
        img = frame_bgr if frame_bgr.dtype == np.uint8 else np.clip(frame_bgr, 0, 255).astype(np.uint8)
        if self.input_size is not None:
            img, lb = letterbox(img, self.input_size)
        else:
            lb = LetterBox(1.0, (0.0, 0.0))
        if self.rgb:
            img = img[:, :, ::-1]
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255.0
        outs = dict(zip(self.out_names, self.session.run(None, {self.input_name: x})))
        boxes = np.asarray(outs[self.roles["boxes"]], np.float64).reshape(-1, 4)
        scores = np.asarray(outs[self.roles["scores"]], np.float64).reshape(-1)
        classes = np.asarray(outs[self.roles["classes"]]).reshape(-1).astype(np.int64)
        if "num" in self.roles:
            n = int(np.asarray(outs[self.roles["num"]]).reshape(-1)[0])
            boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
        if not (len(boxes) == len(scores) == len(classes)):
            raise DetectionError(f"detector {self.path}: {len(boxes)} boxes, {len(scores)} scores, "
                                 f"{len(classes)} classes")
        boxes = lb.to_frame(boxes)
        dets = []
        for b, s, c in zip(boxes, scores, classes):
            if s < self.score_threshold:
                continue
            if self.class_map is not None:
                if int(c) not in self.class_map:
                    continue
                oid = self.class_map[int(c)]
            else:
                oid = int(c)
            dets.append(Detection(oid, b, float(s), "onnx"))
        return dets

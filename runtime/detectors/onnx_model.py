"""A 2D detector exported to ONNX, run with ONNX Runtime (no torch): :class:`OnnxDetector`.

The session is built by the runtime's one session factory
(:func:`mrcnet.runtime.backends.onnxruntime.create_session`), so the detector runs on the
providers the pose networks use (:func:`make_detector` passes them). The output layout
(Ultralytics raw, NMS rows, separate NMS outputs) is read from the graph
(:mod:`.ultralytics`).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from ..backends.base import BackendError
from ..backends.onnxruntime import create_session
from . import ultralytics as U
from .base import DetectionError, LetterBox, letterbox, to_detections


class OnnxDetector:
    """A 2D detector in ONNX: ``(frame_index, frame_bgr (H, W, 3) uint8) -> list[Detection]``
    (boxes xyxy in frame pixels, clipped to the frame).

    Input: one image tensor (1, 3, H, W) float32 (or float16), RGB in [0, 1] (``rgb=False``: BGR).
    A fixed H, W in the graph (or Ultralytics' ``imgsz`` metadata for a dynamic one) means
    letterbox (aspect kept, grey 114 padding, centred) and boxes mapped back through it; a dynamic
    input without metadata gets the frame as is.

    Outputs, told apart from the graph (:func:`.ultralytics.output_layout`):

    * Ultralytics raw (1, 4 + C, A): decoded here, class-aware NMS with OpenCV at
      ``iou_threshold``, at most ``max_det`` boxes;
    * NMS rows (1, N, 6) ``x1, y1, x2, y2, score, class``;
    * separate boxes (1, M, 4) xyxy, scores (1, M), classes (1, M) (+ optional ``num_dets``),
      matched by name (``*box*``, ``*score*``/``*conf*``, ``*class*``/``*label*``, ``num*``), else
      by position.

    Anything else raises :class:`DetectionError` with one line naming the file and the shapes.
    class_map: detector class -> BOP object id; classes not in the map are dropped. None: from the
    file's class names when they are all ``obj_<id>`` (``mrcnet-synth yolo`` datasets), else the
    class *is* the object id. score_threshold: drop weaker detections. providers: ONNX Runtime
    providers (names or (name, options)); None: every installed one, GPU first.
    """

    def __init__(self, path, class_map: Optional[Mapping[int, int]] = None, score_threshold: float = 0.25,
                 rgb: bool = True, providers: Optional[Sequence] = None, *, iou_threshold: float = U.NMS_IOU,
                 max_det: int = U.MAX_DET, threads: int = 0):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DetectionError(f"detector not found: {self.path}")
        try:
            self.session = create_session(self.path, providers, threads, what="detector")
        except BackendError as e:
            raise DetectionError(str(e)) from None
        self.providers = self.session.get_providers()
        inp = self.session.get_inputs()
        if len(inp) != 1 or len(inp[0].shape) != 4:
            raise DetectionError(f"detector {self.path}: expected one (1, 3, H, W) image input, got "
                                 f"{', '.join(f'{i.name} {tuple(i.shape)}' for i in inp)}")
        self.input_name = inp[0].name
        self.input_dtype = np.float16 if "float16" in inp[0].type else np.float32
        meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
        self.names = U.parse_names(meta)
        h, w = inp[0].shape[2:]
        self.input_size = (w, h) if isinstance(w, int) and isinstance(h, int) else U.parse_imgsz(meta)
        outs = self.session.get_outputs()
        self.out_names = [o.name for o in outs]
        self._out_desc = ", ".join(f"{o.name} {tuple(o.shape)}" for o in outs)
        self.layout = U.output_layout([(o.name, o.shape) for o in outs])
        if self.layout is None:
            raise self._unsupported()
        self.roles = self._roles(self.out_names) if self.layout == U.SPLIT else {}
        self.class_map = dict(class_map) if class_map else U.class_map_from_names(self.names)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_det = int(max_det)
        self.rgb = rgb

    def _unsupported(self, shapes: Optional[str] = None) -> DetectionError:
        return DetectionError(
            f"detector {self.path}: unsupported outputs {shapes or self._out_desc}; expected an Ultralytics "
            "raw output (1, 4+classes, anchors), NMS rows (1, N, 6) or boxes, scores, classes outputs")

    @property
    def n_classes(self) -> Optional[int]:
        """Class count of a raw output (the ``names`` metadata when it fits, else rows - 4)."""
        shape = self.session.get_outputs()[0].shape
        rows = shape[1] if len(shape) == 3 and isinstance(shape[1], int) else None
        if self.names and (rows is None or len(self.names) <= rows - 4):
            return len(self.names)
        return None if rows is None else rows - 4

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
            rest = [n for n in names if n != roles.get("num")]
            if len(rest) < 3:
                raise self._unsupported()
            roles.update(boxes=rest[0], scores=rest[1], classes=rest[2])
        return roles

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, LetterBox]:
        """(1, 3, H, W) input tensor of a frame and the letterbox that made it."""
        img = frame_bgr if frame_bgr.dtype == np.uint8 else np.clip(frame_bgr, 0, 255).astype(np.uint8)
        if self.input_size is not None:
            img, lb = letterbox(img, self.input_size)
        else:
            lb = LetterBox(1.0, (0.0, 0.0))
        if self.rgb:
            img = img[:, :, ::-1]
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / np.float32(255.0)
        return x.astype(self.input_dtype, copy=False), lb

    def decode(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The session's outputs -> (boxes (M, 4) xyxy input pixels, scores (M,), classes (M,))."""
        layout = self.layout
        if layout == U.DEFERRED:
            layout = U.classify_output(np.shape(outputs[0]))
            if layout not in (U.RAW, U.ROWS):
                raise self._unsupported(f"{self.out_names[0]} {tuple(np.shape(outputs[0]))}")
        if layout == U.RAW:
            return U.decode_raw(outputs[0], self.score_threshold, self.iou_threshold, self.n_classes, self.max_det)
        if layout == U.ROWS:
            return U.decode_rows(outputs[0], self.score_threshold, self.max_det)
        outs = dict(zip(self.out_names, outputs))
        boxes = np.asarray(outs[self.roles["boxes"]], np.float64).reshape(-1, 4)
        scores = np.asarray(outs[self.roles["scores"]], np.float64).reshape(-1)
        classes = np.asarray(outs[self.roles["classes"]]).reshape(-1).astype(np.int64)
        if "num" in self.roles:
            n = int(np.asarray(outs[self.roles["num"]]).reshape(-1)[0])
            boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
        if not (len(boxes) == len(scores) == len(classes)):
            raise DetectionError(f"detector {self.path}: {len(boxes)} boxes, {len(scores)} scores, "
                                 f"{len(classes)} classes")
        return boxes, scores, classes

    def __call__(self, frame_index: int, frame_bgr: np.ndarray):
        x, lb = self.preprocess(frame_bgr)
        boxes, scores, classes = self.decode(self.session.run(None, {self.input_name: x}))
        H, W = frame_bgr.shape[:2]
        return to_detections(lb.to_frame(boxes, (W, H)), scores, classes, self.class_map, self.score_threshold)

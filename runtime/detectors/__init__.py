"""Detection sources for the runtime (no torch), behind one small interface:
``detect(frame_index, frame_bgr (H, W, 3) uint8) -> list[Detection]`` (boxes xyxy, frame pixels).

- :mod:`.base`: :class:`Detection`, :class:`DetectionError`, class maps (:func:`parse_class_map`:
  ``0:1,1:5`` or a ``data.yaml`` of ``mrcnet-synth yolo``), the letterbox (:func:`letterbox`).
- :mod:`.json_file`: :class:`JsonDetections` (BOP'22 / COCO detection files, keyed by frame).
- :mod:`.onnx_model`: :class:`OnnxDetector` (a detector in ONNX, run by ONNX Runtime).
- :mod:`.ultralytics`: the output layouts (Ultralytics raw (1, 4 + C, A), NMS rows (1, N, 6),
  separate NMS outputs), their decoding and OpenCV's class-aware NMS.

:func:`make_detector` is what ``mrcnet-run`` calls: a JSON file or an ONNX detector on the same
ONNX Runtime providers as the pose networks. ``mrcnet.runtime.detections`` re-exports these names.
"""
from __future__ import annotations

import os
from typing import Optional

from ..backends.onnxruntime import ORT_TRT_CACHE_DIR, session_providers
from .base import (DATA_YAML_OBJ_IDS, Detection, DetectionError, LetterBox, as_detection, class_map_from_yaml,
                   letterbox, parse_class_map, to_detections)
from .json_file import JsonDetections
from .onnx_model import OnnxDetector
from .ultralytics import NMS_IOU

#: score below which a detector's boxes are dropped by default (JSON files: none are)
DETECTOR_MIN_SCORE = 0.25

__all__ = [
    "Detection", "DetectionError", "LetterBox", "as_detection", "letterbox", "parse_class_map",
    "class_map_from_yaml", "to_detections", "JsonDetections", "OnnxDetector", "make_detector",
    "DATA_YAML_OBJ_IDS", "DETECTOR_MIN_SCORE", "NMS_IOU",
]


def make_detector(detections=None, detector=None, *, class_map=None, min_score: Optional[float] = None,
                  iou: Optional[float] = None, scene_id: Optional[int] = None, backend: str = "auto",
                  threads: int = 0, device_id: int = 0, export_dir=None):
    """The detection source of a run: :class:`JsonDetections` of the file ``detections``, or an
    :class:`OnnxDetector` of the ONNX file ``detector`` (exactly one of them).

    class_map: ``"0:1,1:5"``, a data.yaml path or a dict (detector only; :func:`parse_class_map`).
    min_score: drop weaker boxes (default 0 for a file, :data:`DETECTOR_MIN_SCORE` for a detector).
    iou: NMS IoU threshold of raw detector outputs (default :data:`NMS_IOU`). scene_id: the file's
    detections of this BOP scene. backend: the pose backend's kind (``mrcnet-run --backend``): the
    detector gets the same ONNX Runtime providers (``onnxruntime-cpu``: CPU; any other: TensorRT,
    CUDA, CPU as installed, the GPU ones on ``device_id``); with the TensorRT provider its engine
    cache goes into ``export_dir``'s ORT cache folder when that folder's export exists.
    Raises :class:`DetectionError` with one line naming the file.
    """
    if (detections is None) == (detector is None):
        raise DetectionError("give exactly one of a detections file or a detector")
    if detections is not None:
        return JsonDetections(detections, scene_id=scene_id, min_score=min_score or 0.0)
    cache = (os.path.join(os.fspath(export_dir), ORT_TRT_CACHE_DIR)
             if export_dir is not None and os.path.isdir(export_dir) else None)
    kind = "onnxruntime-cpu" if backend == "onnxruntime-cpu" else "auto"
    cmap = class_map if isinstance(class_map, dict) else parse_class_map(class_map)
    return OnnxDetector(detector, cmap, score_threshold=DETECTOR_MIN_SCORE if min_score is None else min_score,
                        providers=session_providers(kind, device_id, cache_dir=cache),
                        iou_threshold=NMS_IOU if iou is None else iou, threads=threads)

"""Detection sources for the runtime (no torch): the names of :mod:`mrcnet.runtime.detectors`
under their first home (``from mrcnet.runtime.detections import Detection, OnnxDetector`` keeps
working)."""
from .detectors import (  # noqa: F401  (re-exported)
    DATA_YAML_OBJ_IDS,
    DETECTOR_MIN_SCORE,
    Detection,
    DetectionError,
    JsonDetections,
    LetterBox,
    OnnxDetector,
    as_detection,
    class_map_from_yaml,
    letterbox,
    make_detector,
    parse_class_map,
    to_detections,
)

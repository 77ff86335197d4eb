"""Detections read from a JSON file (BOP'22 default detections, COCO results, keyed by frame)."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Optional

from ..formats.bop import BopFormatError, load_detections
from .base import Detection, DetectionError


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

"""What a run of ``mrcnet-run`` did (no torch): counts, latencies, and the report it prints.

:class:`RunSummary` is returned by :func:`mrcnet.runtime.runner.run`, written as ``summary.json``
(``to_dict``) and printed (``format``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pipeline import STAGES


@dataclass
class RunSummary:
    """What a run did: frame counts, per-stage latencies (ms lists), wall time (s).

    frames: frames processed in this run (each has a record in poses.jsonl; a frame cut short by
    an interrupt has none); frames_failed: of them, unreadable or failed (the record says why); frames_dropped: frames a real-time run skipped because the
    pipeline was still busy (``realtime``: the newest frame was taken instead); pipelined: the
    stages of consecutive frames overlapped (threads); resumed_frames: frames of an earlier run kept (``resume``); interrupted: stopped
    by SIGINT / SIGTERM (``signal`` names it); aborted: why the run stopped early (repeated
    failures), "" otherwise; input_stopped: why the input ended before its announced length.
    """

    frames: int = 0
    frames_failed: int = 0
    poses: int = 0
    skipped_detections: int = 0
    redetections: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    stage_ms: dict = field(default_factory=lambda: {s: [] for s in (*STAGES, "total")})
    backend: str = ""
    resumed_frames: int = 0
    signal: str = ""
    aborted: str = ""
    input_stopped: str = ""
    renderer: str = ""
    frames_dropped: int = 0
    realtime: bool = False
    pipelined: bool = False
    tta_select: str = "score"

    @property
    def fps(self) -> float:
        """End-to-end frames per second (reading, estimation, overlay and writing)."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def percentiles(self) -> dict:
        """{stage: (p50, p90) ms} over the frames that ran the network."""
        return {s: (float(np.percentile(v, 50)), float(np.percentile(v, 90)))
                for s, v in self.stage_ms.items() if v}

    def to_dict(self) -> dict:
        """The ``summary.json`` object (strict JSON types; latencies as p50/p90 ms)."""
        return {"frames": self.frames, "frames_failed": self.frames_failed, "poses": self.poses,
                "skipped_detections": self.skipped_detections, "redetections": self.redetections,
                "resumed_frames": self.resumed_frames, "interrupted": self.interrupted, "signal": self.signal,
                "aborted": self.aborted, "input_stopped": self.input_stopped,
                "wall_s": round(self.wall_s, 3), "fps": round(self.fps, 2), "backend": self.backend,
                "renderer": self.renderer, "realtime": self.realtime, "frames_dropped": self.frames_dropped,
                "pipelined": self.pipelined, "tta_select": self.tta_select,
                "latency_ms": {s: {"p50": round(a, 2), "p90": round(b, 2)} for s, (a, b) in self.percentiles().items()}}

    def format(self) -> str:
        """The report ``mrcnet-run`` prints: counts, FPS, a p50/p90 table per stage, warnings."""
        lines = [f"{self.frames} frames ({self.frames_failed} unreadable or failed), {self.poses} poses, "
                 f"{self.skipped_detections} skipped detections, backend {self.backend}, renderer {self.renderer}"
                 + (f", TTA selection {self.tta_select} (not the official rule)" if self.tta_select != "score" else "")
                 + (f", {self.resumed_frames} frames resumed" if self.resumed_frames else "")
                 + (f", real-time: {self.frames_dropped} frames dropped" if self.realtime else "")
                 + (f" - INTERRUPTED ({self.signal})" if self.interrupted else ""),
                 f"end-to-end {self.fps:.2f} FPS ({self.wall_s:.1f} s, "
                 f"{'pipelined' if self.pipelined else 'sequential'} stages)",
                 f"{'stage':<12} {'p50 ms':>9} {'p90 ms':>9}"]
        lines += [f"{s:<12} {a:9.2f} {b:9.2f}" for s, (a, b) in self.percentiles().items()]
        if self.input_stopped:
            lines.append(f"warning: {self.input_stopped}")
        if self.aborted:
            lines.append(f"STOPPED: {self.aborted}")
        return "\n".join(lines)

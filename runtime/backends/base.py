"""The backend interface (after Polygraphy's runners): run the classifier, then the regressor.

A backend runs the two exported graphs of an export directory::

    out1 = backend.run_classifier({"crops": ..., "obj_index": ..., "fov": ..., "K_roi": ...},
                                  fetch=["R_init", "t_init", "rot_score", "depth_score"])
    out2 = backend.run_regressor({"render": ...}, fetch=["R", "t"])

Chaining by name: every regressor input that the caller does not feed is taken from the last
classifier call (its inputs and outputs of the same name). The caller therefore only feeds
``render``; a backend keeps the classifier's tensors where they are (host arrays for ONNX Runtime on
the CPU, device buffers for TensorRT and for ONNX Runtime on a GPU: no host round trip of the
features). ``fetch`` names the outputs copied back to the caller (default: all outputs of the graph).

Capacity: ``max_crops`` is the most crops one call accepts (the TensorRT profile's maximum, a
memory bound for ONNX Runtime) or None (no limit); ``runtime.pipeline.Pipeline`` splits a frame's
detections into calls of at most that many crops.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Mapping, Optional

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot be created or run (missing library, engine, input); one line."""


class Backend(ABC):
    """Common interface: run the classifier, then the regressor, chaining tensors by name.

    Subclasses set ``name`` and the four I/O name lists and implement ``_run_classifier`` and
    ``_run_regressor``. Arrays are numpy: crops/render (N, 4, S, S) float32, obj_index (N,) int64,
    fov (N, 3) float32, K_roi (N, 3, 3) float32; N = 4 x detections.
    """

    name: str = "backend"
    #: most crops per call (None: unbounded); the pipeline chunks a frame's detections to fit
    max_crops: Optional[int] = None
    #: CUDA device the backend runs on (None: the CPU); the renderer's default EGL device follows it
    cuda_device: Optional[int] = None
    classifier_inputs: list[str]
    classifier_outputs: list[str]
    regressor_inputs: list[str]
    regressor_outputs: list[str]

    def run_classifier(self, feeds: Mapping[str, np.ndarray], fetch: Optional[Iterable[str]] = None) -> dict:
        """Run stage 1 on ``feeds`` (all classifier inputs) -> {name: host array} for ``fetch``."""
        missing = [n for n in self.classifier_inputs if n not in feeds]
        if missing:
            raise BackendError(f"{self.name}: classifier inputs missing: {missing}")
        fetch = list(self.classifier_outputs if fetch is None else fetch)
        self._check_names(fetch, self.classifier_outputs, "classifier output")
        return self._run_classifier({k: feeds[k] for k in self.classifier_inputs}, fetch)

    def run_regressor(self, feeds: Mapping[str, np.ndarray], fetch: Optional[Iterable[str]] = None) -> dict:
        """Run stage 2; inputs not in ``feeds`` come from the last classifier call, by name."""
        fetch = list(self.regressor_outputs if fetch is None else fetch)
        self._check_names(fetch, self.regressor_outputs, "regressor output")
        return self._run_regressor(dict(feeds), fetch)

    @abstractmethod
    def _run_classifier(self, feeds: dict, fetch: list[str]) -> dict: ...

    @abstractmethod
    def _run_regressor(self, feeds: dict, fetch: list[str]) -> dict: ...

    def close(self) -> None:
        """Release sessions / engines / device memory. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_names(self, names, known, what):
        bad = [n for n in names if n not in known]
        if bad:
            raise BackendError(f"{self.name}: unknown {what}s {bad} (graph has {list(known)})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

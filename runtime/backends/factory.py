"""Choosing a backend for an export directory: ``create_backend(manifest, kind)``."""
from __future__ import annotations

from typing import Optional

from ..manifest import Manifest
from .base import Backend, BackendError
from .cuda import CudaApi
from .onnxruntime import DEFAULT_MAX_DETECTIONS, OnnxRuntimeBackend
from .tensorrt import TensorRTBackend

BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu")


def tensorrt_available(device: int = 0) -> bool:
    """True when tensorrt imports and CUDA device ``device`` is usable (a stream is created and
    destroyed; nothing is allocated)."""
    try:
        import tensorrt  # noqa: F401  (optional GPU dependency)
    except ImportError:
        return False
    try:
        CudaApi(device).close()
        return True
    except Exception:
        return False


def create_backend(manifest: Manifest, kind: str = "auto", threads: int = 0, precision: Optional[str] = None,
                   device: int = 0, max_detections: Optional[int] = None) -> Backend:
    """Backend for an export: kind in ``BACKEND_CHOICES``.

    "auto": TensorRT engines if the export has them and TensorRT + a GPU are usable, else ONNX
    Runtime with the best installed execution provider. "tensorrt": the TensorRT engines (error if
    unusable). "onnxruntime": ORT with TensorRT/CUDA/CPU providers as installed. "onnxruntime-cpu".
    device: CUDA device of the GPU backends. max_detections: detections per call for ONNX Runtime
    (default ``DEFAULT_MAX_DETECTIONS``; TensorRT's is its engine profile's).
    """
    if kind not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if kind == "tensorrt" or (kind == "auto" and manifest.engines and tensorrt_available(device)):
        return TensorRTBackend.from_manifest(manifest, precision, device=device)
    return OnnxRuntimeBackend.from_manifest(manifest, "onnxruntime-cpu" if kind == "onnxruntime-cpu" else "auto",
                                            threads=threads, device_id=device, precision=precision,
                                            max_detections=max_detections or DEFAULT_MAX_DETECTIONS)

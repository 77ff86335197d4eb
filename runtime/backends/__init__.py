"""Inference backends behind one small interface, one runner per module (after Polygraphy): no torch.

- :mod:`.base`: :class:`Backend` (run the classifier, then the regressor, chaining tensors by
  name; ``max_crops`` capacity; ``cuda_device``), :class:`BackendError`.
- :mod:`.onnxruntime`: :class:`OnnxRuntimeBackend` (CPU / CUDA / TensorRT execution providers,
  provider options, IOBinding on the GPU).
- :mod:`.tensorrt`: :class:`TensorRTBackend` (TensorRT engines, one CUDA stream, pinned host
  buffers; engines checked against the running GPU and TensorRT at load).
- :mod:`.cuda`: :class:`CudaApi`, :func:`import_cudart`, :func:`device_properties` (cuda-python /
  pycuda).
- :mod:`.factory`: :func:`create_backend`, :func:`tensorrt_available`, ``BACKEND_CHOICES``.
- :mod:`.compare`: :func:`compare_backends` (any two backends on the same feeds), :func:`run_backend`,
  :func:`compare_outputs`, :func:`rel_err`.

Outside the runtime, ``mrcnet.inference.TorchBackend`` is the PyTorch reference backend.
"""
from .base import Backend, BackendError
from .compare import compare_backends, compare_outputs, rel_err, run_backend
from .cuda import CudaApi, device_properties, import_cudart
from .factory import BACKEND_CHOICES, create_backend, tensorrt_available
from .onnxruntime import (
    DEFAULT_MAX_DETECTIONS,
    ORT_PROVIDER_ORDER,
    OnnxRuntimeBackend,
    ort_providers,
    provider_config,
)
from .tensorrt import TensorRTBackend, engine_mismatches, ensure_engines, running_env

__all__ = [
    "Backend", "BackendError", "OnnxRuntimeBackend", "TensorRTBackend", "CudaApi", "import_cudart",
    "device_properties", "create_backend", "tensorrt_available", "BACKEND_CHOICES", "ORT_PROVIDER_ORDER",
    "DEFAULT_MAX_DETECTIONS", "ort_providers", "provider_config", "engine_mismatches", "ensure_engines",
    "running_env", "compare_backends", "compare_outputs", "run_backend", "rel_err",
]

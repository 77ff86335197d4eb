"""The few CUDA runtime calls the GPU code needs, through cuda-python or pycuda (no torch).

:class:`CudaApi`: one stream, device and pinned host allocations, async copies (the TensorRT
backend, the INT8 calibrator of ``mrcnet.export.tensorrt``); :func:`device_properties`: the name and
compute capability of a CUDA device (what a TensorRT engine is bound to). cuda-python / pycuda are
imported when used: importing this module needs neither.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .base import BackendError


def import_cudart():
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` of older
    releases); ImportError when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(fn: str, res):
    """Unpack a cuda-python result tuple (err, *values); BackendError naming ``fn`` on an error."""
    err, rest = (res[0], res[1:]) if isinstance(res, tuple) else (res, ())
    if int(err) != 0:
        raise BackendError(f"CUDA {fn} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def device_properties(device: int = 0) -> dict:
    """{"name", "compute_capability" ("8.6"), "device"} of CUDA device ``device`` (this process's
    numbering: ``CUDA_VISIBLE_DEVICES`` applies). BackendError when cuda-python / pycuda is missing
    or the device does not exist."""
    try:
        cudart = import_cudart()
    except ImportError:
        cudart = None
    if cudart is not None:
        count = _check("cudaGetDeviceCount", cudart.cudaGetDeviceCount())
        if not 0 <= device < int(count):
            raise BackendError(f"CUDA device {device} does not exist ({count} visible)")
        props = _check("cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}", "device": device}
    try:
        import pycuda.driver as drv  # optional alternative to cuda-python
    except ImportError:
        raise BackendError("CUDA needs cuda-python (pip install cuda-python) or pycuda") from None
    drv.init()
    if not 0 <= device < drv.Device.count():
        raise BackendError(f"CUDA device {device} does not exist ({drv.Device.count()} visible)")
    d = drv.Device(device)
    major, minor = d.compute_capability()
    return {"name": d.name(), "compute_capability": f"{major}.{minor}", "device": device}


class CudaApi:
    """The few CUDA runtime calls the TensorRT backend (and the INT8 calibrator of
    ``mrcnet.export.tensorrt``) need, through cuda-python or pycuda: one stream on CUDA device
    ``device``, device and pinned host allocations, async copies."""

    def __init__(self, device: int = 0):
        self.device = int(device)
        try:
            self.cudart, self.pycuda = import_cudart(), None
        except ImportError:
            try:
                import pycuda.driver as drv  # optional alternative to cuda-python
            except ImportError:
                raise BackendError("tensorrt backend needs cuda-python (pip install cuda-python) or pycuda") from None
            self.cudart, self.pycuda = None, drv
        if self.cudart:
            self._call("cudaSetDevice", self.device)
            self.stream = self._call("cudaStreamCreate")
        else:
            self.pycuda.init()
            self._pycuda_ctx = self.pycuda.Device(self.device).make_context()
            self.stream = self.pycuda.Stream()

    def _call(self, fn, *args):
        return _check(fn, getattr(self.cudart, fn)(*args))

    @property
    def stream_handle(self) -> int:
        return int(self.stream) if self.cudart else self.stream.handle

    def malloc(self, nbytes: int):
        """Device allocation -> (pointer int, keep-alive object)."""
        nbytes = max(int(nbytes), 1)
        if self.cudart:
            ptr = self._call("cudaMalloc", nbytes)
            return int(ptr), ptr
        a = self.pycuda.mem_alloc(nbytes)
        return int(a), a

    def pinned(self, shape, dtype) -> np.ndarray:
        """Page-locked host array (max shape)."""
        if self.pycuda:
            return self.pycuda.pagelocked_empty(shape, dtype)
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        ptr = self._call("cudaMallocHost", nbytes)
        buf = (ctypes.c_byte * nbytes).from_address(int(ptr))
        arr = np.frombuffer(buf, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * np.dtype(dtype).itemsize]
        arr = arr.view(dtype).reshape(shape)
        self._pinned = getattr(self, "_pinned", []) + [ptr]
        return arr

    def h2d(self, dst: int, src: np.ndarray):
        if self.cudart:
            self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes,
                       self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        else:
            self.pycuda.memcpy_htod_async(dst, src, self.stream)

    def d2h(self, dst: np.ndarray, src: int):
        if self.cudart:
            self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes,
                       self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)
        else:
            self.pycuda.memcpy_dtoh_async(dst, src, self.stream)

    def sync(self):
        if self.cudart:
            self._call("cudaStreamSynchronize", self.stream)
        else:
            self.stream.synchronize()

    def free(self, keep) -> None:
        if self.cudart:
            self._call("cudaFree", keep)
        else:
            keep.free()

    def close(self):
        if self.cudart:
            for p in getattr(self, "_pinned", []):
                self._call("cudaFreeHost", p)
            self._pinned = []
            if self.stream is not None:
                self._call("cudaStreamDestroy", self.stream)
                self.stream = None
        elif getattr(self, "_pycuda_ctx", None) is not None:
            self._pycuda_ctx.pop()
            self._pycuda_ctx = None

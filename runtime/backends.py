"""Inference backends behind one small interface (after Polygraphy's runners): no torch here.

A backend runs the two exported graphs of an export directory::

    out1 = backend.run_classifier({"crops": ..., "obj_index": ..., "fov": ..., "K_roi": ...},
                                  fetch=["R_init", "t_init", "rot_score", "depth_score"])
    out2 = backend.run_regressor({"render": ...}, fetch=["R", "t"])

Chaining by name: every regressor input that the caller does not feed is taken from the last
classifier call (its inputs and outputs of the same name). The caller therefore only feeds
``render``; a backend keeps the classifier's tensors where they are (host arrays for ONNX Runtime on
CPU, device buffers for TensorRT: no host round trip of the features).

``fetch`` names the outputs copied back to the caller (default: all outputs of the graph).

Backends: :class:`OnnxRuntimeBackend` (CPU / CUDA / TensorRT execution providers),
:class:`TensorRTBackend` (TensorRT 10 engines, one CUDA stream, pinned host buffers) and, outside
the runtime, ``mrcnet.inference.TorchBackend`` (the PyTorch reference).
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .manifest import Manifest

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu")
ORT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class BackendError(RuntimeError):
    """A backend that cannot be created or run (missing library, engine, input); one line."""


class Backend(ABC):
    """Common interface: run the classifier, then the regressor, chaining tensors by name.

    Subclasses set ``name`` and the four I/O name lists and implement ``_run_classifier`` and
    ``_run_regressor``. Arrays are numpy: crops/render (N, 4, S, S) float32, obj_index (N,) int64,
    fov (N, 3) float32, K_roi (N, 3, 3) float32; N = 4 x detections.
    """

    name: str = "backend"
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


# ------------------------------------------------------------------------------ ONNX Runtime
def ort_providers(kind: str = "auto") -> list[str]:
    """Execution providers for ``kind``: "auto"/"onnxruntime" = every installed one of
    TensorRT, CUDA, CPU in that order; "onnxruntime-cpu" = CPU only."""
    import onnxruntime as ort

    if kind == "onnxruntime-cpu":
        return ["CPUExecutionProvider"]
    avail = set(ort.get_available_providers())
    return [p for p in ORT_PROVIDER_ORDER if p in avail] or ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime sessions for ``classifier.onnx`` and ``regressor.onnx``.

    providers: ORT execution providers in priority order (default :func:`ort_providers`).
    threads: intra-op threads (0 = ORT's default). The classifier tensors the regressor needs are
    kept as the host arrays of the last classifier call.
    """

    def __init__(self, classifier_path, regressor_path, providers: Optional[Sequence] = None, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise BackendError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
        self._ort = ort
        providers = list(providers or ort_providers("auto"))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        self.sessions = {}
        for key, path in (("classifier", classifier_path), ("regressor", regressor_path)):
            path = os.fspath(path)
            if not os.path.isfile(path):
                raise BackendError(f"onnxruntime: graph not found: {path}")
            try:
                self.sessions[key] = ort.InferenceSession(path, sess_options=so, providers=providers)
            except Exception as e:
                raise BackendError(f"onnxruntime: cannot load {path}: {str(e).splitlines()[0]}") from None
        cls, reg = self.sessions["classifier"], self.sessions["regressor"]
        self.classifier_inputs = [i.name for i in cls.get_inputs()]
        self.classifier_outputs = [o.name for o in cls.get_outputs()]
        self.regressor_inputs = [i.name for i in reg.get_inputs()]
        self.regressor_outputs = [o.name for o in reg.get_outputs()]
        self._types = {i.name: i.type for s in (cls, reg) for i in s.get_inputs()}
        self.providers = cls.get_providers()
        self.name = "onnxruntime-" + self.providers[0].replace("ExecutionProvider", "").lower()
        self._last: dict[str, np.ndarray] = {}

    @classmethod
    def from_manifest(cls, manifest: Manifest, kind: str = "auto", threads: int = 0) -> "OnnxRuntimeBackend":
        return cls(manifest.path(manifest.classifier.onnx), manifest.path(manifest.regressor.onnx),
                   providers=ort_providers(kind), threads=threads)

    def _cast(self, name: str, a) -> np.ndarray:
        t = self._types.get(name, "")
        dt = np.int64 if "int64" in t else np.int32 if "int32" in t else np.float16 if "float16" in t else np.float32
        return np.ascontiguousarray(a, dtype=dt)

    def _run_classifier(self, feeds, fetch):
        feeds = {k: self._cast(k, v) for k, v in feeds.items()}
        outs = self.sessions["classifier"].run(None, feeds)
        self._last = {**feeds, **dict(zip(self.classifier_outputs, outs))}
        return {k: self._last[k] for k in fetch}

    def _run_regressor(self, feeds, fetch):
        full = {}
        for n in self.regressor_inputs:
            if n in feeds:
                full[n] = self._cast(n, feeds[n])
            elif n in self._last:
                full[n] = self._cast(n, self._last[n])
            else:
                raise BackendError(f"{self.name}: regressor input {n!r} neither fed nor produced by the classifier")
        outs = self.sessions["regressor"].run(fetch, full)
        return dict(zip(fetch, outs))

    def close(self) -> None:
        self.sessions.clear()
        self._last = {}


# -------------------------------------------------------------------------------- TensorRT
def import_cudart():
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` of older
    releases); ImportError when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class CudaApi:
    """The few CUDA runtime calls the TensorRT backend (and the INT8 calibrator of
    ``mrcnet.export.tensorrt``) need, through cuda-python or pycuda: one stream, device and pinned
    host allocations, async copies."""

    def __init__(self):
        try:
            self.cudart, self.pycuda = import_cudart(), None
        except ImportError:
            try:
                import pycuda.autoinit  # noqa: F401  (creates a context)
                import pycuda.driver as drv
            except ImportError:
                raise BackendError("tensorrt backend needs cuda-python (pip install cuda-python) or pycuda") from None
            self.cudart, self.pycuda = None, drv
        self.stream = self._call("cudaStreamCreate") if self.cudart else self.pycuda.Stream()

    def _call(self, fn, *args):
        res = getattr(self.cudart, fn)(*args)
        err, rest = (res[0], res[1:]) if isinstance(res, tuple) else (res, ())
        if int(err) != 0:
            raise BackendError(f"CUDA {fn} failed: {err}")
        return rest[0] if len(rest) == 1 else rest

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
        import ctypes

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


class TensorRTBackend(Backend):
    """TensorRT 10 engines of the classifier and the regressor on one CUDA stream.

    Every tensor gets one device buffer sized for the engines' largest profile shape. The
    regressor's inputs that the classifier produced (features, R_init, ...) or consumed (obj_index,
    fov, K_roi) are bound to the *same* device buffers: only ``render`` is uploaded for stage 2,
    nothing of the features goes through the host. Inputs are staged in pinned host buffers, the
    fetched outputs come back into pinned buffers; one stream, one synchronisation per stage.
    """

    def __init__(self, classifier_engine, regressor_engine):
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendError("tensorrt backend: the tensorrt Python package is not installed "
                               "(pip install 'mrcnet-edge[gpu]'; on Jetson use JetPack's)") from None
        self.trt = trt
        self.cuda = CudaApi()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines, self.contexts = {}, {}
        for key, path in (("classifier", classifier_engine), ("regressor", regressor_engine)):
            path = os.fspath(path)
            if not os.path.isfile(path):
                raise BackendError(f"tensorrt: engine not found: {path}")
            with open(path, "rb") as f:
                engine = self.runtime.deserialize_cuda_engine(f.read())
            if engine is None:
                raise BackendError(f"tensorrt: cannot deserialise {path} (built for another TensorRT "
                                   "version or GPU? re-run mrcnet-export --backend tensorrt)")
            self.engines[key] = engine
            self.contexts[key] = engine.create_execution_context()
        io = {k: self._io_names(e) for k, e in self.engines.items()}
        self.classifier_inputs, self.classifier_outputs = io["classifier"]
        self.regressor_inputs, self.regressor_outputs = io["regressor"]
        self.name = "tensorrt"
        self.buffers: dict[str, tuple[int, object, np.dtype, tuple]] = {}  # name -> (ptr, keep, dtype, max shape)
        self.host: dict[str, np.ndarray] = {}  # pinned staging buffers, by tensor name
        self._shapes: dict[str, tuple] = {}  # current shapes of the tensors on the device
        self._allocate()

    def _io_names(self, engine):
        trt = self.trt
        ins, outs = [], []
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            (ins if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else outs).append(n)
        return ins, outs

    @classmethod
    def from_manifest(cls, manifest: Manifest, precision: Optional[str] = None) -> "TensorRTBackend":
        """Engines of ``precision`` (default: the first listed in the manifest's ``engines``)."""
        if not manifest.engines:
            raise BackendError(f"tensorrt: export {manifest.root} has no TensorRT engines "
                               "(mrcnet-export --backend tensorrt)")
        precision = precision or next(iter(manifest.engines))
        if precision not in manifest.engines:
            raise BackendError(f"tensorrt: no {precision} engines in {manifest.root} "
                               f"(have {list(manifest.engines)})")
        e = manifest.engines[precision]
        return cls(manifest.path(e["classifier"]), manifest.path(e["regressor"]))

    def _allocate(self):
        """Device buffers at the largest profile shapes; pinned host staging buffers."""
        trt = self.trt
        for key in ("classifier", "regressor"):
            engine, ctx = self.engines[key], self.contexts[key]
            ins, outs = self._io_names(engine)
            for n in ins:
                shape = tuple(engine.get_tensor_shape(n))
                if any(s < 0 for s in shape):
                    shape = tuple(engine.get_tensor_profile_shape(n, 0)[2])  # (min, opt, max)
                ctx.set_input_shape(n, shape)
            for n in ins + outs:
                shape = tuple(ctx.get_tensor_shape(n))
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
                if n in self.buffers:  # shared between the graphs (chained by name)
                    if self.buffers[n][2] != dtype:
                        raise BackendError(f"tensorrt: tensor {n!r} has dtype {self.buffers[n][2]} in the "
                                           f"classifier and {dtype} in the regressor")
                    if int(np.prod(shape)) <= int(np.prod(self.buffers[n][3])):
                        continue
                    self.cuda.free(self.buffers[n][1])
                ptr, keep = self.cuda.malloc(int(np.prod(shape)) * dtype.itemsize)
                self.buffers[n] = (ptr, keep, dtype, shape)
            for n in ins + outs:
                ctx.set_tensor_address(n, self.buffers[n][0])

    def _host(self, name: str) -> np.ndarray:
        """Pinned staging buffer of a tensor (max shape), allocated on first use: only inputs
        that are uploaded and outputs that are fetched get one (features never do)."""
        if name not in self.host:
            _, _, dtype, shape = self.buffers[name]
            self.host[name] = self.cuda.pinned(shape, dtype)
        return self.host[name]

    def _upload(self, ctx, name, a):
        _, _, dtype, max_shape = self.buffers[name]
        a = np.asarray(a, dtype=dtype)
        if a.size > int(np.prod(max_shape)):
            raise BackendError(f"tensorrt: input {name!r} of shape {a.shape} exceeds the engine profile "
                               f"maximum {max_shape} (re-export with a larger --max-detections)")
        h = self._host(name).reshape(-1)[: a.size].reshape(a.shape)
        np.copyto(h, a)
        self.cuda.h2d(self.buffers[name][0], h)
        if not ctx.set_input_shape(name, a.shape):
            raise BackendError(f"tensorrt: shape {a.shape} rejected for input {name!r}")
        self._shapes[name] = a.shape

    def _execute(self, key, fetch):
        ctx = self.contexts[key]
        for n in self._io_names(self.engines[key])[0] + self._io_names(self.engines[key])[1]:
            ctx.set_tensor_address(n, self.buffers[n][0])
        if not ctx.execute_async_v3(self.cuda.stream_handle):
            raise BackendError(f"tensorrt: {key} execution failed")
        out = {}
        for n in fetch:
            shape = tuple(ctx.get_tensor_shape(n))
            h = self._host(n).reshape(-1)[: int(np.prod(shape))].reshape(shape)
            self.cuda.d2h(h, self.buffers[n][0])
            out[n] = h
        for n in self._io_names(self.engines[key])[1]:
            self._shapes[n] = tuple(ctx.get_tensor_shape(n))
        self.cuda.sync()
        return {k: v.copy() for k, v in out.items()}  # pinned buffers are reused next call

    def _run_classifier(self, feeds, fetch):
        ctx = self.contexts["classifier"]
        for n, a in feeds.items():
            self._upload(ctx, n, a)
        return self._execute("classifier", fetch)

    def _run_regressor(self, feeds, fetch):
        ctx = self.contexts["regressor"]
        for n in self.regressor_inputs:
            if n in feeds:
                self._upload(ctx, n, feeds[n])
            elif n in self._shapes:  # already on the device, from the classifier call
                if not ctx.set_input_shape(n, self._shapes[n]):
                    raise BackendError(f"tensorrt: shape {self._shapes[n]} rejected for input {n!r}")
            else:
                raise BackendError(f"tensorrt: regressor input {n!r} neither fed nor produced by the classifier")
        return self._execute("regressor", fetch)

    def close(self) -> None:
        if not getattr(self, "buffers", None):
            return
        self.cuda.sync()
        for _, keep, _, _ in self.buffers.values():
            self.cuda.free(keep)
        self.buffers, self.host = {}, {}
        self.contexts, self.engines = {}, {}
        self.cuda.close()


# ----------------------------------------------------------------------------------- factory
def tensorrt_available() -> bool:
    """True when tensorrt imports and a CUDA device is visible (checked without allocating)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    try:
        CudaApi().close()
        return True
    except Exception:
        return False


def create_backend(manifest: Manifest, kind: str = "auto", threads: int = 0, precision: Optional[str] = None) -> Backend:
    """Backend for an export: kind in ``BACKEND_CHOICES``.

    "auto": TensorRT engines if the export has them and TensorRT + a GPU are usable, else ONNX
    Runtime with the best installed execution provider. "tensorrt": the TensorRT engines (error if
    unusable). "onnxruntime": ORT with TensorRT/CUDA/CPU providers as installed. "onnxruntime-cpu".
    """
    if kind not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if kind == "tensorrt" or (kind == "auto" and manifest.engines and tensorrt_available()):
        return TensorRTBackend.from_manifest(manifest, precision)
    return OnnxRuntimeBackend.from_manifest(manifest, "onnxruntime-cpu" if kind == "onnxruntime-cpu" else "auto",
                                            threads=threads)

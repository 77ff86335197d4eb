"""ONNX Runtime backend: the export's two graphs on the CPU, CUDA or TensorRT execution providers.

On the CPU the classifier tensors the regressor needs are kept as the host arrays of the last
classifier call (nothing changes from a plain ``session.run``). On a GPU (CUDA / TensorRT
provider first) both graphs run through IOBinding: inputs are uploaded once as device OrtValues,
every classifier output stays on the device, the regressor binds those OrtValues by name and only
the fetched outputs (R_init, t_init, the scores; R, t) come back to the host.

Provider options (:func:`provider_config`): the device id everywhere; TensorRT: engine and timing
caches inside the export directory (``engines/ort-trt/``: built once per GPU, not at every start),
fp16 when the export's engines are fp16 (or when asked), optimisation-profile shapes from the
manifest (min 1 detection, max = capacity) so a growing N does not rebuild; CUDA: heuristic cuDNN
convolution search (no exhaustive re-tuning for every new N).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import error_line
from ..manifest import Manifest
from .base import Backend, BackendError

ORT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
#: detections per ONNX Runtime call by default (about 84 MB of CPU memory per detection with the
#: paper preset: 8 keep a call under 1 GB); ``max_detections`` / ``mrcnet-run --chunk-size`` change it
DEFAULT_MAX_DETECTIONS = 8
#: folder of the TensorRT provider's engine and timing caches, inside the export directory
ORT_TRT_CACHE_DIR = "engines/ort-trt"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _ort():
    try:
        import onnxruntime as ort  # onnxruntime: the cpu / gpu extra (gpu-trt11 has none)
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise BackendError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
    return ort


def ort_providers(kind: str = "auto", available: Optional[Sequence[str]] = None) -> list[str]:
    """Execution providers for ``kind``: "auto"/"onnxruntime" = every installed one of
    TensorRT, CUDA, CPU in that order; "onnxruntime-cpu" = CPU only. ``available``: the installed
    providers (default: ``onnxruntime.get_available_providers()``)."""
    if kind == "onnxruntime-cpu":
        return ["CPUExecutionProvider"]
    avail = set(_ort().get_available_providers() if available is None else available)
    return [p for p in ORT_PROVIDER_ORDER if p in avail] or ["CPUExecutionProvider"]


def _shape_list(shapes: Mapping[str, Sequence[int]]) -> str:
    """TensorRT provider profile syntax: ``name:d0xd1x...,name2:...``."""
    return ",".join(f"{n}:{'x'.join(str(int(d)) for d in s)}" for n, s in shapes.items())


def profile_shapes(input_shapes: Mapping[str, Sequence], crops: Sequence[int]) -> dict[str, str]:
    """TensorRT provider profile options for a graph whose inputs have ``input_shapes`` (dim 0 is
    the dynamic crop count, the others fixed ints) and crops (min, opt, max); {} (the provider's
    own profiles) when another dimension is not fixed."""
    if any(not isinstance(d, int) for s in input_shapes.values() for d in tuple(s)[1:]):
        return {}
    out = {}
    for key, n in zip(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"), crops):
        out[key] = _shape_list({name: (n, *tuple(s)[1:]) for name, s in input_shapes.items()})
    return out


def profile_crops(manifest: Optional[Manifest], max_detections: int, precision: Optional[str] = None) -> tuple:
    """(min, opt, max) crops of the TensorRT profile: the export's engine profile when it has one
    (``engines[precision].profile_crops``), else 1 .. ``max_detections`` detections."""
    n_rot = manifest.n_rot if manifest is not None else 4
    entry = _engine_entry(manifest, precision)
    if entry and entry.get("profile_crops"):
        return tuple(int(v) for v in entry["profile_crops"])
    m = max(1, int(max_detections))
    return n_rot, n_rot * max(1, (m + 1) // 2), n_rot * m


def _engine_entry(manifest: Optional[Manifest], precision: Optional[str]) -> dict:
    if manifest is None or not manifest.engines:
        return {}
    return manifest.engines.get(precision or next(iter(manifest.engines)), {})


def wants_fp16(manifest: Optional[Manifest], precision: Optional[str] = None) -> bool:
    """fp16 for the TensorRT provider: asked (``precision``), or the export's first engines are fp16."""
    if precision is not None:
        return precision in ("fp16", "int8")
    return bool(manifest is not None and manifest.engines and next(iter(manifest.engines)) in ("fp16", "int8"))


def provider_config(providers: Sequence[str], device_id: int = 0, *, cache_dir=None, fp16: bool = False,
                    input_shapes: Optional[Mapping[str, Sequence]] = None,
                    crops: Optional[Sequence[int]] = None) -> list:
    """ONNX Runtime ``providers`` argument: a list of (provider name, options) for one session.

    TensorRT: ``device_id``; engine + timing caches in ``cache_dir`` (when given); fp16; the profile
    of ``input_shapes`` (graph inputs, dim 0 dynamic) over ``crops`` (min, opt, max). CUDA:
    ``device_id`` and ``cudnn_conv_algo_search`` HEURISTIC. CPU: no options. Options are strings,
    as ORT's Python API documents them.
    """
    out = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            o = {"device_id": str(int(device_id)), "trt_fp16_enable": "True" if fp16 else "False"}
            if cache_dir is not None:
                o.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": os.fspath(cache_dir),
                          "trt_timing_cache_enable": "True", "trt_timing_cache_path": os.fspath(cache_dir)})
            if input_shapes and crops:
                o.update(profile_shapes(input_shapes, crops))
            out.append((p, o))
        elif p == "CUDAExecutionProvider":
            out.append((p, {"device_id": str(int(device_id)), "cudnn_conv_algo_search": "HEURISTIC",
                            "do_copy_in_default_stream": "True"}))
        else:
            out.append((p, {}))
    return out


def manifest_providers(manifest: Manifest, kind: str = "auto", device_id: int = 0,
                       max_detections: Optional[int] = DEFAULT_MAX_DETECTIONS, precision: Optional[str] = None,
                       available: Optional[Sequence[str]] = None) -> dict[str, list]:
    """{"classifier": providers, "regressor": providers} (:func:`provider_config`) for an export:
    the TensorRT provider's caches in ``ORT_TRT_CACHE_DIR`` of the export (created), fp16 as
    :func:`wants_fp16`, the profile of :func:`profile_crops` over each graph's inputs."""
    names = ort_providers(kind, available)
    trt = "TensorrtExecutionProvider" in names
    cache = manifest.path(ORT_TRT_CACHE_DIR)
    if trt:
        os.makedirs(cache, exist_ok=True)
    out = {}
    for g in ("classifier", "regressor"):
        path = manifest.path(getattr(manifest, g).onnx)
        shapes = graph_input_shapes(path) if trt and os.path.isfile(path) else None
        crops = profile_crops(manifest, max_detections or 64, precision) if trt else None
        out[g] = provider_config(names, device_id, cache_dir=cache, fp16=wants_fp16(manifest, precision),
                                 input_shapes=shapes, crops=crops)
    return out


def graph_input_shapes(path) -> dict[str, tuple]:
    """{input name: shape} of an ONNX graph (dim 0 as given, e.g. 'N'), read with a CPU session
    that applies no optimisation (only used to set up the TensorRT provider's profile)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(os.fspath(path), sess_options=so, providers=["CPUExecutionProvider"])
    return {i.name: tuple(i.shape) for i in s.get_inputs()}


def session_providers(kind: str = "auto", device_id: int = 0, cache_dir=None, fp16: bool = False,
                      available: Optional[Sequence[str]] = None) -> list:
    """Configured providers (:func:`provider_config`) of :func:`ort_providers` ``kind`` for one more
    graph next to the pose networks (the 2D detector): same providers, device and options; the
    TensorRT provider's caches in ``cache_dir`` (created when that provider is used)."""
    names = ort_providers(kind, available)
    if cache_dir is not None and "TensorrtExecutionProvider" in names:
        os.makedirs(cache_dir, exist_ok=True)
    return provider_config(names, device_id, cache_dir=cache_dir, fp16=fp16)


def create_session(path, providers=None, threads: int = 0, what: str = "onnxruntime"):
    """An ``onnxruntime.InferenceSession`` for the graph at ``path``: every optimisation on,
    ``threads`` intra-op threads (0: ORT's default), ``providers`` as ORT takes them (names or
    (name, options) pairs; None: :func:`ort_providers` "auto"). The one place the runtime builds
    the sessions it runs (pose graphs and detector). Raises :class:`BackendError` with one line naming ``what`` and the file."""
    ort = _ort()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BackendError(f"{what}: graph not found: {path}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(path, sess_options=so, providers=list(providers or ort_providers("auto")))
    except Exception as e:
        raise BackendError(f"{what} {path}: cannot load ({error_line(e)})") from None


def _dtype(ort_type: str):
    return (np.int64 if "int64" in ort_type else np.int32 if "int32" in ort_type
            else np.float16 if "float16" in ort_type else np.float32)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime sessions for ``classifier.onnx`` and ``regressor.onnx``.

    providers: ORT providers in priority order, names or (name, options) pairs, or a dict
    {"classifier": [...], "regressor": [...]} of per-graph lists (default :func:`ort_providers`).
    threads: intra-op threads (0 = ORT's default). device_id: the CUDA device of the GPU providers.
    max_detections: detections per call (``max_crops`` = 4 x this; None = unbounded).
    io_binding: keep the classifier's outputs on the providers' device (default: on when a GPU
    provider comes first; forcing it on the CPU binds host OrtValues, for tests).
    """

    def __init__(self, classifier_path, regressor_path, providers=None, threads: int = 0, *,
                 device_id: int = 0, max_detections: Optional[int] = DEFAULT_MAX_DETECTIONS, n_rot: int = 4,
                 io_binding: Optional[bool] = None):
        self._ort = _ort()
        per_graph = providers if isinstance(providers, Mapping) else {
            "classifier": providers, "regressor": providers}
        self.sessions = {key: create_session(path, per_graph.get(key), threads)
                         for key, path in (("classifier", classifier_path), ("regressor", regressor_path))}
        self._setup(device_id, max_detections, n_rot, io_binding)

    @classmethod
    def from_sessions(cls, classifier, regressor, *, max_detections: Optional[int] = None,
                      io_binding: Optional[bool] = None) -> "OnnxRuntimeBackend":
        """A backend over two existing ``onnxruntime.InferenceSession`` objects (exporter checks)."""
        self = cls.__new__(cls)
        self._ort = _ort()
        self.sessions = {"classifier": classifier, "regressor": regressor}
        self._setup(0, max_detections, 4, io_binding)
        return self

    def _setup(self, device_id, max_detections, n_rot, io_binding):
        cls, reg = self.sessions["classifier"], self.sessions["regressor"]
        self.classifier_inputs = [i.name for i in cls.get_inputs()]
        self.classifier_outputs = [o.name for o in cls.get_outputs()]
        self.regressor_inputs = [i.name for i in reg.get_inputs()]
        self.regressor_outputs = [o.name for o in reg.get_outputs()]
        self._types = {i.name: i.type for s in (cls, reg) for i in s.get_inputs()}
        self.providers = cls.get_providers()
        self.name = "onnxruntime-" + self.providers[0].replace("ExecutionProvider", "").lower()
        on_gpu = self.providers[0] in GPU_PROVIDERS
        self.cuda_device = int(device_id) if on_gpu else None
        self.max_crops = None if max_detections is None else int(max_detections) * int(n_rot)
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        self._device = ("cuda", int(device_id)) if on_gpu else ("cpu", 0)
        self._last: dict = {}  # name -> host array (plain runs) or OrtValue (IOBinding)

    @classmethod
    def from_manifest(cls, manifest: Manifest, kind: str = "auto", threads: int = 0, *, device_id: int = 0,
                      max_detections: Optional[int] = DEFAULT_MAX_DETECTIONS, precision: Optional[str] = None,
                      available: Optional[Sequence[str]] = None) -> "OnnxRuntimeBackend":
        """The export's graphs with the providers of ``kind`` configured for it (:func:`manifest_providers`)."""
        provs = manifest_providers(manifest, kind, device_id, max_detections, precision, available)
        return cls(manifest.path(manifest.classifier.onnx), manifest.path(manifest.regressor.onnx), providers=provs,
                   threads=threads, device_id=device_id, max_detections=max_detections, n_rot=manifest.n_rot)

    def _cast(self, name: str, a) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=_dtype(self._types.get(name, "")))

    def _on_device(self, name: str, a):
        """An input as an OrtValue on the providers' device (uploaded once)."""
        return self._ort.OrtValue.ortvalue_from_numpy(self._cast(name, a), *self._device)

    def _run_classifier(self, feeds, fetch):
        if not self.io_binding:
            feeds = {k: self._cast(k, v) for k, v in feeds.items()}
            outs = self.sessions["classifier"].run(None, feeds)
            self._last = {**feeds, **dict(zip(self.classifier_outputs, outs))}
            return {k: self._last[k] for k in fetch}
        sess = self.sessions["classifier"]
        b = sess.io_binding()
        values = {k: self._on_device(k, v) for k, v in feeds.items()}
        for k, v in values.items():
            b.bind_ortvalue_input(k, v)
        for n in self.classifier_outputs:  # everything stays on the device
            b.bind_output(n, *self._device)
        sess.run_with_iobinding(b)
        values.update(zip(self.classifier_outputs, b.get_outputs()))
        self._last = values
        return {k: values[k].numpy() for k in fetch}

    def _regressor_input(self, name, feeds):
        if name in feeds:
            return self._on_device(name, feeds[name]) if self.io_binding else self._cast(name, feeds[name])
        if name in self._last:
            v = self._last[name]
            return v if self.io_binding else self._cast(name, v)
        raise BackendError(f"{self.name}: regressor input {name!r} neither fed nor produced by the classifier")

    def _run_regressor(self, feeds, fetch):
        full = {n: self._regressor_input(n, feeds) for n in self.regressor_inputs}
        sess = self.sessions["regressor"]
        if not self.io_binding:
            return dict(zip(fetch, sess.run(fetch, full)))
        b = sess.io_binding()
        for k, v in full.items():
            b.bind_ortvalue_input(k, v)
        for n in fetch:  # only what the caller fetches, straight into host memory
            b.bind_output(n, "cpu")
        sess.run_with_iobinding(b)
        return {n: v.numpy() for n, v in zip(fetch, b.get_outputs())}

    def close(self) -> None:
        self.sessions.clear()
        self._last = {}

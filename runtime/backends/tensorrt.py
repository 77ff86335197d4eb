"""TensorRT backend: the export's engines on one CUDA stream, checked against the running machine.

A serialized engine only runs on the GPU model and TensorRT version it was built with, and only
means the network of the ONNX graph it was built from. :func:`engine_mismatches` compares the
record of each engine (the manifest's ``engines`` entry and the ``engines/<graph>.<precision>.json``
side-car written by ``mrcnet-export``: GPU name, compute capability, TensorRT version, ONNX sha256)
with what is running; :func:`ensure_engines` rebuilds mismatched engines from the export's ONNX
graphs when an engine builder is installed (found through the entry point group
:data:`ENGINE_BUILDERS_GROUP`, which the exporter registers; the engine cache as in ``mrcnet-export``),
or stops with one line naming the ``mrcnet-export --engines-only`` command. A foreign or stale
engine is never deserialised.

``tensorrt`` is imported when a backend is created: importing this module needs neither TensorRT
nor CUDA.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import entry_points
from typing import Callable, Optional

import numpy as np

from ..errors import error_line
from ..manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest, sha256_file
from ..trt_compat import TrtCompatError, check_trt_version, deserialize_engine, io_names
from .base import Backend, BackendError
from .cuda import CudaApi, device_properties

log = logging.getLogger(__name__)
GRAPHS = ("classifier", "regressor")


def _import_trt():
    try:
        import tensorrt as trt  # optional GPU dependency
    except ImportError:
        raise BackendError("tensorrt backend: the tensorrt Python package is not installed "
                           "(pip install 'mrcnet-edge[gpu]'; on Jetson use JetPack's)") from None
    try:
        check_trt_version(trt)
    except TrtCompatError as e:
        raise BackendError(str(e)) from None
    return trt


def running_env(device: int = 0) -> dict:
    """{"name", "compute_capability", "tensorrt"} of this machine's CUDA ``device`` and TensorRT."""
    return {**device_properties(device), "tensorrt": _import_trt().__version__}


def _record_path(manifest: Manifest, engine_file: str) -> str:
    """The side-car JSON of an engine file (``engines/classifier.fp16.engine`` -> ``.json``)."""
    base = engine_file[: -len(".engine")] if engine_file.endswith(".engine") else engine_file
    return os.fspath(manifest.path(base + ".json"))


def _fp32_onnx(manifest: Manifest) -> dict:
    """The ONNX files the engines are built from: the manifest's ``onnx_fp32`` (int8 ONNX exports)
    or the graphs of the manifest."""
    try:
        raw = json.loads(manifest.path(MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        raw = {}
    fp32 = raw.get("onnx_fp32") or {}
    return {g: fp32.get(g) or getattr(manifest, g).onnx for g in GRAPHS}


def engine_mismatches(manifest: Manifest, precision: str, env: dict) -> list[str]:
    """Why the ``precision`` engines of ``manifest`` cannot run here (empty list: they can).

    env: :func:`running_env`. Each graph's record (side-car ``key``, else the manifest entry) must
    name the running GPU, compute capability and TensorRT version, and the sha256 of the ONNX file
    the export holds now."""
    entry = manifest.engines.get(precision)
    if not entry:
        return [f"no {precision} engines in the manifest"]
    onnx = _fp32_onnx(manifest)
    problems = []
    for g in GRAPHS:
        eng = entry.get(g)
        if not eng or not manifest.path(eng).is_file():
            problems.append(f"{g} engine {eng} missing")
            continue
        try:
            with open(_record_path(manifest, eng)) as f:
                rec = dict(json.load(f).get("key") or {})
        except (OSError, ValueError, AttributeError, TypeError):
            rec = {}
        if not rec:
            problems.append(f"{g} engine has no build record ({os.path.basename(_record_path(manifest, eng))})")
            continue
        for k, what in (("gpu", "name"), ("compute_capability", "compute_capability"), ("tensorrt", "tensorrt")):
            have = rec.get(k, entry.get(k))
            if str(have) != str(env[what]):
                problems.append(f"{g} engine built for {k.replace('_', ' ')} {have}, running {env[what]}")
        onnx_path = manifest.path(onnx[g])
        if onnx_path.is_file() and rec.get("onnx_sha256") != sha256_file(onnx_path):
            problems.append(f"{g} engine built from another {onnx[g]} (sha256 differs)")
    return problems


def engines_only_command(manifest: Manifest, precision: str) -> str:
    """The shell command that rebuilds the ``precision`` engines of this export for this machine."""
    n = (manifest.engines.get(precision) or {}).get("max_detections", 8)
    return f"mrcnet-export --engines-only --out {manifest.root} --precision {precision} --max-detections {n}"


#: The entry point group through which an installed package offers the engine builder (the exporter
#: registers ``tensorrt = mrcnet.export.tensorrt:engines_for_export`` in setup.cfg): the runtime finds
#: it without importing the exporter.
ENGINE_BUILDERS_GROUP = "mrcnet_edge.engine_builders"
ENGINE_BUILDER_NAME = "tensorrt"


def default_engine_builder() -> Optional[Callable]:
    """The engine builder registered as ``tensorrt`` in the entry point group
    :data:`ENGINE_BUILDERS_GROUP` (``(export_dir, precision=, max_detections=, progress=) -> entry``;
    the exporter's ``engines_for_export``), or None when no installed package registers one or it
    cannot be loaded (a runtime-only deployment). Used only to rebuild engines that cannot run as
    they are."""
    eps = entry_points()
    group = eps.select(group=ENGINE_BUILDERS_GROUP) if hasattr(eps, "select") else eps.get(ENGINE_BUILDERS_GROUP, ())
    for ep in group:
        if ep.name == ENGINE_BUILDER_NAME:
            try:
                return ep.load()
            except ImportError:  # registered, but its package's dependencies are not installed
                return None
    return None


def _stderr(msg: str) -> None:
    print(f"[mrcnet] {msg}", file=sys.stderr, flush=True)


def ensure_engines(manifest: Manifest, precision: str, env: dict, builder: Optional[Callable] = None,
                   progress: Callable[[str], None] = _stderr) -> Manifest:
    """The manifest whose ``precision`` engines match ``env`` (:func:`running_env`): unchanged when
    they match; rebuilt through ``builder`` (default :func:`default_engine_builder`; pass False for
    none) and re-read otherwise. BackendError (one line, naming the ``mrcnet-export
    --engines-only`` command) when they cannot be rebuilt here or still do not match."""
    problems = engine_mismatches(manifest, precision, env)
    if not problems:
        return manifest
    cmd = engines_only_command(manifest, precision)
    build = default_engine_builder() if builder is None else builder
    # int8 engines are built from the export's calibrated int8 graph; without it they need a re-export
    rebuildable = precision in ("fp32", "fp16") or precision in manifest.precision_graphs
    if not build or not rebuildable:
        why = "" if build else " (the exporter's engine builder is not installed)"
        if build and not rebuildable:
            why = f" ({precision} engines need calibration: re-export with mrcnet-export --precision {precision})"
        raise BackendError(f"tensorrt: the {precision} engines of {manifest.root} cannot run here: {problems[0]}"
                           f"{why}; rebuild them: {cmd}")
    n = int((manifest.engines.get(precision) or {}).get("max_detections", 8))
    progress(f"tensorrt: rebuilding the {precision} engines of {manifest.root} ({problems[0]}) ...")
    try:
        build(manifest.root, precision=precision, max_detections=n, progress=progress)
        manifest = load_manifest(manifest.root)
    except (ManifestError, ValueError, RuntimeError) as e:
        raise BackendError(f"tensorrt: rebuilding the engines failed ({error_line(e)}); "
                           f"run: {cmd}") from None
    problems = engine_mismatches(manifest, precision, env)
    if problems:
        raise BackendError(f"tensorrt: rebuilt engines still do not match ({problems[0]}); run: {cmd}")
    return manifest


class TensorRTBackend(Backend):
    """TensorRT 10 engines of the classifier and the regressor on one CUDA stream.

    Every tensor gets one device buffer sized for the engines' largest profile shape. The
    regressor's inputs that the classifier produced (features, R_init, ...) or consumed (obj_index,
    fov, K_roi) are bound to the *same* device buffers: only ``render`` is uploaded for stage 2,
    nothing of the features goes through the host. Inputs are staged in pinned host buffers, the
    fetched outputs come back into pinned buffers; one stream, one synchronisation per stage.
    """

    def __init__(self, classifier_engine, regressor_engine, device: int = 0):
        trt = self.trt = _import_trt()
        self.cuda = CudaApi(device)
        self.cuda_device = int(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines, self.contexts = {}, {}
        for key, path in (("classifier", classifier_engine), ("regressor", regressor_engine)):
            path = os.fspath(path)
            if not os.path.isfile(path):
                raise BackendError(f"tensorrt: engine not found: {path}")
            try:
                engine = deserialize_engine(self.runtime, trt, path)
            except TrtCompatError as e:
                raise BackendError(str(e)) from None
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
        # the profiles' largest crop count: the pipeline never sends more in one call
        self.max_crops = int(min(self.buffers[n][3][0] for n in ("crops", "render") if n in self.buffers))

    def _io_names(self, engine):
        return io_names(engine, self.trt)

    @classmethod
    def from_manifest(cls, manifest: Manifest, precision: Optional[str] = None, device: int = 0,
                      builder: Optional[Callable] = None, env: Optional[dict] = None,
                      progress: Callable[[str], None] = _stderr) -> "TensorRTBackend":
        """Engines of ``precision`` (default: the first listed in the manifest's ``engines``) on
        CUDA ``device``, checked first (:func:`ensure_engines`; ``builder``/``env`` as there)."""
        if not manifest.engines:
            raise BackendError(f"tensorrt: export {manifest.root} has no TensorRT engines "
                               "(mrcnet-export --backend tensorrt)")
        precision = precision or next(iter(manifest.engines))
        if precision not in manifest.engines:
            raise BackendError(f"tensorrt: no {precision} engines in {manifest.root} "
                               f"(have {list(manifest.engines)})")
        manifest = ensure_engines(manifest, precision, env or running_env(device), builder, progress)
        e = manifest.engines[precision]
        return cls(manifest.path(e["classifier"]), manifest.path(e["regressor"]), device=device)

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



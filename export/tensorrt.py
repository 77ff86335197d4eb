"""ONNX -> TensorRT engines for TensorRT 10.3+ and 11.x, with an engine cache and a timing cache.

Precision is a property of the exported graphs (TensorRT 11 has no FP16 / INT8 builder flags and
no calibrators: networks are strongly typed). :func:`build_plan` picks, by installed version:

=========  =====================================  ==================================================
precision  TensorRT 11                            TensorRT 10 (>= 10.3)
=========  =====================================  ==================================================
fp32       fp32 graph, strongly typed             fp32 graph, TF32 off
fp16       fp16 graph (``<g>.fp16.onnx``),        fp16 graph, strongly typed; without one (an older
           strongly typed                         export): fp32 graph + FP16 + OBEY_PRECISION_
                                                  CONSTRAINTS, the fp16 graph's float32 layers
                                                  (:func:`mrcnet.export.fp16.fp32_nodes`) pinned
int8       int8 QDQ graph (``<g>.trt-int8.onnx``,  int8 QDQ graph, explicit quantisation: INT8 +
           symmetric), strongly typed             FP16 + OBEY_PRECISION_CONSTRAINTS, same pinning
=========  =====================================  ==================================================

- Optimisation profile over detections: N = 4 x d crops, d in [1, max_detections] (opt: the
  middle, rounded), for every input (all inputs share the batch axis).
- Timing cache: ``$MRCNET_CACHE or ~/.cache/mrcnet-edge``/``tensorrt/timing-<gpu>-<trt>.cache``,
  loaded before and saved after every build (persistent across exports).
- Engine cache key (sha256 of JSON): GPU name, compute capability, TensorRT version, the export's
  fp32 graph sha256 (``onnx_sha256``, what the runtime checks at load) and the built graph's
  (``graph_sha256``: the fp16 / int8 graph, which carries the calibration), precision, plan, profile. Engines are stored in
  the cache folder as ``<key>.engine`` and copied into the export directory's ``engines/`` with a
  ``.json`` side-car holding the key: a stale or foreign engine never matches and is rebuilt.

Every failure is one line (:class:`TensorRTUnavailable`, :class:`EngineBuildError`): TensorRT
missing or too old, no GPU, precision unsupported by the GPU, an unsupported ONNX node (its name
and op), out of GPU memory, the builder returning nothing. ``tensorrt`` is imported lazily:
importing this module needs neither TensorRT nor torch (``--engines-only`` runs on a Jetson).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from mrcnet.runtime import trt_compat
from mrcnet.runtime.backends import OnnxRuntimeBackend, TensorRTBackend, compare_backends
from mrcnet.runtime.errors import ParameterError
from mrcnet.runtime.formats.files import atomic_copy
from mrcnet.runtime.manifest import Manifest, ManifestError, load_manifest

from .manifest import ENGINES_DIR, atomic_write_bytes, sha256_file, write_manifest

GRAPHS = ("classifier", "regressor")
WORKSPACE_BYTES = 8 << 30
#: file suffix of each precision's graph (``<graph>.<suffix>.onnx``; fp32 is ``<graph>.onnx``)
PRECISION_SUFFIX = {"fp16": "fp16", "int8": "trt-int8"}
#: oldest compute capability with fast math of each reduced precision (fp16: Pascal GP100 / Jetson
#: TX2 class; int8 dp4a: 6.1)
MIN_COMPUTE_CAPABILITY = {"fp16": (5, 3), "int8": (6, 1)}
_OOM = re.compile(r"out of memory|cudaErrorMemoryAllocation|insufficient (device )?memory|OutOfMemory|"
                  r"allocation failed|failed to allocate", re.I)


class TensorRTUnavailable(RuntimeError):
    """TensorRT is not installed (or too old) or no CUDA GPU is visible (one-line message)."""


class NoTensorRTHere(TensorRTUnavailable, ParameterError):
    """TensorRTUnavailable for ``backend="tensorrt"``: no TensorRT or no GPU on this machine."""

    def __init__(self, detail: str, param: str = "backend", value="tensorrt"):
        ParameterError.__init__(self, param, detail, value)

    __reduce__ = ParameterError.__reduce__


class EngineBuildError(RuntimeError):
    """An engine could not be built (one line: the node, the memory, the precision, the graph)."""


class PrecisionUnsupported(EngineBuildError, ParameterError):
    """EngineBuildError for a ``precision`` the GPU has no support for."""

    __init__ = ParameterError.__init__
    __reduce__ = ParameterError.__reduce__


def _import_trt():
    try:
        import tensorrt as trt  # heavy, optional: only where engines are built
    except ImportError:
        raise NoTensorRTHere(
            "TensorRT is not installed (pip install 'mrcnet-edge[gpu]' on x86-64; JetPack's on "
            "Jetson)") from None
    try:
        trt_compat.check_trt_version(trt)
    except trt_compat.TrtCompatError as e:
        raise TensorRTUnavailable(str(e)) from None
    return trt


def gpu_info() -> dict:
    """{"name", "compute_capability"} of CUDA device 0 (cuda-python, else nvidia-smi).

    Raises :class:`TensorRTUnavailable` when no GPU is visible."""
    try:
        cudart = trt_compat.import_cudart()
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            err, props = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
                return {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}
    except ImportError:
        pass
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        line = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        line = ""
    if not line:
        raise NoTensorRTHere("no CUDA GPU found (a TensorRT engine is built on the GPU that runs it)")
    name, cc = [s.strip() for s in line.split(",")[:2]]
    return {"name": name, "compute_capability": cc}


def check_tensorrt() -> dict:
    """TensorRT importable and a GPU visible -> {"tensorrt": version, "name", "compute_capability"}."""
    trt = _import_trt()
    info = gpu_info()
    return {"tensorrt": trt.__version__, **info}


def check_precision(precision: str, env: Mapping) -> None:
    """One line (:class:`EngineBuildError`) when the GPU of ``env`` lacks fast ``precision`` math."""
    need = MIN_COMPUTE_CAPABILITY.get(precision)
    if need is None:
        return
    try:
        cc = tuple(int(x) for x in str(env["compute_capability"]).split(".")[:2])
    except ValueError:
        return
    if cc < need:
        raise PrecisionUnsupported("precision", f"{env['name']} (compute capability {env['compute_capability']}) has "
                                   f"no {precision} support in TensorRT (needs {need[0]}.{need[1]}+): use "
                                   f"{'fp16' if precision == 'int8' else 'fp32'}", precision)


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built: which graph (``fp32`` | ``fp16`` | ``int8``), a strongly typed
    network or not, the builder flags to set / clear (``trt.BuilderFlag`` names) and whether the
    fp16 graph's float32 layers are pinned to float32 (weakly typed reduced precision only)."""

    graph: str
    strongly_typed: bool
    set_flags: tuple = ()
    clear_flags: tuple = ()
    pin_fp32: bool = False


def build_plan(trt_version: str, precision: str, graphs: Sequence[str]) -> BuildPlan:
    """The :class:`BuildPlan` for TensorRT ``trt_version`` (see the module table); ``graphs``: the
    precisions whose graphs the export holds (``fp32`` always). One-line ValueError when the
    export lacks the graph this version needs."""
    m = re.match(r"(\d+)", str(trt_version))
    major = int(m.group(1)) if m else 0
    if precision not in ("fp32", "fp16", "int8"):
        raise ParameterError("precision", f"{precision!r} is not one of fp32, fp16, int8")
    if precision == "fp32":
        return BuildPlan("fp32", major >= 11, clear_flags=("TF32",))
    if precision in graphs:
        if major >= 11 or precision == "fp16":
            return BuildPlan(precision, True)
        return BuildPlan("int8", False, set_flags=("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"), pin_fp32=True)
    if precision == "int8":
        raise ParameterError("precision", "the export has no TensorRT int8 graphs (classifier.trt-int8.onnx): "
                             "export with mrcnet-export --backend tensorrt --precision int8 (calibration runs the "
                             "PyTorch model)", "int8")
    if major >= 11:
        raise ParameterError("precision", f"TensorRT {trt_version} takes precision from the graph and the export "
                             "has no fp16 graphs (classifier.fp16.onnx): export with mrcnet-export --backend "
                             "tensorrt --precision fp16", "fp16")
    return BuildPlan("fp32", False, set_flags=("FP16", "OBEY_PRECISION_CONSTRAINTS"), pin_fp32=True)


def network_flags(trt, plan: BuildPlan) -> int:
    """``create_network`` flags: STRONGLY_TYPED for a strongly typed plan (TensorRT 11 builds
    strongly typed networks whatever the flags; the flag is set where the enum still has it)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) if plan.strongly_typed else None
    return 0 if flag is None else 1 << int(flag)


def apply_flags(trt, config, plan: BuildPlan) -> None:
    """Set / clear the plan's builder flags; a flag this TensorRT lacks is an error for a set flag
    (that would silently change the precision) and ignored for a cleared one."""
    for name in plan.clear_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:
            config.clear_flag(flag)
    for name in plan.set_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise EngineBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.{name} (plan {plan})")
        config.set_flag(flag)


def pin_layers(trt, network, keep: set[str]) -> int:
    """Pin the layers parsed from the ``keep`` ONNX nodes (same name, or name + a parser suffix) to
    float32: layer precision and float output types. Returns the number pinned."""
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        name = layer.name
        base = name if name in keep else next((k for k in keep if name.startswith(k + "_")
                                                or name.startswith(k + " ")), None)
        if base is None:
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(o.dtype in (trt.float32, trt.float16) for o in outs):
            continue
        layer.precision = trt.float32
        for j, o in enumerate(outs):
            if o.dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        n += 1
    return n


class _Logger:
    """A ``trt.ILogger`` that keeps the errors (for a one-line diagnosis) and prints warnings."""

    def __new__(cls, trt):
        class L(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(str(msg))

        return L()


def parse_error(trt_version: str, onnx_path, errors: Sequence) -> str:
    """One line for the parser's first error: the node's name and op when the parser gives them."""
    e = errors[0]
    name = op = None
    for attr, setter in (("node_name", "name"), ("node_operator", "op")):
        fn = getattr(e, attr, None)
        val = fn() if callable(fn) else None
        if setter == "name":
            name = val
        else:
            op = val
    desc = str(e.desc()).splitlines()[0] if hasattr(e, "desc") else str(e)
    where = f"node {name!r} ({op})" if name or op else f"node #{e.node()}" if hasattr(e, "node") else "graph"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"TensorRT {trt_version} cannot parse {Path(onnx_path).name}: {where}: {desc}{more}"


def build_failure(onnx_path, precision: str, errors: Sequence[str], workspace: int) -> str:
    """One line for a builder that returned nothing: out of memory, else the last logged error."""
    text = " | ".join(errors)
    name = Path(onnx_path).name
    if _OOM.search(text):
        return (f"TensorRT ran out of GPU memory building {name} ({precision}, workspace {workspace / 2**30:.0f} "
                "GiB): lower --max-detections or free the GPU")
    last = errors[-1].splitlines()[0][:300] if errors else "no error was logged"
    return f"TensorRT built no engine from {name} ({precision}): {last}"


def build_engine(onnx_path, engine_path, *, precision: str = "fp16", plan: BuildPlan | None = None,
                 keep_fp32: set[str] | None = None, max_detections: int = 8, timing_cache: Path | None = None,
                 workspace: int = WORKSPACE_BYTES, progress: Callable[[str], None] | None = None, trt=None) -> Path:
    """Parse ``onnx_path`` and build one serialized engine at ``engine_path`` (atomic write) with
    ``plan`` (default: :func:`build_plan` for ``precision`` with the graph given). ``keep_fp32``:
    ONNX node names pinned to float32 when the plan says so."""
    trt = trt or _import_trt()
    say = progress or (lambda m: None)
    plan = plan or build_plan(trt.__version__, precision, ("fp32", precision))
    logger = _Logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(parse_error(trt.__version__, onnx_path,
                                           [parser.get_error(i) for i in range(parser.num_errors)]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    tc_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(tc_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    mn, opt, mx = profile_crops(max_detections)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        profile.set_shape(t.name, (mn, *rest), (opt, *rest), (mx, *rest))
    config.add_optimization_profile(profile)
    apply_flags(trt, config, plan)
    if plan.pin_fp32 and keep_fp32:
        say(f"{Path(onnx_path).name}: {pin_layers(trt, network, keep_fp32)} layers pinned to fp32")
    t0 = time.perf_counter()
    try:
        blob = builder.build_serialized_network(network, config)
    except (RuntimeError, MemoryError) as e:
        raise EngineBuildError(build_failure(onnx_path, precision, [*logger.errors, str(e)], workspace)) from None
    if blob is None:
        raise EngineBuildError(build_failure(onnx_path, precision, logger.errors, workspace))
    say(f"built {Path(engine_path).name} in {time.perf_counter() - t0:.0f} s")
    atomic_write_bytes(engine_path, bytes(blob))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return Path(engine_path)


def cache_dir() -> Path:
    """Persistent cache folder: ``$MRCNET_CACHE/tensorrt`` or ``~/.cache/mrcnet-edge/tensorrt``."""
    root = Path(os.environ.get("MRCNET_CACHE", Path.home() / ".cache" / "mrcnet-edge"))
    d = root / "tensorrt"
    d.mkdir(parents=True, exist_ok=True)
    return d


def profile_crops(max_detections: int, group: int = 4) -> tuple[int, int, int]:
    """(min, opt, max) crops of the optimisation profile: 1, ~half and ``max_detections`` detections."""
    m = max(1, int(max_detections))
    return group, group * max(1, (m + 1) // 2), group * m


def engine_key(env: Mapping, onnx_sha: str, precision: str, profile: Sequence[int], plan: BuildPlan | None = None,
               graph_sha: str | None = None) -> dict:
    """The facts an engine depends on (its cache key is the sha256 of this dict's JSON).

    onnx_sha: the export's fp32 graph (what the runtime's load check compares,
    ``mrcnet.runtime.backends.tensorrt.engine_mismatches``); graph_sha: the graph actually built
    (the fp16 / int8 graph, which carries the calibration)."""
    return {"gpu": env["name"], "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"],
            "onnx_sha256": onnx_sha, "graph_sha256": graph_sha or onnx_sha, "precision": precision,
            "profile_crops": list(profile),
            "plan": None if plan is None else {"graph": plan.graph, "strongly_typed": plan.strongly_typed,
                                               "flags": list(plan.set_flags), "pin_fp32": plan.pin_fp32}}


def key_hash(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _keep_fp32(onnx_path) -> set[str]:
    """The fp16 graph's float32 node set of a graph (needs the ``onnx`` package)."""
    try:
        import onnx  # only for weakly typed TensorRT 10 builds (pinning)
    except ImportError:
        raise EngineBuildError("TensorRT 10 reduced precision from the fp32 graph pins layers by name and needs "
                               "the onnx package (pip install onnx), or export with --precision fp16") from None
    from .fp16 import fp32_nodes  # onnx, as above

    return fp32_nodes(onnx.load(str(onnx_path), load_external_data=False))


def _with_precision_graphs(graph_paths: Mapping, precision: str, calib) -> dict:
    """``{graph: fp32 path}`` (the older call) -> ``{"fp32": ..., precision: ...}``, writing the
    precision's graphs next to the fp32 ones (fp16 converted; int8 quantised from ``calib``)."""
    if "fp32" in graph_paths:
        return dict(graph_paths)
    out = {"fp32": {g: Path(graph_paths[g]) for g in GRAPHS}}
    if precision == "fp16":
        # onnx: the train extra; this module runs on a Jetson without it (--engines-only)
        from .fp16 import convert_graphs

        out["fp16"] = convert_graphs(out["fp32"])
    elif precision == "int8" and calib is not None:
        from .quantize import quantize_graphs  # onnx and onnxruntime: as above

        out["int8"] = quantize_graphs(out["fp32"], calib, style="tensorrt")
    return out


def build_engines(graph_paths: Mapping, out_dir, *, precision: str = "fp16", max_detections: int = 8,
                  check_feeds: Mapping[str, np.ndarray] | None = None, calib=None,
                  progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Engines of both graphs into ``out_dir/engines/`` (from the cache when the key matches).

    graph_paths: {"fp32": {graph: path}, and "fp16" / "int8" where the export has them}, or
    {graph: fp32 path} (the fp16 / int8 graphs are then written next to them, int8 from ``calib``,
    a :class:`mrcnet.export.quantize.CalibrationSet`); check_feeds: classifier inputs + ``render``
    for a TensorRT-vs-ONNX-Runtime comparison (fp32 graphs). Returns (manifest engines entry,
    parity figures)."""
    say = progress or (lambda m: None)
    env = check_tensorrt()
    check_precision(precision, env)
    graph_paths = _with_precision_graphs(graph_paths, precision, calib)
    plan = build_plan(env["tensorrt"], precision, list(graph_paths))
    onnx_paths = graph_paths[plan.graph]
    out_dir = Path(out_dir)
    eng_dir = out_dir / ENGINES_DIR
    eng_dir.mkdir(parents=True, exist_ok=True)
    cdir = cache_dir()
    tag = f"{env['name'].replace(' ', '_')}-{env['compute_capability']}-{env['tensorrt']}"
    timing = cdir / f"timing-{tag}.cache"
    prof = profile_crops(max_detections)
    entry: dict = {"max_detections": int(max_detections), "profile_crops": list(prof), "gpu": env["name"],
                   "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"],
                   "graph": plan.graph, "strongly_typed": plan.strongly_typed}
    for graph in GRAPHS:
        key = engine_key(env, sha256_file(graph_paths["fp32"][graph]), precision, prof, plan,
                         graph_sha=sha256_file(onnx_paths[graph]))
        h = key_hash(key)
        name = f"{graph}.{precision}.engine"
        dst, side = eng_dir / name, eng_dir / f"{graph}.{precision}.json"
        cached = cdir / f"{h}.engine"
        if dst.is_file() and side.is_file() and json.loads(side.read_text()).get("key") == key:
            say(f"{name}: up to date")
        else:
            if cached.is_file():
                say(f"{name}: from the engine cache ({cached.name})")
            else:
                say(f"building {name} ({precision} from {Path(onnx_paths[graph]).name}, up to {max_detections} "
                    "detections) ...")
                keep = _keep_fp32(graph_paths["fp32"][graph]) if plan.pin_fp32 else None
                build_engine(onnx_paths[graph], cached, precision=precision, plan=plan, keep_fp32=keep,
                             max_detections=max_detections, timing_cache=timing, progress=say)
            atomic_copy(cached, dst)
        atomic_write_bytes(side, (json.dumps({"key": key, "hash": h}, indent=2) + "\n").encode())
        entry[graph] = f"{ENGINES_DIR}/{name}"
    parity = {}
    if check_feeds:
        parity = compare_with_ort(graph_paths["fp32"], {g: out_dir / entry[g] for g in GRAPHS}, check_feeds)
    return entry, parity


def compare_with_ort(onnx_paths: Mapping[str, Path], engine_paths: Mapping[str, Path],
                     feeds: Mapping[str, np.ndarray]) -> dict:
    """TensorRT (runtime backend) vs ONNX Runtime CPU on ``feeds``, both chained stage 1 -> 2
    (:func:`mrcnet.runtime.backends.compare_backends`): max rel. errors of logits / R / t, the
    argmax agreement and the shares of crops within 5 deg / 5 mm."""
    ref = OnnxRuntimeBackend(onnx_paths["classifier"], onnx_paths["regressor"], providers=["CPUExecutionProvider"])
    be = TensorRTBackend(engine_paths["classifier"], engine_paths["regressor"])
    try:
        return compare_backends(ref, be, feeds, keys=("pose_logits", "depth_logits", "trans_logits", "R", "t"))
    finally:
        be.close()
        ref.close()


def precision_graphs(manifest: Manifest) -> dict[str, dict[str, Path]]:
    """{precision: {graph: path}} of an export directory's manifest (``fp32`` from ``onnx_fp32`` or
    the graph entries; the others from ``precision_graphs``), files that exist only."""
    fp32 = manifest.extra.get("onnx_fp32") or {"classifier": manifest.classifier.onnx,
                                                "regressor": manifest.regressor.onnx}
    out = {"fp32": {g: manifest.path(fp32[g]) for g in GRAPHS}}
    for prec, files in manifest.precision_graphs.items():
        paths = {g: manifest.path(files[g]) for g in GRAPHS if g in files}
        if len(paths) == len(GRAPHS) and all(p.is_file() for p in paths.values()):
            out[prec] = paths
    return out


def engines_for_export(export_dir, *, precision: str = "fp16", max_detections: int = 8,
                       progress: Callable[[str], None] | None = None) -> dict:
    """Build (or refresh from the cache) TensorRT engines for an existing export directory, without
    torch: what a Jetson board runs on an export made on a desktop. Uses the precision's graph the
    export holds (:func:`build_plan`); int8 needs the TensorRT int8 graphs written by ``mrcnet-export
    --backend tensorrt --precision int8`` (calibration runs the PyTorch model). Updates the
    directory's manifest atomically; returns its new engines entry."""
    out = Path(export_dir)
    try:
        manifest = load_manifest(out)  # one read: unknown keys travel in manifest.extra
    except ManifestError as e:
        raise ValueError(str(e)) from None
    if manifest.extra.get("condconv_form") == "sorted":
        raise ValueError(f"{out}: an ONNX Runtime export (per-object convolutions in the sorted form, not TensorRT "
                         f"layers); export for TensorRT with mrcnet-export --backend tensorrt")
    graphs = precision_graphs(manifest)
    build_plan(f"{trt_compat.SUPPORTED_TRT_MAJORS[0]}.{trt_compat.MIN_TRT_10_MINOR}", precision, list(graphs))
    entry, _ = build_engines(graphs, out, precision=precision, max_detections=max_detections, progress=progress)
    manifest.engines[precision] = entry
    write_manifest(out, manifest)  # the new engines' sizes and hashes recorded
    return entry

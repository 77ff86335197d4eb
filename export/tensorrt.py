"""ONNX -> TensorRT engines (TensorRT >= 10 Python API), with an engine cache and a timing cache.

- Optimisation profile over detections: N = 4 x d crops, d in [1, max_detections] (opt: the
  middle, rounded), for every input (all inputs share the batch axis).
- Precisions: ``fp32`` (TF32 off), ``fp16`` (BuilderFlag.FP16), ``int8`` (BuilderFlag.INT8 +
  FP16 fallback, calibrated by :class:`Int8Calibrator` on real crops, calibration cache kept).
- Timing cache: ``$MRCNET_CACHE or ~/.cache/mrcnet-edge``/``tensorrt/timing-<gpu>-<trt>.cache``,
  loaded before and saved after every build (persistent across exports).
- Engine cache key (sha256 of JSON): GPU name, compute capability, TensorRT version, ONNX file
  sha256, precision, profile (min/opt/max crops) and, for int8, the calibration data hash. Engines
  are stored in the cache folder as ``<key>.engine`` and copied into the export directory's
  ``engines/`` with a ``.json`` side-car holding the key: a stale or foreign engine (another GPU,
  TensorRT version, ONNX, precision or profile) never matches and is rebuilt.

``tensorrt`` (and cuda-python, for calibration) are imported lazily: importing this module needs
neither. Missing TensorRT or GPU -> :class:`TensorRTUnavailable` with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from mrcnet.runtime.formats.files import atomic_copy

from .manifest import ENGINES_DIR, atomic_write_bytes, sha256_file, update_file_records

GRAPHS = ("classifier", "regressor")
WORKSPACE_BYTES = 8 << 30


class TensorRTUnavailable(RuntimeError):
    """TensorRT is not installed or no CUDA GPU is visible (one-line message)."""


def _import_trt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise TensorRTUnavailable(
            "--backend tensorrt: TensorRT is not installed (pip install tensorrt; x86-64/aarch64 with an NVIDIA GPU)"
        ) from None
    return trt


def gpu_info() -> dict:
    """{"name", "compute_capability"} of CUDA device 0 (cuda-python, else nvidia-smi).

    Raises :class:`TensorRTUnavailable` when no GPU is visible."""
    from mrcnet.runtime.backends import import_cudart

    try:
        cudart = import_cudart()
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
        raise TensorRTUnavailable("--backend tensorrt: no CUDA GPU found (a TensorRT engine is built on the GPU that runs it)")
    name, cc = [s.strip() for s in line.split(",")[:2]]
    return {"name": name, "compute_capability": cc}


def check_tensorrt() -> dict:
    """TensorRT importable and a GPU visible -> {"tensorrt": version, "name", "compute_capability"}."""
    trt = _import_trt()
    info = gpu_info()
    return {"tensorrt": trt.__version__, **info}


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


def engine_key(env: Mapping, onnx_sha: str, precision: str, profile: Sequence[int], calib_sha: str | None = None) -> dict:
    """The facts an engine depends on (its cache key is the sha256 of this dict's JSON)."""
    return {"gpu": env["name"], "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"],
            "onnx_sha256": onnx_sha, "precision": precision, "profile_crops": list(profile),
            "calibration_sha256": calib_sha}


def key_hash(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


class Int8Calibrator:
    """Factory of a ``trt.IInt8EntropyCalibrator2`` over a list of feed dicts (numpy, one batch of
    crops each, all of one size), with a calibration cache file (reused when it exists)."""

    def __new__(cls, batches: Sequence[Mapping[str, np.ndarray]], cache_file: Path):
        trt = _import_trt()
        from mrcnet.runtime.backends import CudaApi

        class _Calib(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self.batches = list(batches)
                self.i = 0
                self.cuda = CudaApi()
                first = self.batches[0]
                self.buf = {k: self.cuda.malloc(v.nbytes) for k, v in first.items()}
                self.cache_file = Path(cache_file)

            def get_batch_size(self):
                return int(len(next(iter(self.batches[0].values()))))

            def get_batch(self, names):
                if self.i >= len(self.batches):
                    return None
                b = self.batches[self.i]
                self.i += 1
                ptrs = []
                for n in names:
                    arr = np.ascontiguousarray(b[n])
                    self.cuda.h2d(self.buf[n][0], arr)
                    ptrs.append(self.buf[n][0])
                self.cuda.sync()
                return ptrs

            def read_calibration_cache(self):
                return self.cache_file.read_bytes() if self.cache_file.is_file() else None

            def write_calibration_cache(self, cache):
                atomic_write_bytes(self.cache_file, bytes(cache))

        return _Calib()


def build_engine(onnx_path, engine_path, *, precision: str = "fp16", max_detections: int = 8,
                 calib_batches: Sequence[Mapping[str, np.ndarray]] | None = None, calib_cache: Path | None = None,
                 timing_cache: Path | None = None, workspace: int = WORKSPACE_BYTES,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Parse ``onnx_path`` and build one serialized engine at ``engine_path`` (atomic write)."""
    trt = _import_trt()
    say = progress or (lambda m: None)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errs}")
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
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # true fp32 (TF32 is on by default)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not calib_batches:
            raise ValueError("int8 engine needs calibration batches")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = Int8Calibrator(calib_batches, calib_cache)
        # explicit batch: calibration runs at the calibration profile's opt shape = one batch
        n_cal = len(next(iter(calib_batches[0].values())))
        cal_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = (n_cal, *tuple(t.shape)[1:])
            cal_profile.set_shape(t.name, shape, shape, shape)
        config.set_calibration_profile(cal_profile)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
    say(f"built {Path(engine_path).name} in {time.perf_counter() - t0:.0f} s")
    atomic_write_bytes(engine_path, bytes(blob))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return Path(engine_path)


def _calib_for(graph: str, calib) -> list[dict] | None:
    if calib is None:
        return None
    return calib.classifier_batches() if graph == "classifier" else calib.regressor_batches()


def build_engines(onnx_paths: Mapping[str, Path], out_dir, *, precision: str = "fp16", max_detections: int = 8,
                  calib=None, check_feeds: Mapping[str, np.ndarray] | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Engines of both graphs into ``out_dir/engines/`` (from the cache when the key matches).

    calib: a :class:`mrcnet.export.quantize.CalibrationSet` (int8); check_feeds: classifier inputs
    + ``render`` for a TensorRT-vs-ONNX-Runtime comparison. Returns (manifest engines entry,
    parity figures)."""
    say = progress or (lambda m: None)
    env = check_tensorrt()
    out_dir = Path(out_dir)
    eng_dir = out_dir / ENGINES_DIR
    eng_dir.mkdir(parents=True, exist_ok=True)
    cdir = cache_dir()
    tag = f"{env['name'].replace(' ', '_')}-{env['compute_capability']}-{env['tensorrt']}"
    timing = cdir / f"timing-{tag}.cache"
    prof = profile_crops(max_detections)
    entry: dict = {"max_detections": int(max_detections), "profile_crops": list(prof), "gpu": env["name"],
                   "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"]}
    for graph in GRAPHS:
        onnx_sha = sha256_file(onnx_paths[graph])
        calib_sha = calib.sha256 if (precision == "int8" and calib is not None) else None
        key = engine_key(env, onnx_sha, precision, prof, calib_sha)
        h = key_hash(key)
        name = f"{graph}.{precision}.engine"
        dst, side = eng_dir / name, eng_dir / f"{graph}.{precision}.json"
        cached = cdir / f"{h}.engine"
        if dst.is_file() and side.is_file() and json.loads(side.read_text()).get("key") == key:
            say(f"{name}: up to date")
        elif cached.is_file():
            say(f"{name}: from the engine cache ({cached.name})")
            atomic_copy(cached, dst)
        else:
            say(f"building {name} ({precision}, up to {max_detections} detections) ...")
            build_engine(onnx_paths[graph], cached, precision=precision, max_detections=max_detections,
                         calib_batches=_calib_for(graph, calib), calib_cache=cdir / f"calib-{graph}-{h}.cache",
                         timing_cache=timing, progress=say)
            atomic_copy(cached, dst)
        atomic_write_bytes(side, (json.dumps({"key": key, "hash": h}, indent=2) + "\n").encode())
        entry[graph] = f"{ENGINES_DIR}/{name}"
    parity = compare_with_ort(onnx_paths, {g: out_dir / entry[g] for g in GRAPHS}, check_feeds) if check_feeds else {}
    return entry, parity


def compare_with_ort(onnx_paths: Mapping[str, Path], engine_paths: Mapping[str, Path],
                     feeds: Mapping[str, np.ndarray]) -> dict:
    """TensorRT (runtime backend) vs ONNX Runtime CPU on ``feeds``, both chained stage 1 -> 2.

    Returns max rel. errors of logits / R / t, ``rot_agree_5deg`` and ``t_agree_5mm`` (share of
    crops whose final R, t are within 5 deg / 5 mm) and the argmax agreement."""
    from mrcnet.runtime.backends import TensorRTBackend
    from mrcnet.runtime.geometry import rotation_angle_deg

    from .onnx_export import ort_session, rel_err, run_ort

    ref = run_ort({g: ort_session(p) for g, p in onnx_paths.items()}, feeds)
    be = TensorRTBackend(engine_paths["classifier"], engine_paths["regressor"])
    try:
        c = be.run_classifier({k: feeds[k] for k in ("crops", "obj_index", "fov", "K_roi")})
        r = be.run_regressor({"render": feeds["render"]})
    finally:
        be.close()
    got = {**c, **r}
    out = {k: rel_err(got[k], ref[k]) for k in ("pose_logits", "depth_logits", "trans_logits", "R", "t")}
    out["max"] = max(out.values())
    agree = np.ones(len(feeds["crops"]), bool)
    for k in ("pose_logits", "depth_logits", "trans_logits"):
        agree &= got[k].argmax(1) == ref[k].argmax(1)
    out["argmax_agree"] = float(agree.mean())
    out["rot_agree_5deg"] = float((rotation_angle_deg(got["R"], ref["R"]) < 5).mean())
    out["t_agree_5mm"] = float((np.linalg.norm(got["t"] - ref["t"], axis=-1) < 5).mean())
    return out


def engines_for_export(export_dir, *, precision: str = "fp16", max_detections: int = 8,
                       progress: Callable[[str], None] | None = None) -> dict:
    """Build (or refresh from the cache) TensorRT engines for an existing ONNX export directory,
    without torch: what a Jetson board runs on an export made on a desktop. fp32 / fp16 only
    (int8 needs calibration crops through the PyTorch model: export with ``--precision int8``).
    Updates the directory's manifest atomically; returns its new engines entry."""
    from mrcnet.runtime.manifest import ManifestError, load_manifest

    if precision not in ("fp32", "fp16"):
        raise ValueError(f"--engines-only builds fp32 or fp16 engines, not {precision!r}")
    out = Path(export_dir)
    try:
        man = load_manifest(out)
    except ManifestError as e:
        raise ValueError(str(e)) from None
    raw = json.loads((out / "manifest.json").read_text())
    fp32 = raw.get("onnx_fp32") or {"classifier": man.classifier.onnx, "regressor": man.regressor.onnx}
    onnx_paths = {g: out / fp32[g] for g in GRAPHS}
    entry, _ = build_engines(onnx_paths, out, precision=precision, max_detections=max_detections, progress=progress)
    raw.setdefault("engines", {})[precision] = entry
    update_file_records(out, raw)  # the new engines' sizes and hashes
    atomic_write_bytes(out / "manifest.json", (json.dumps(raw, indent=2) + "\n").encode())
    return entry

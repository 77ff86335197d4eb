"""TensorRT 10 / 11 and cuda-python 12 / 13 compatibility, in one place (torch-free, no import cost).

What differs, and what this module does about it:

- **TensorRT major.** 10.3+ and 11.x are supported (:data:`SUPPORTED_TRT_MAJORS`). The runtime API the
  runner uses (``Runtime.deserialize_cuda_engine``, ``num_io_tensors`` / ``get_tensor_name`` /
  ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) is the same
  in both; what 11 removed is build-time (weak typing: ``BuilderFlag.FP16/INT8``, calibrators) and
  ``ICudaEngine.device_memory_size``, which the runner does not use. :func:`trt_version` parses the
  installed version; :func:`check_trt_version` refuses 9.x and older in one line;
  :func:`deserialize_engine` turns a ``None`` engine into one line naming the TensorRT version the
  engine was built with (from its side-car) and the installed one.
- **cuda-python.** 12.6+ and 13 import as ``cuda.bindings.runtime``; older 12.x as ``cuda.cudart``.
  cuda-python 13 needs an NVIDIA driver >= 580: with an older driver (JetPack 6 ships 540) every
  call returns error 35 (``cudaErrorInsufficientDriver``). :func:`cuda_runtime` probes once with
  ``cudaGetDeviceCount``; on error 35 it falls back to pycuda with a one-line notice naming the
  driver, or raises one line saying what to install.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from .errors import error_line

SUPPORTED_TRT_MAJORS = (10, 11)
#: oldest TensorRT 10 minor supported (JetPack 6 ships 10.3)
MIN_TRT_10_MINOR = 3
#: CUDA runtime error 35: the installed driver is older than the CUDA runtime needs
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
#: oldest Linux driver of each cuda-python (= CUDA toolkit) major
MIN_DRIVER_FOR_CUDA = {12: "525.60", 13: "580"}


class TrtCompatError(RuntimeError):
    """A TensorRT / CUDA set-up problem, as one line saying what to do."""


def trt_version(trt) -> tuple[int, int]:
    """(major, minor) of an imported ``tensorrt`` module (``trt.__version__`` "10.3.0.26")."""
    m = re.match(r"(\d+)\.(\d+)", str(getattr(trt, "__version__", "")))
    if not m:
        raise TrtCompatError(f"tensorrt: cannot read the version {getattr(trt, '__version__', None)!r}")
    return int(m.group(1)), int(m.group(2))


def check_trt_version(trt) -> tuple[int, int]:
    """The version, or one line when it is not 10.3+ / 11.x."""
    major, minor = trt_version(trt)
    if major not in SUPPORTED_TRT_MAJORS or (major == 10 and minor < MIN_TRT_10_MINOR):
        raise TrtCompatError(f"TensorRT {trt.__version__} is not supported: install TensorRT 10.3+ or 11.x "
                             "(see README 'Installing for GPU')")
    return major, minor


def engine_built_with(engine_path) -> Optional[str]:
    """TensorRT version an engine was built with, from its ``.json`` side-car (None if unknown)."""
    side = Path(engine_path).with_suffix(".json")
    try:
        return json.loads(side.read_text()).get("key", {}).get("tensorrt")
    except (OSError, ValueError, AttributeError):
        return None


def deserialize_engine(runtime, trt, engine_path):
    """``runtime.deserialize_cuda_engine`` of a file; one line (TrtCompatError) when it gives None."""
    engine_path = os.fspath(engine_path)
    with open(engine_path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        built = engine_built_with(engine_path)
        why = (f"built with TensorRT {built}, installed {trt.__version__}" if built and built != trt.__version__
               else "built for another GPU or TensorRT version")
        raise TrtCompatError(f"tensorrt: cannot deserialise {engine_path} ({why}): rebuild it on this machine "
                             "with mrcnet-export --engines-only")
    return engine


def io_names(engine, trt) -> tuple[list[str], list[str]]:
    """(input names, output names) of an engine, in engine order (TensorRT 10 and 11 API)."""
    ins, outs = [], []
    for i in range(engine.num_io_tensors):
        n = engine.get_tensor_name(i)
        (ins if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else outs).append(n)
    return ins, outs


# ------------------------------------------------------------------------------------- CUDA
def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+, 13), else ``cuda.cudart``.
    ImportError when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python 12
    return cudart


def cuda_python_major() -> Optional[int]:
    """Major version of the installed cuda-python distribution (None when absent)."""
    for dist in ("cuda-python", "cuda-bindings"):
        try:
            return int(metadata.version(dist).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


def driver_version() -> Optional[str]:
    """The NVIDIA kernel driver's version ("540.3.0"), from ``/proc/driver/nvidia/version``."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module(?: for [\w.]+)?\s+(\d+(?:\.\d+)+)", text) or re.search(r"\s(\d{3}\.\d+(?:\.\d+)?)\s",
                                                                                          text)
    return m.group(1) if m else None


def insufficient_driver_message(cuda_major: Optional[int], driver: Optional[str]) -> str:
    """One line for error 35: which cuda-python, which driver it needs, what is installed, the fix."""
    need = MIN_DRIVER_FOR_CUDA.get(cuda_major or 0, "newer")
    have = driver or "unknown"
    fix = (f"pip install 'cuda-python<{cuda_major}' or pycuda" if cuda_major and cuda_major > min(MIN_DRIVER_FOR_CUDA)
           else "update the NVIDIA driver or pip install pycuda")
    return (f"cuda-python {cuda_major or '?'}.x needs an NVIDIA driver >= {need}, this driver is {have} "
            f"(CUDA error {CUDA_ERROR_INSUFFICIENT_DRIVER}): {fix}")


@dataclass
class CudaRuntime:
    """The CUDA binding the TensorRT runner uses: ``kind`` "cuda-python" (``module`` = the cudart
    module) or "pycuda" (``module`` = ``pycuda.driver``, a context made by ``pycuda.autoinit``);
    ``note``: the one-line notice when it fell back to pycuda (else "")."""

    kind: str
    module: object
    note: str = ""


def _import_pycuda():
    import pycuda.autoinit  # noqa: F401  (creates a context on device 0)
    import pycuda.driver as drv  # pycuda: the Jetson fallback, optional

    return drv


def cuda_runtime(import_cudart_fn: Callable = import_cudart, import_pycuda_fn: Callable = _import_pycuda,
                 warn: Callable[[str], None] | None = None) -> CudaRuntime:
    """cuda-python if it imports and works with this driver, else pycuda (see the module docstring).

    Raises :class:`TrtCompatError` (one line) when neither works. ``warn`` receives the fallback
    notice (default: printed to stderr)."""
    warn = warn or (lambda m: print(m, file=sys.stderr))
    problem = "cuda-python is not installed"
    try:
        cudart = import_cudart_fn()
    except ImportError:
        cudart = None
    if cudart is not None:
        res = cudart.cudaGetDeviceCount()
        err = int(res[0]) if isinstance(res, tuple) else int(res)
        if err == 0:
            return CudaRuntime("cuda-python", cudart)
        if err == CUDA_ERROR_INSUFFICIENT_DRIVER:
            problem = insufficient_driver_message(cuda_python_major(), driver_version())
        else:
            problem = f"cuda-python: cudaGetDeviceCount failed with CUDA error {err} (no usable GPU?)"
    try:
        drv = import_pycuda_fn()
    except ImportError:
        raise TrtCompatError(f"tensorrt backend: {problem}; pycuda is not installed either") from None
    except Exception as e:  # pycuda.autoinit: no device / driver problem (pycuda's own exception types)
        raise TrtCompatError(f"tensorrt backend: {problem}; pycuda failed too: {error_line(e)}") from None
    note = f"{problem} -> using pycuda" if cudart is not None else ""
    if note:
        warn(note)
    return CudaRuntime("pycuda", drv, note)

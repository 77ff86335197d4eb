"""Headless OpenGL contexts through EGL (no X server): one per process and device, created lazily.

Device selection (``device`` argument of :func:`get_context` and ``Renderer``):

- ``None``: the EGL device of CUDA device ``cuda_device`` (default 0: the backend's GPU; NVIDIA
  ``EGL_NV_device_cuda``) when the EGL device list has NVIDIA devices; else EGL device 0 (on a
  machine without NVIDIA's EGL files, Mesa's software rasteriser, llvmpipe). EGL ignores
  ``CUDA_VISIBLE_DEVICES``: matching by CUDA ordinal is what puts the renderer on the backend's GPU.
- ``int`` or a digit string: that EGL device index (see :func:`list_devices`).
- ``"cuda:K"``: the EGL device of CUDA device K (error when there is none).
- ``"cpu"``: Mesa's software device (llvmpipe), even where GPUs exist.

:func:`is_software` tells a software renderer from its name; :func:`software_fallback_warning`
is the one warning a run on a GPU machine gives when it renders on the CPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass
from typing import Optional, Union

import moderngl

from ..errors import error_line

GL_REQUIRE = 330  # OpenGL 3.3 core: what the shaders use

_EGL_EXTENSIONS = 0x3055
_EGL_DRM_DEVICE_FILE_EXT = 0x3233
_EGL_CUDA_DEVICE_NV = 0x323A

Device = Union[None, int, str]

_lock = threading.Lock()
_contexts: dict = {}


class RenderContextError(RuntimeError):
    """No headless OpenGL context could be created (missing EGL, bad device, old OpenGL)."""


@dataclass(frozen=True)
class EGLDevice:
    """One EGL device: ``index`` (what ``device=int`` selects), ``kind`` ('software', 'cuda' or
    'drm'), ``cuda`` (CUDA ordinal for NVIDIA devices, else None), ``drm`` (e.g. /dev/dri/card0)."""

    index: int
    kind: str
    cuda: Optional[int] = None
    drm: Optional[str] = None


def _find_system_library(name: str, soname: str) -> str:
    """Path or soname of a system library, or a one-line RenderContextError naming it."""
    found = ctypes.util.find_library(name)
    if found:
        return found
    try:  # find_library needs ldconfig; the soname may still load
        ctypes.CDLL(soname)
        return soname
    except OSError:
        raise RenderContextError(
            f"headless rendering needs the system library {soname}, which is missing: "
            "install the Debian/Ubuntu packages libegl1 libgl1 libgl1-mesa-dri (Mesa, CPU) "
            "or the NVIDIA driver's EGL libraries (GPU)"
        ) from None


def list_devices() -> list[EGLDevice]:
    """The EGL devices of this machine (EGL_EXT_device_enumeration), in index order.

    Raises:
        RenderContextError: libEGL is missing or cannot enumerate devices.
    """
    egl = ctypes.CDLL(_find_system_library("EGL", "libEGL.so.1"))
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]

    def proc(name, restype, *argtypes):
        addr = egl.eglGetProcAddress(name.encode())
        if not addr:
            raise RenderContextError(f"libEGL lacks {name}: cannot enumerate EGL devices")
        return ctypes.CFUNCTYPE(restype, *argtypes)(addr)

    query_devices = proc("eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int,
                         ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int))
    query_string = proc("eglQueryDeviceStringEXT", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
    n = ctypes.c_int(0)
    if not query_devices(0, None, ctypes.byref(n)):
        raise RenderContextError("eglQueryDevicesEXT failed: cannot enumerate EGL devices")
    handles = (ctypes.c_void_p * max(n.value, 1))()
    query_devices(n.value, handles, ctypes.byref(n))
    out = []
    for i in range(n.value):
        ext = (query_string(handles[i], _EGL_EXTENSIONS) or b"").decode(errors="replace")
        cuda = drm = None
        if "EGL_NV_device_cuda" in ext:
            attrib = proc("eglQueryDeviceAttribEXT", ctypes.c_uint, ctypes.c_void_p, ctypes.c_int,
                          ctypes.POINTER(ctypes.c_ssize_t))
            value = ctypes.c_ssize_t(-1)
            if attrib(handles[i], _EGL_CUDA_DEVICE_NV, ctypes.byref(value)):
                cuda = int(value.value)
        if "EGL_EXT_device_drm" in ext:
            s = query_string(handles[i], _EGL_DRM_DEVICE_FILE_EXT)
            drm = s.decode(errors="replace") if s else None
        kind = "software" if "EGL_MESA_device_software" in ext else "cuda" if cuda is not None else "drm"
        out.append(EGLDevice(i, kind, cuda, drm))
    return out


def resolve_device(device: Device, cuda_device: Optional[int] = None) -> int:
    """EGL device index for a ``device`` argument (module docstring); ``cuda_device``: the CUDA
    device ``None`` prefers (default 0).

    Raises:
        RenderContextError: unknown device string or no such device.
    """
    if device is None:
        try:
            devices = list_devices()
        except RenderContextError:
            return 0  # no enumeration: EGL's default device
        nvidia = [d for d in devices if d.cuda is not None]
        want = 0 if cuda_device is None else int(cuda_device)
        for d in nvidia:
            if d.cuda == want:
                return d.index
        return nvidia[0].index if nvidia else 0
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise RenderContextError(f"device must be None, an EGL device index, 'cuda:K' or 'cpu', got {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise RenderContextError(f"EGL device index must be >= 0, got {device}")
        return device
    name = device.strip().lower()
    if name.isdigit():
        return int(name)
    devices = list_devices()
    if name in ("cpu", "software", "llvmpipe"):
        for d in devices:
            if d.kind == "software":
                return d.index
        raise RenderContextError(f"no software (Mesa llvmpipe) EGL device among {devices}: install libgl1-mesa-dri")
    if name.startswith("cuda"):
        k = int(name.split(":", 1)[1]) if ":" in name else 0
        for d in devices:
            if d.cuda == k:
                return d.index
        raise RenderContextError(f"no EGL device for CUDA device {k} among {devices}")
    raise RenderContextError(f"unknown device {device!r}: use None, an EGL device index, 'cuda:K' or 'cpu'")


def get_context(device: Device = None, cuda_device: Optional[int] = None):
    """The process's moderngl context on ``device`` (``cuda_device``: see :func:`resolve_device`),
    created on first use, then reused.

    A process forked after its parent created a context gets a RenderContextError (see
    :func:`check_not_forked`), not a hang.

    Returns:
        moderngl.Context (OpenGL >= 3.3 core, standalone, EGL backend).
    Raises:
        RenderContextError: one line naming the missing library or the failing device.
    """
    index = resolve_device(device, cuda_device)
    key = (os.getpid(), index)
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            check_not_forked()
            ctx = _contexts[key] = _create(index)
    return ctx


def check_not_forked() -> None:
    """Raise when this process was forked from one holding an OpenGL context.

    Mesa (llvmpipe) and NVIDIA EGL do not survive ``fork``: a context created or used in the child
    hangs. Workers must create their own Renderer in a fresh ('spawn') process.
    """
    parents = sorted({pid for pid, _ in _contexts if pid != os.getpid()})
    if parents:
        raise RenderContextError(
            f"this process was forked from process {parents[0]}, which had created an OpenGL context; "
            "EGL does not survive fork(): start workers with multiprocessing's 'spawn' method "
            "(or create every Renderer only inside the workers)")


def _create(index: int):
    kwargs = dict(standalone=True, backend="egl", require=GL_REQUIRE)
    kwargs["libegl"] = _find_system_library("EGL", "libEGL.so.1")
    kwargs["libgl"] = _find_system_library("GL", "libGL.so.1")
    kwargs["device_index"] = index
    try:
        return moderngl.create_context(**kwargs)
    except Exception as e:
        where = f"EGL device {index}"
        msg = error_line(e)
        raise RenderContextError(f"cannot create a headless OpenGL {GL_REQUIRE // 100}.{GL_REQUIRE % 100 // 10} "
                                 f"context on the {where}: {msg}") from e


def is_software(renderer_name: str) -> bool:
    """True for Mesa's CPU rasterisers (llvmpipe, softpipe, swrast) by their GL_RENDERER name."""
    name = renderer_name.lower()
    return any(k in name for k in ("llvmpipe", "softpipe", "swrast", "software"))


def gpu_machine() -> bool:
    """True when an NVIDIA GPU is visible to this machine (its driver's device nodes exist)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def software_fallback_warning(renderer_name: str, gpu: Optional[bool] = None) -> Optional[str]:
    """The warning for rendering on the CPU on a GPU machine (``gpu``: default :func:`gpu_machine`),
    or None. One line, naming the fix."""
    if not is_software(renderer_name) or not (gpu_machine() if gpu is None else gpu):
        return None
    return (f"warning: rendering on the CPU ({renderer_name}) although this machine has an NVIDIA GPU: "
            "NVIDIA's EGL library is not visible (in a container: NVIDIA_DRIVER_CAPABILITIES must include "
            "graphics); stage 2 will be slow")


def describe(ctx) -> str:
    """One line: renderer and version of a context, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits), 4.5 (Core ...)'."""
    return f"{ctx.info['GL_RENDERER']}, OpenGL {ctx.info['GL_VERSION']}"

#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system EGL/Mesa libraries, a virtual
# environment in .venv, torch 2.13.0 (pinned here, not in setup.cfg) and the project with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless OpenGL through EGL (Mesa llvmpipe where there is no GPU).
if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libEGL_mesa.so.0' \
   || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  echo "[setup] installing EGL/Mesa system libraries (libegl1 libgl1 libgl1-mesa-dri)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libegl1 libgl1 libgl1-mesa-dri libegl-mesa0 >/dev/null
fi

# ffmpeg: the loopback stream test (tests/runtime/test_sources.py) serves a clip with it (optional; that one test skips without it).
if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "[setup] installing ffmpeg (for the stream test)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null; } \
    || echo "[setup] could not install ffmpeg: the stream test will skip"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v 'is ignored' || true
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "[setup] installing torch==2.13.0"
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v 'is ignored' || true
fi
echo "[setup] installing mrcnet-edge[train,dev]"
.venv/bin/python -m pip install -q -e ".[train,dev]" 2>&1 | grep -vE 'is ignored|^\s*$|!!|WheelFile|strategy' || true
.venv/bin/python -c 'import torch, mrcnet, mrcnet.runtime; print("[setup] ok: torch", torch.__version__)'

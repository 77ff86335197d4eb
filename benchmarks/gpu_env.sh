# Sourced by benchmarks/gpu_check.sh (and by any offline job on a bare GPU machine): with ROOT set to
# the repository, it installs the prepared offline packages of .gpu-check/ (bash
# scripts/prepare_gpu_check.sh) into a private target folder (pip if present, else the wheels are
# unpacked), unpacks the EGL .debs there when the system lacks libEGL.so.1 / libGL.so.1, points
# glvnd at NVIDIA's EGL vendor library when it does not know it, puts the source tree on PYTHONPATH
# as the package mrcnet and sets PY to the Python to use. Without .gpu-check/ PY is the
# repository's .venv Python (as here, on the CPU).
PREP="${GPU_CHECK_DIR:-$ROOT/.gpu-check}"
PY="${PYTHON:-python3}"
fits() {  # the prepared wheels are for CPython 3.12 on x86-64
  "$PY" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 12) and platform.machine() == "x86_64"))' 2>/dev/null
}
if [ -d "$PREP/wheels" ] && ! fits; then
  echo "gpu_env.sh: $PREP holds wheels for CPython 3.12 x86-64, not for $("$PY" -V 2>&1): not installing them"
fi
if [ -d "$PREP/wheels" ] && fits; then
  TARGET="${GPU_CHECK_TARGET:-$PREP/target}"
  SITE="$TARGET/site"
  mkdir -p "$SITE"
  stamp="$SITE/.installed"
  if [ ! -f "$stamp" ] || [ -n "$(find "$PREP/wheels" -newer "$stamp" -name '*.whl' | head -1)" ]; then
    echo "gpu_env.sh: installing $(ls "$PREP"/wheels/*.whl | wc -l) wheels into $SITE (offline)"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$SITE" --upgrade \
        "$PREP"/wheels/*.whl
    else
      "$PY" - "$SITE" "$PREP"/wheels/*.whl <<'PYEOF'
import sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])
PYEOF
    fi
    touch "$stamp"
  fi
  # EGL / GL dispatch libraries (glvnd) only where the system has none
  need_libs=0
  for lib in libEGL.so.1 libGL.so.1; do
    ldconfig -p 2>/dev/null | grep -q "$lib" || need_libs=1
  done
  if [ "$need_libs" = 1 ] && ls "$PREP"/debs/*.deb >/dev/null 2>&1; then
    mkdir -p "$TARGET/debroot"
    for d in "$PREP"/debs/*.deb; do
      if command -v dpkg-deb >/dev/null; then
        dpkg-deb -x "$d" "$TARGET/debroot"
      else
        (cd "$TARGET/debroot" && ar p "$d" "$(ar t "$d" | grep '^data.tar')" | tar -x -J 2>/dev/null \
          || ar p "$d" "$(ar t "$d" | grep '^data.tar')" | tar -x -z)
      fi
    done
    export LD_LIBRARY_PATH="$TARGET/debroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu_env.sh: EGL/GL dispatch libraries from $PREP/debs"
  fi
  # NVIDIA's EGL vendor library present but unknown to glvnd (containers): use the driver's own vendor
  # file where the driver mount has one, else register the library privately
  drv_vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$drv_vendor" ] \
     && ! ls /usr/share/glvnd/egl_vendor.d/*nvidia*.json /etc/glvnd/egl_vendor.d/*nvidia*.json >/dev/null 2>&1; then
    export __EGL_VENDOR_LIBRARY_FILENAMES="$drv_vendor"
  elif ldconfig -p 2>/dev/null | grep -q libEGL_nvidia.so.0 \
     && ! ls /usr/share/glvnd/egl_vendor.d/*nvidia*.json /etc/glvnd/egl_vendor.d/*nvidia*.json >/dev/null 2>&1; then
    mkdir -p "$TARGET/egl_vendor.d"
    printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n' \
      > "$TARGET/egl_vendor.d/10_nvidia.json"
    export __EGL_VENDOR_LIBRARY_DIRS="$TARGET/egl_vendor.d:/usr/share/glvnd/egl_vendor.d"
  fi
  # the source tree as the package mrcnet (mrcnet.runtime = runtime/, mrcnet.export = export/)
  SRC="$TARGET/src/mrcnet"
  rm -rf "$TARGET/src"
  mkdir -p "$SRC"
  for p in "$ROOT"/mrcnet/*; do ln -s "$p" "$SRC/$(basename "$p")"; done
  ln -s "$ROOT/runtime" "$SRC/runtime"
  ln -s "$ROOT/export" "$SRC/export"
  # the repository's own mrcnet/ (without runtime/ and export/) must not shadow that package when a
  # command runs in the repository root (python -m ..., python -c ...): Python 3.11+ leaves the
  # current folder off sys.path with PYTHONSAFEPATH, and with it a script's own folder, so the
  # benchmarks' shared module (benchmarks/common.py) goes on the path explicitly (as tests/conftest.py does)
  export PYTHONPATH="$TARGET/src:$SITE:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONSAFEPATH=1
else
  PY="${PYTHON:-$ROOT/.venv/bin/python}"
  echo "gpu_env.sh: no offline packages to install (bash scripts/prepare_gpu_check.sh prepares $PREP): using $PY as it is"
fi

#!/usr/bin/env bash
# Prepare, on a machine with network, the offline packages of benchmarks/gpu_check.sh in the
# ignored folder .gpu-check/ of the repository (or $GPU_CHECK_DIR):
#   .gpu-check/wheels/  cp312 manylinux x86-64 wheels of the runtime's dependencies the GPU machine
#                       lacks (it has Python 3.12 and PyTorch with CUDA, numpy with it)
#   .gpu-check/debs/    the EGL/GL dispatch libraries (glvnd) as .deb files, used only where the
#                       GPU machine has no libEGL.so.1 / libGL.so.1 (NVIDIA's own EGL library comes
#                       with its driver)
# Then copy the repository (with .gpu-check/) to the GPU machine and run bash benchmarks/gpu_check.sh.
# Options: --with-numpy (also carry numpy, for a PyTorch without it). Total kept under 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${GPU_CHECK_DIR:-.gpu-check}"
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
WITH_NUMPY=0
for a in "$@"; do
  case "$a" in
    --with-numpy) WITH_NUMPY=1 ;;
    *) echo "prepare_gpu_check.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
# What the runtime, the renderer tests and the CUDA wrapper need beyond Python + PyTorch + numpy.
# opencv 4.10 headless is the smallest recent OpenCV wheel; cuda-bindings 12.x runs on CUDA 12 drivers.
WHEELS=(
  "opencv-python-headless==4.10.0.84" "moderngl>=5.8" "glcontext" "trimesh>=4.0" "click>=8.1" "tqdm>=4.60"
  "cuda-bindings>=12.6,<13" "pytest>=7.4"
)
DEBS=(libegl1 libglvnd0 libgl1 libglx0 libopengl0)
mkdir -p "$DIR/wheels" "$DIR/debs"
rm -f "$DIR"/wheels/*.whl "$DIR"/debs/*.deb
$PIP download --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$DIR/wheels" "${WHEELS[@]}"
if [ "$WITH_NUMPY" = 0 ]; then
  rm -f "$DIR"/wheels/numpy-*.whl   # PyTorch's environment has numpy
fi
(cd "$DIR/debs" && apt-get download "${DEBS[@]}")
du -sh "$DIR"
total=$(du -sb "$DIR" | cut -f1)
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "prepare_gpu_check.sh: $DIR holds $((total / 1048576)) MiB, more than 60 MiB" >&2
  exit 1
fi
ls -1 "$DIR"/wheels "$DIR"/debs
echo "prepared $DIR ($((total / 1048576)) MiB): copy the repository to the GPU machine and run bash benchmarks/gpu_check.sh"

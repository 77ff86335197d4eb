#!/usr/bin/env bash
# Prepare, on a machine with network, the offline packages of benchmarks/gpu_check.sh in the
# ignored folder .gpu-check/ of the repository (or $GPU_CHECK_DIR):
#   .gpu-check/wheels/  cp312 manylinux x86-64 wheels of the runtime's dependencies the GPU machine
#                       lacks (it has Python 3.12 and PyTorch with CUDA, numpy with it)
#   .gpu-check/debs/    the EGL/GL dispatch libraries (glvnd) as .deb files, used only where the
#                       GPU machine has no libEGL.so.1 / libGL.so.1 (NVIDIA's own EGL library comes
#                       with its driver)
# Then copy the repository (with .gpu-check/) to the GPU machine and run bash benchmarks/gpu_check.sh.
# Options: --with-numpy (also carry numpy, for a PyTorch without it); --train (also what training and the
# scene renderer need: albumentations and its own needs, pycocotools); --have NAME,... (leave out the
# wheels of packages the GPU machine's image already holds, e.g. opencv-python-headless,click,tqdm,
# pytest,cuda-bindings). Total kept under 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${GPU_CHECK_DIR:-.gpu-check}"
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
WITH_NUMPY=0
TRAIN=0
HAVE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --with-numpy) WITH_NUMPY=1 ;;
    --train) TRAIN=1 ;;
    --have) HAVE="${2:?--have needs a comma-separated list of package names}"; shift ;;
    *) echo "prepare_gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# What the runtime, the renderer tests and the CUDA wrapper need beyond Python + PyTorch + numpy.
# opencv 4.10 headless is the smallest recent OpenCV wheel; cuda-bindings 12.x runs on CUDA 12 drivers.
WHEELS=(
  "opencv-python-headless==4.10.0.84" "moderngl>=5.8" "glcontext" "trimesh>=4.0" "click>=8.1" "tqdm>=4.60"
  "cuda-bindings>=12.6,<13" "pytest>=7.4"
)
# Training (mrcnet-train, mrcnet-synth scenes) on top: fetched without their own needs (listed here),
# so that nothing the image already has (numpy, scipy, OpenCV, PyYAML) is carried twice.
TRAIN_WHEELS=(
  "albumentations==2.0.8" "albucore==0.0.24" "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0"
  "typing-inspection==0.4.5" "typing-extensions==4.16.0" "stringzilla==5.3.2" "simsimd==6.5.16" "pycocotools==2.0.11"
)
DEBS=(libegl1 libglvnd0 libgl1 libglx0 libopengl0)
mkdir -p "$DIR/wheels" "$DIR/debs"
rm -f "$DIR"/wheels/*.whl "$DIR"/debs/*.deb
$PIP download --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$DIR/wheels" "${WHEELS[@]}"
if [ "$TRAIN" = 1 ]; then
  $PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --abi none --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any -d "$DIR/wheels" "${TRAIN_WHEELS[@]}"
fi
for name in ${HAVE//,/ }; do  # wheel file names spell the distribution with underscores
  rm -f "$DIR"/wheels/"${name//-/_}"-*.whl "$DIR"/wheels/"$name"-*.whl
done
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

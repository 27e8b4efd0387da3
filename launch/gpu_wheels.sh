#!/usr/bin/env bash
# Download, on a machine with network, the wheels that training needs on a GPU machine that has
# PyTorch but no network: deepspeed (built here as a pure-Python wheel), megatron-core, pydantic and
# the small packages they import, at the versions pinned in constraints.txt, for the GPU machine's
# Python. Ray, datasets and wandb are not included: prepare data on a CPU machine and copy it over.
#
#   launch/gpu_wheels.sh DEST [PYTHON_VERSION]      e.g. launch/gpu_wheels.sh wheels 3.12
#
# Then on the GPU machine, from the checkout (the project itself runs from the checkout):
#   python -m pip install --no-index --find-links DEST --no-deps DEST/*.whl
#   python benchmarks/gpu_step.py
# DRY_RUN=1 prints the pip commands and downloads nothing.
set -euo pipefail
PARSCALE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/lib.sh
. "$PARSCALE_ROOT/launch/lib.sh"

case ${1:-} in
  -h | --help) show_help "$0"; exit 0 ;;
  "") show_help "$0" >&2; die "give a DEST folder" ;;
esac
dest=$1
pyver=${2:-3.12}
# the packages training imports beyond what the GPU machine has (torch, numpy, pyyaml, safetensors, sentencepiece)
binary=(megatron-core pydantic pydantic_core annotated-types typing-inspection typing_extensions hjson msgpack
        ninja py-cpuinfo einops psutil packaging tqdm)
pins=()
for name in "${binary[@]}"; do
  pin=$(grep -i -E "^${name//[-_]/[-_]}==" "$PARSCALE_ROOT/constraints.txt") || die "$name is not pinned in constraints.txt"
  pins+=("$pin")
done
deepspeed_pin=$(grep -E '^deepspeed==' "$PARSCALE_ROOT/constraints.txt")
download=("$PYTHON" -m pip download --only-binary=:all: --no-deps --python-version "$pyver"
          --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --dest "$dest" "${pins[@]}")
wheel=("$PYTHON" -m pip wheel --no-deps --wheel-dir "$dest" "$deepspeed_pin")
if is_dry_run; then
  quote "${download[@]}"
  quote "${wheel[@]}"
  exit 0
fi
mkdir -p "$dest"
"${download[@]}"
DS_BUILD_OPS=0 "${wheel[@]}"
echo "gpu_wheels.sh: wheels for Python $pyver in $dest"

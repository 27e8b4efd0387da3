#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in ./.venv. Idempotent: a second run with
# unchanged pins does nothing but check. Never lets pip replace torch 2.13.0 with another build.
#
#   ./setup.sh                 CPU machine: torch 2.13.0 CPU wheel + the pinned stack
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 ./setup.sh
#                              GPU machine: torch 2.13.0 from that CUDA index, the rest unchanged
#   PYTHON=python3.12 ./setup.sh   choose the interpreter (3.11+)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(pwd)
venv="$root/.venv"
python_bin=${PYTHON:-python3}
stamp="$venv/.parscale-setup-stamp"

"$python_bin" - <<'PY' || { echo "setup.sh: Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)${TORCH_INDEX_URL:+-$TORCH_INDEX_URL}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/parscale" ] && "$venv/bin/python" -c "import torch, deepspeed, megatron.core" >/dev/null 2>&1; then
  echo "setup.sh: .venv is up to date"
  exit 0
fi

[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# pip warns once per package about unreachable extra index folders on some machines: keep the log readable
quiet_pip() {
  PYTHONWARNINGS=ignore "${pip[@]}" "$@" 2> >(grep -v -e 'is ignored: it is neither a file nor a directory' >&2)
}
quiet_pip install --quiet --upgrade "pip>=24" setuptools wheel
# torch first, alone: with no torch present, any other package asking for torch would pull the newest
# CUDA build (several GB). The CPU wheel is found locally (pip's find-links) or on the PyTorch CPU index.
torch_pin=$(grep -E '^torch==' constraints.txt)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  quiet_pip install --quiet "$torch_pin" --index-url "$TORCH_INDEX_URL"
elif ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  quiet_pip install --quiet "$torch_pin" || quiet_pip install --quiet "$torch_pin" \
    --index-url https://download.pytorch.org/whl/cpu
fi
quiet_pip install --quiet -c constraints.txt -e ".[dev]"
"$venv/bin/python" -m pipeline.cli --help >/dev/null
echo "$want" > "$stamp"
echo "setup.sh: .venv ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

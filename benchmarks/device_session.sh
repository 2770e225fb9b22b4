#!/usr/bin/env bash
# The GPU benchmarks of a session lent an accelerator, as one device call: here first
# `bash benchmarks/device_wheels.sh`, then the device tool's run with carry [".whl"] and the
# command `bash benchmarks/device_session.sh` (timeout_s 600). Keras runs on JAX, without
# TensorFlow:
#   1. benchmarks/ladder_paper.py: the detector ladder at its papers' scale, every network on the
#      GPU, selective search on the machine's CPU cores, R-CNN on all its warps;
#   2. benchmarks/gpu.py: our models against torchvision's on the same card.
# Results (JSON and logs) land in $OUT, the folder the device tool brings back, else
# benchmarks/results/. Arguments go to both benchmarks (`--tiny` is a CPU smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
photos=$(ls .whl/photos/*.jpg 2>/dev/null | paste -sd, -)
status=0
timeout "${LADDER_S:-240}" python3 benchmarks/ladder_paper.py ${photos:+--photos "$photos"} \
  --rcnn-warps 0 --out "$out/ladder_paper_gpu.json" "$@" 2>&1 | tee "$out/ladder_paper_gpu.log" || status=1
timeout "${GPU_S:-300}" python3 benchmarks/gpu.py --budget-s "${GPU_BUDGET_S:-200}" \
  --out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log" || status=1
exit $status

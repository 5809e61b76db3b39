#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the test suite on it, `stn-ablate bench` for every variant, and
# one 50-epoch tutorial_stn / tutorial_cnn pair; write everything under $OUT (default ./gpu-check) so the figures
# can go into the README. Without a GPU it says so in one line and exits 0.
#
#   scripts/gpu_check.sh            # or: make gpu-check
#
# Needs the project's venv (make setup) and the data under $STN_ABLATE_DATA. Cost on one recent GPU: the tests
# about 10 minutes, the bench 2-3 minutes, the 50-epoch pair a few minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${OUT:-gpu-check}

if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to PyTorch here; nothing to check"
  exit 0
fi
mkdir -p "$out"
status=0
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$out/device.txt"

# 1. The test suite with CUDA visible: the device-dependent tests take the GPU path.
"$python" -m pytest -q -p no:cacheprovider --durations=10 2>&1 | tee "$out/tests.log" || status=1

# 2. Throughput of every variant against the tutorial-style pipeline, on the GPU.
"$python" -m stn_ablation.cli bench --device cuda --seconds 10 2>&1 | tee "$out/bench.txt" || status=1

# 3. A 50-epoch pair on the default recipe: wall time per trial and final accuracy.
for variant in tutorial_stn tutorial_cnn; do
  /usr/bin/time -f "$variant wall %e s" "$python" -m stn_ablation.cli train --variant "$variant" --epochs 50 \
    --aug standard --device cuda --home "$out/home" 2>&1 | tr '\r' '\n' | grep -v "epoch/s" \
    | tee -a "$out/pair.txt" || status=1
done
echo "gpu_check: done (status $status); results in $out/"
exit $status

#!/usr/bin/env bash
# The GPU tier in one bounded call on an air-gapped runner; logs and reports under $OUT.
#   bash gpu/tier.sh [MODEL_SECONDS] [KERNEL_SECONDS]
set -u
OUT=${OUT:-reports/gpu}; mkdir -p "$OUT"
tar xzf .gpu/site.tgz -C /tmp && export PYTHONPATH=/tmp/gpusite:$PWD HF_HUB_OFFLINE=1
python3 -c "import sys,torch,transformers;print(sys.version.split()[0],torch.__version__,transformers.__version__,torch.cuda.get_device_name())"
start=$(date +%s)
GEMMA2_REGRESS_REPORT=$OUT/model-summary.json timeout -s INT "${1:-430}" python3 -m nox -s gpu --no-venv -- \
  tests/model tests/trainer -q -p no:cacheprovider --durations=15 --junitxml "$OUT/model-junit.xml" > "$OUT/model.log" 2>&1
echo "model rc=$? wall=$(( $(date +%s) - start ))s examples=$(grep -c '^\[' "$OUT/model.log")"; tail -70 "$OUT/model.log"
start=$(date +%s)
GEMMA2_REGRESS_REPORT=$OUT/kernel-summary.json timeout -s INT "${2:-110}" python3 -m nox -s gpu --no-venv -- \
  tests/kernel -q -p no:cacheprovider -k "small_windows and (oracle-4d or unsloth-eval)" > "$OUT/kernel.log" 2>&1
echo "kernel rc=$? wall=$(( $(date +%s) - start ))s"; tail -20 "$OUT/kernel.log"

#!/usr/bin/env bash
# One batched GPU call: environment facts, then the GPU tier (bounded), logs and reports under $OUT.
# Usage on the runner, from the project root:  bash gpu/smoke.sh [KERNEL_SECONDS] [MODEL_SECONDS]
set -u
OUT=${OUT:-reports/gpu}; mkdir -p "$OUT"
tar xzf .gpu/site.tgz -C /tmp && export PYTHONPATH=/tmp/gpusite HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys,torch,transformers;print(sys.version.split()[0],torch.__version__,transformers.__version__,torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.txt"
export GEMMA2_REGRESS_REPORT=$OUT/kernel-summary.json
timeout "${1:-150}" python3 -m nox -s gpu --no-venv -- tests/kernel -x -q -p no:cacheprovider --durations=10 > "$OUT/kernel.log" 2>&1
echo "kernel rc=$?"; tail -25 "$OUT/kernel.log"
export GEMMA2_REGRESS_REPORT=$OUT/model-summary.json
timeout "${2:-300}" python3 -m pytest -m gpu tests/model tests/trainer -q -p no:cacheprovider --hypothesis-profile gpu --durations=25 --maxfail=6 > "$OUT/model.log" 2>&1
echo "model rc=$?"; tail -60 "$OUT/model.log"

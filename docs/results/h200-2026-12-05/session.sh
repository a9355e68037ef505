#!/usr/bin/env bash
# The per-run command of the GPU calls planned in docs/gpu.md ("2026-12-05, last"), on the H200 runner from
# the project root; kept here as the record of what they ran. One run of the GPU tier with the startup
# probe and the cache-key recorder:
#   bash docs/results/h200-2026-12-05/session.sh NAME SECONDS [WORKERS]
# leaves $OUT/NAME.tgz: tier.log, console.log (this script's lines), costs.json, summary.json,
# probe.json (the startup probe's per-process marks and first-call autotuning) and cache-keys/.
set -u
name=$1 secs=$2 workers=${3:-}
here=$PWD r=/tmp/r/$name p=/tmp/p-$name
mkdir -p "$r" "$p"
cp docs/results/h200-2026-12-04/startup_probe.py .  # a call's tree replaces the last's: copy it every call
{
  du -sm .cache/inductor 2>/dev/null | awk '{print "inductor cache: " $2 " (" $1 " MiB)"}'
  PYTHONPATH=/tmp/gpusite python3 -c "import sys,torch,transformers as t;print(sys.version.split()[0],torch.__version__,t.__version__,torch.cuda.get_device_name())"
} >"$r/console.log" 2>&1
t0=$(date +%s)
env ${workers:+GEMMA2_REGRESS_WORKERS_PER_GPU=$workers} STARTUP_PROBE_DIR="$p" OUT="$r" \
  bash gpu/tier.sh "$secs" -p startup_probe --cache-keys "test_evaluate_past_window[SFTTrainer-2-float32]" \
  >>"$r/console.log" 2>&1
rc=$?
echo "tier rc=$rc wall=$(($(date +%s) - t0))s" >>"$r/console.log"
python3 - "$p" "$r/probe.json" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
out = {"startup": {}, "autotune": {}}
for f in sorted(d.glob("startup-*.json")):
    out["startup"][f.stem.split("-", 1)[1]] = json.loads(f.read_text())
for f in sorted(d.glob("autotune-*.json")):
    out["autotune"][f.stem.split("-", 1)[1]] = json.loads(f.read_text())
Path(sys.argv[2]).write_text(json.dumps(out))
PY
tail -4 "$r/console.log"
grep -E "passed|failed|FX-graph cache misses|waited for memory in all" "$r/tier.log" | tail -4
cd "$r" && tar czf "$OUT/$name.tgz" tier.log console.log probe.json $(ls costs.json summary.json 2>/dev/null) \
  $(ls -d cache-keys 2>/dev/null)
cd "$here"

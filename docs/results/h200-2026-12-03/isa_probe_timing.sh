# Times Inductor's CPU ISA probe per process (no plugin) and plugins.vec_isa's once-per-folder record.
set -u
plain='import time, torch._dynamo
from torch._inductor.cpu_vec_isa import valid_vec_isa_list
t = time.perf_counter(); l = valid_vec_isa_list(); print("plain", [str(i) for i in l], round(time.perf_counter() - t, 2), "s", flush=True)'
plug='import time, torch._dynamo
from gemma2_regress.plugins import vec_isa
t = time.perf_counter(); print(vec_isa.apply(), round(time.perf_counter() - t, 2), "s", flush=True)'
python3 -c 'import torch, sys; print(sys.version.split()[0], torch.__version__)'
export PYTHONPATH=$PWD
A=$(mktemp -d); B=$(mktemp -d)
echo "== fresh cache, one process"; TORCHINDUCTOR_CACHE_DIR=$A python3 -c "$plain"
echo "== same cache, one process"; TORCHINDUCTOR_CACHE_DIR=$A python3 -c "$plain"
echo "== same cache, 4 processes at once"; for i in 1 2 3 4; do TORCHINDUCTOR_CACHE_DIR=$A python3 -c "$plain" & done; wait
echo "== plugin, fresh cache"; TORCHINDUCTOR_CACHE_DIR=$B python3 -c "$plug"
echo "== plugin, 4 processes at once after it"; for i in 1 2 3 4; do TORCHINDUCTOR_CACHE_DIR=$B python3 -c "$plug" & done; wait

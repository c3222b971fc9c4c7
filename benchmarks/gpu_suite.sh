#!/usr/bin/env bash
# Issue #16 device session in one call: versions, accuracy of each step variant against float32
# (on the device), step timing of the baseline and the variants (step_bench: one JAX process, the
# GEMM rate measured in it), the PyTorch peer (torch.compile + bf16 autocast), one table.
#
#   bash benchmarks/gpu_suite.sh               # on the GPU machine, from the repo root
#   GB_SUITE_TINY=1 bash benchmarks/gpu_suite.sh   # CPU dry run: tiny sizes, same steps
#
# Every sub-run has its own `timeout`, cut to what is left of GB_SUITE_BUDGET seconds (default
# 330), so the whole script ends in time; what a sub-run already wrote stays (JSON lines are
# appended one result at a time). Writes under $OUT (default /tmp/out): suite.log, check.jsonl,
# bench.jsonl, peer.jsonl, runs.tsv, table.md, suite.json.
set -u
START=$(date +%s)
BUDGET=${GB_SUITE_BUDGET:-330}
TINY=${GB_SUITE_TINY:-0}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (ml-collections is not on the device)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || echo "wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
LOG=$OUT/suite.log
: > "$OUT/runs.tsv"
exec > >(tee -a "$LOG") 2>&1

if [ "$TINY" = "1" ]; then
  DIMS="--dim=32 --hidden=64"; CONFIGS="3:16:base|fused|fused+mu_bf16,5:32:base|fused+mu_bf16"
  XLA_CONFIGS=${GB_SUITE_XLA_CONFIGS:-3:16:fused+mu_bf16}
  TIMING="--steps=5 --repeats=2"; CHECK_DIMS="--dim=32 --hidden=64 --batch=16"
  PEER_DEV="--device cpu --amp bf16 --steps 5 --repeats 2"; PEER=("3 16" "5 32"); CAP_MAIN=500; CAP_CHECK=400
else
  DIMS="--dim=1024 --hidden=2048"; CONFIGS="3:256:base|fused|fused+mu_bf16,5:1024:base|fused+mu_bf16"
  XLA_CONFIGS=${GB_SUITE_XLA_CONFIGS:-3:256:fused+mu_bf16}
  TIMING="--steps=50 --repeats=3"; CHECK_DIMS="--dim=256 --hidden=512 --batch=128"
  PEER_DEV="--device cuda --compile --amp bf16 --steps 30 --repeats 3"; PEER=("3 256" "5 1024"); CAP_MAIN=200
  CAP_CHECK=70
fi
XLA_EXTRA=${GB_SUITE_XLA_FLAGS:---xla_gpu_enable_triton_gemm=false}

# sub NAME CAP_SECONDS COMMAND...: run with timeout min(CAP, time left - 10 s reserve for the table)
sub() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 15 ]; then
    echo "== $name: SKIPPED (only ${left}s of the ${BUDGET}s budget left)"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$OUT/runs.tsv"; return
  fi
  echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s into the suite): $*"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@"
  local rc=$?
  echo "== $name: rc $rc in $(( $(date +%s) - t0 ))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$OUT/runs.tsv"
}

echo "== gpu_suite $(date -u +%FT%TZ) tiny=$TINY budget=${BUDGET}s commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
sub versions 40 python3 -c "import jax, flax, optax, orbax.checkpoint as o, chex, ml_collections, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'chex', chex.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, jax.devices())"
timeout 15 nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

# 1. accuracy of every variant against float32 on this device (small dims: fast compiles)
sub check "$CAP_CHECK" python3 benchmarks/step_check.py $CHECK_DIMS --modalities=3 --check_steps=5 \
  --checks=bf16:base,bf16:fused,bf16:fused+mu_bf16 --json_out="$OUT/check.jsonl"

# 2. timing: baseline and variants, both configurations, one process (GEMM rate measured in it)
sub bench "$CAP_MAIN" python3 benchmarks/step_bench.py $DIMS $TIMING --dtype=bfloat16 \
  --configs="$CONFIGS" --json_out="$OUT/bench.jsonl"

# 3. the PyTorch peer, same workloads
for mb in "${PEER[@]}"; do
  set -- $mb
  sub "peer_M$1" 90 python3 benchmarks/peer_torch.py $PEER_DEV --modalities "$1" --batch "$2" \
    $(echo $DIMS | sed 's/=/ /g') --cycle_length 3 --json_out "$OUT/peer.jsonl"
done

# 4. if time is left: the best-predicted variant under an XLA flag (one process per flag setting)
sub bench_xla 75 python3 benchmarks/step_bench.py $DIMS $TIMING --dtype=bfloat16 \
  --configs="$XLA_CONFIGS" --xla_flags="$XLA_EXTRA" --tag="$XLA_EXTRA" --json_out="$OUT/bench.jsonl"

python3 benchmarks/suite_table.py "$OUT" || echo "table failed"
echo "== gpu_suite done in $(( $(date +%s) - START ))s"

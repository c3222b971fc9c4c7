#!/usr/bin/env bash
# Issue 31 device session in one call (prepared, not yet run on a GPU): host-fed against
# device-fed training at B=1024, M=5 beside the PyTorch peer, and the host feed alone.
#
#   bash benchmarks/gpu_feed.sh                 # on the GPU machine, from the repo root
#   GB_FEED_TINY=1 bash benchmarks/gpu_feed.sh  # CPU dry run: tiny sizes, same steps
#
# 1. check: HostFeed's batches equal the device sampler's bit for bit on this device (the float16
#    rows are divided by their norms on the GPU: is XLA's GPU division IEEE, as on the CPU?).
# 2. step_bench: device-fed steps/s, MFU and compile time of the step_bench workload (M=5, B=1024,
#    d=1024, h=2048, bf16, cycles up to 3), its GEMM peak measured in the same process.
# 3. the PyTorch peer on the same workload (torch.compile + bf16 autocast).
# 4. feed_bench on M=5 float16 tables of 262,144 rows (2.5 GB): the feed alone (HostSampler and
#    HostFeed), the device sampler's rate, and end-to-end steps/s host-fed (page cache warm and
#    cold) and device-fed, the same workload (--workload=step_bench), compile time and model
#    TFLOP/s (MFU: divide by step_bench's GEMM peak from the same call).
# Order: 1, 4, 2, 3 (the host-fed numbers first).
# Every sub-run has its own `timeout`, cut to what is left of GB_FEED_BUDGET seconds (default 540),
# so the script ends inside one 600 s call. Writes under $OUT (default /tmp/out): feed.log,
# check.txt, bench.jsonl, peer.jsonl, feed.jsonl, runs.tsv.
set -u
START=$(date +%s)
BUDGET=${GB_FEED_BUDGET:-540}
TINY=${GB_FEED_TINY:-0}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (ml-collections is not on the device)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || echo "wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
LOG=$OUT/feed.log
: > "$OUT/runs.tsv"
exec > >(tee -a "$LOG") 2>&1

if [ "$TINY" = "1" ]; then
  WORK="--modalities=5 --dim=32 --hidden=64 --batch=16"
  BENCH="--modalities=5 --dim=32 --hidden=64 --batch=16 --steps=5 --repeats=2 --dtype=float32"
  PEER="--device cpu --modalities 5 --dim 32 --hidden 64 --batch 16 --steps 5 --repeats 2"
  FEED="--rows=4096 --seconds=2 --train_steps=10 --device_rows=4096"
  CHECK="--rows=512 --dim=32 --batch=16 --modalities=3"; DTYPE=float32
else
  WORK="--modalities=5 --dim=1024 --hidden=2048 --batch=1024"
  BENCH="$WORK --steps=50 --repeats=3 --dtype=bfloat16"
  PEER="--device cuda --compile --amp bf16 --modalities 5 --dim 1024 --hidden 2048 --batch 1024 --steps 30 --repeats 3"
  FEED="--rows=262144 --seconds=5 --train_steps=200 --device_rows=262144"
  CHECK="--rows=65536 --dim=1024 --batch=1024 --modalities=3"; DTYPE=bfloat16
fi

# sub NAME CAP_SECONDS COMMAND...: run with timeout min(CAP, time left - 5 s)
sub() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 15 ]; then
    echo "== $name: SKIPPED (only ${left}s of the ${BUDGET}s budget left)"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$OUT/runs.tsv"; return
  fi
  echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s into the script): $*"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@"
  local rc=$?
  echo "== $name: rc $rc in $(( $(date +%s) - t0 ))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$OUT/runs.tsv"
}

echo "== gpu_feed $(date -u +%FT%TZ) tiny=$TINY budget=${BUDGET}s commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') cpus $(nproc)"
sub versions 40 python3 -c "import jax, numpy; print('jax', jax.__version__, 'numpy', numpy.__version__, jax.devices())"
timeout 15 nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
df -h /tmp | tail -1; free -g | head -2

sub check 60 python3 benchmarks/feed_bench.py --check $CHECK --dir=/tmp/gb_feed_check
sub feed_bench 300 python3 benchmarks/feed_bench.py $WORK $FEED --workload=step_bench \
  --compute_dtype=$DTYPE --dir=/tmp/gb_feed --json_out="$OUT/feed.jsonl"
sub step_bench 100 python3 benchmarks/step_bench.py $BENCH --cycle_length=3 --json_out="$OUT/bench.jsonl"
sub peer 80 python3 benchmarks/peer_torch.py $PEER --cycle_length 3 --json_out "$OUT/peer.jsonl"
rm -rf /tmp/gb_feed /tmp/gb_feed_check
echo "== gpu_feed done in $(( $(date +%s) - START ))s"

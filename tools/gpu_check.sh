#!/usr/bin/env bash
# The cuda backend's checks that need a GPU, in one run of a few minutes (budget: < 5 min):
#   1. pycuda (the [cuda] extra; built against the local CUDA toolkit) and the kernels' cubins
#   2. the backend's tests (tests/backends/test_cuda.py, the GPU parity test included)
#   3. the parity harness on cuda for every op against the reference
#   4. the shipped tiny model and the random tiny ones (dense and MoE, F32 and Q8_0) end to end: plain and MTP-speculative generation
#      (partial rollback) on cuda give the reference's greedy tokens
#   5. `graphir generate --backend cuda`
#   6. tokens/s on the 0.8B-shaped GGUF (`graphir bench --make-08b`), llama.cpp beside it when installed
# Usage: tools/gpu_check.sh [OUT_DIR]   (logs and the bench table land in OUT_DIR, default ./gpu_check)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export GRAPHIR_CACHE=${GRAPHIR_CACHE:-$PWD/$OUT/cache}
export PATH=$PATH:/usr/local/cuda/bin
PY=${PYTHON:-python3}
fail=0
step() { echo; echo "== $1 ($(date +%T))"; }
run() {  # run NAME CMD...: log to OUT/NAME.log, keep going on failure
    local name=$1; shift
    if "$@" >"$OUT/$name.log" 2>&1; then echo "ok    $name"; else echo "FAIL  $name (see $OUT/$name.log)"; tail -20 "$OUT/$name.log"; fail=1; fi
}

step "device"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader || { echo "no GPU"; exit 2; }

step "pycuda and cubins"
$PY -c "import pycuda.driver" 2>/dev/null || run pip_pycuda $PY -m pip install -q "pycuda>=2022.1"
run cuda_report $PY -m graphir.tools.cuda_report --no-spills
$PY -c "from graphir.backends import availability as a; r = a('cuda'); print(r); raise SystemExit(0 if r.ok else 1)" \
    || { echo "cuda backend unavailable"; exit 2; }

step "backend tests"
run pytest_cuda $PY -m pytest -q -x tests/backends/test_cuda.py

step "parity harness on cuda"
run parity timeout 240 $PY -m graphir.tools.cli parity -b cuda -q

step "tiny models end to end (plain, MTP speculative with rollback) vs ref"
run generate_tokens timeout 200 bash -c '
set -e
models="$('"$PY"' -c "from graphir.models.tiny import shipped_model_path as s; print(s())")"
for arch in qwen35 qwen35moe; do
  for dtype in f32 q8_0; do
    models="$models $('"$PY"' -c "from graphir.tools.make_tiny import cached_tiny_path as c; print(c(\"$arch\", \"$dtype\"))")"
  done
done
for m in $models; do
    for spec in "" "--spec mtp --draft-max 3"; do
      a=$('"$PY"' -m graphir.tools.cli generate -q --greedy -m "$m" -n 24 -b ref $spec -p "The quick brown fox")
      b=$('"$PY"' -m graphir.tools.cli generate -q --greedy -m "$m" -n 24 -b cuda $spec -p "The quick brown fox")
      echo "$(basename $m) ${spec:-plain}"; echo "  ref : $a"; echo "  cuda: $b"
      [ "$a" = "$b" ] || { echo "greedy tokens differ (a near-tie of a random-weight model can flip: check the logits)"; exit 1; }
    done
done'
cat "$OUT/generate_tokens.log"

step "graphir generate --backend cuda"
run generate timeout 120 $PY -m graphir.tools.cli generate -n 32 -b cuda -p "Once upon a time"
cat "$OUT/generate.log" | tail -5

step "tokens/s on the 0.8B-shaped GGUF"
run make_08b timeout 120 $PY -m graphir.tools.cli bench --make-08b "$OUT/models"
for f in "$OUT"/models/qwen35-0.8b-shaped-q8_0.gguf; do
  run bench timeout 240 $PY -m graphir.tools.cli bench -q -m "$f" -b cuda --prompt-tokens 128 --gen-tokens 32 --reps 3
  cat "$OUT/bench.log" | tail -15
done

echo
[ $fail = 0 ] && echo "gpu_check: all passed" || echo "gpu_check: FAILURES above"
exit $fail

#!/usr/bin/env bash
# GPU check (issue 20): on a CUDA machine, in under 10 minutes, print one JSON line per stage:
#   device            the GPU (nvidia-smi), torch and its CUDA, the CPU and its bf16/AMX flags
#   gpu_tests         pytest -m gpu tests/gpu (bf16 + compile + flash vs eager fp32, TF32,
#                     FSDP2 on one GPU, the inference engine on CUDA)
#   gpt2              GPT-2 124M, bf16 + compile: ms/step, tokens/s, MFU (target >= 50 %)
#   shakespeare_char  the GPU preset, compiled: whole-command wall time to val <= 1.47
#                     (target <= 45 s on an H200; nanoGPT takes about 3 minutes on an A100)
#   summary           which stages failed, total seconds
# Usage, from anywhere:  bash benchmarks/gpu_check.sh [--dry-run]
#   --dry-run   print the commands it would run and exit 0 (no GPU or torch needed)
# Without a CUDA device it exits 1 with one line on stderr. Environment: PYTHON (default
# .venv/bin/python if there, else python3), GPTLAB_DATA_DIR (default shared/data in the repo or
# ../shared/data beside it), GPU_CHECK_OUT for logs (default $OUT if set, else a temp folder).
# Wheels in .whl/ (e.g. tyro, which the device image lacks) are installed to a temp folder first.
# docs/training.md ("GPU check") says more.
set -uo pipefail

cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY=1 ;;
  *) echo "gpu_check: unknown argument '$1'; usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z "${GPTLAB_DATA_DIR:-}" ]]; then
  for d in shared/data ../shared/data; do
    if [[ -d "$d" ]]; then GPTLAB_DATA_DIR="$(cd "$d" && pwd)"; break; fi
  done
fi
export GPTLAB_DATA_DIR="${GPTLAB_DATA_DIR:-}" GPTLAB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"  # gptlab from this checkout, installed or not
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-}}"  # empty: a fresh temp folder
if (( DRY )); then
  OUT_DIR="${OUT_DIR:-/tmp/gpu_check.XXXXXX}"
else
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_check_site .whl/*.whl || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
  fi
  "$PYTHON" benchmarks/gpu_check.py probe || exit 1  # one line on stderr says why
  OUT_DIR="${OUT_DIR:-$(mktemp -d -t gpu_check.XXXXXX)}"
  mkdir -p "$OUT_DIR"
fi
# logs and results (6 files) go to OUT_DIR; run directories and the data cache to a temp folder
WORK="$( (( DRY )) && echo /tmp/gpu_check_work.XXXXXX || mktemp -d -t gpu_check_work.XXXXXX)"
export GPTLAB_CACHE_DIR="$WORK/cache"

# stage name | timeout in seconds | command (paths without spaces); at most 520 s in all
STAGES=(
  "device|30|$PYTHON benchmarks/gpu_check.py device"
  "gpu_tests|200|$PYTHON -m pytest -m gpu tests/gpu -p no:cacheprovider -rfE"
  "gpt2|130|$PYTHON benchmarks/gpu_check.py gpt2 --out $OUT_DIR --runs $WORK --timeout 120"
  "shakespeare_char|160|$PYTHON benchmarks/gpu_check.py char --out $OUT_DIR --runs $WORK --timeout 150"
)

if (( DRY )); then
  echo "# gpu_check dry run: logs to $OUT_DIR, GPTLAB_DATA_DIR=${GPTLAB_DATA_DIR:-unset}"
  for s in "${STAGES[@]}"; do
    IFS='|' read -r name limit cmd <<< "$s"
    echo "$name: timeout $limit $cmd"
    if [[ $name == gpt2 || $name == shakespeare_char ]]; then
      echo "$name:   runs $($cmd --dry-run)"
    fi
  done
  exit 0
fi

run_stages() {
local start=$SECONDS failed=() s name limit cmd t0 rc
for s in "${STAGES[@]}"; do
  IFS='|' read -r name limit cmd <<< "$s"
  t0=$SECONDS
  if [[ $name == gpu_tests ]]; then
    timeout "$limit" $cmd > "$OUT_DIR/pytest.log" 2>&1
    rc=$?
    "$PYTHON" benchmarks/gpu_check.py tests "$OUT_DIR/pytest.log" "$rc" --seconds $((SECONDS - t0))
  else
    timeout "$limit" $cmd
    rc=$?
  fi
  if (( rc != 0 )); then
    failed+=("\"$name\"")
    if (( rc == 124 )) && [[ $name != gpu_tests ]]; then
      printf '{"stage": "%s", "ok": false, "ended": "timeout after %s s"}\n' "$name" "$limit"
    fi
  fi
done
for s in gpt2 char; do
  if [[ -f "$WORK/${s}_run/metrics.jsonl" ]]; then
    cp "$WORK/${s}_run/metrics.jsonl" "$OUT_DIR/${s}_metrics.jsonl"
  fi
done
printf '{"stage": "summary", "ok": %s, "failed": [%s], "seconds": %d, "logs": "%s"}\n' \
  "$([[ ${#failed[@]} -eq 0 ]] && echo true || echo false)" "$(IFS=,; echo "${failed[*]:-}")" \
  $((SECONDS - start)) "$OUT_DIR"
(( ${#failed[@]} == 0 ))
}

run_stages | tee "$OUT_DIR/results.jsonl"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"

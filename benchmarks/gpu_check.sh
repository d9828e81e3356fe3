#!/usr/bin/env bash
# GPU check of the real-VLM path and of the book: builds tiny hub-layout checkpoints (sharded bf16 safetensors,
# chat_template.json, preprocessor_config.json; LLaVA also with a Llama SentencePiece tokenizer), then on CUDA
#   1. benchmarks/bench_memory.py per model: every notebook step's time and peak torch.cuda.max_memory_allocated
#      next to hf.estimate_memory, at the full profile's batch size (256);
#   2. the notebooks that take `model` (02, 03, 04) on each model with -p device cuda: the smoke profile's sizes
#      (the organism side stays smoke-sized) plus the full profile's batch_size, timed, into book/executed/.
# Prints one table per part. Without a CUDA device it runs nothing and exits 2 with a message;
# --dry-run prints the plan (and builds nothing) anywhere.
# --book runs instead
#   3. the cold quick book on the GPU machine (README "Performance", bar <= 4 min on 16 cores and one GPU):
#      benchmarks/bench_book.py --profile quick -p device cuda, one worker per core, every organism, encoder and
#      insert trained on the GPU, then the warm rebuild; per-notebook and per-checkpoint times.
# --all runs everything in one device call, in the order that loses least if the call runs out of time:
#   0. a preflight: the smoke profile of every notebook on cuda; on a failure it stops there (exit 3), so a
#      device bug costs a short call, not a whole one (PRE_STOP=0 goes on: a session's last call);
#   1. and 2. as above, part 2's models in parallel, each in its own copy of the book sources;
#   3. the cold quick book with the time left of TOTAL_S (default 560) seconds; bench_book.py --log streams it,
#      so a build stopped at its limit still shows what it trained and ran, and its executed notebooks come back
#      as executed.tgz.
#   Each part runs under a time limit (PRE_S 150, VLM_S 120 seconds; SIGINT, then KILL 15 s on); the logs go to
#   $LOGDIR (default: the device call's $OUT, else /tmp/spatialkit-gpu-logs).
#
# On the GPU machine the repository's .venv does not exist (it cannot travel): its python3 has torch and
# transformers but no Jupyter kernel stack. Prepare that here first, `bash benchmarks/gpu_wheels.sh` (writes .whl/),
# and name ".whl" in the device call's carry; this script then installs it into /tmp/site, registers the kernel
# papermill runs ("python3") and uses python3 with the repository on PYTHONPATH.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--book | --all]
#   env: PY (python; default .venv/bin/python, else python3), BATCH (256), DEVICE (cuda; cpu rehearses the steps
#        on a machine without a GPU and measures nothing), BOOK_DEVICE (the book's device, default DEVICE: cpu
#        times the book on the GPU machine's cores alone), and for --all TOTAL_S, PRE_S, PRE_STOP, VLM_S, LOGDIR,
#        SKIP_VLM (1: no parts 1 and 2, the book gets their time)
set -euo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda}
BOOK_DEVICE=${BOOK_DEVICE:-$DEVICE}
DRY=0
BOOK=0
ALL=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --book) BOOK=1 ;;
    --all) ALL=1 ;;
    *) echo "gpu_check: unknown option '$arg' (allowed: --dry-run, --book, --all)" >&2; exit 2 ;;
  esac
done
if [[ $BOOK == 1 && $ALL == 1 ]]; then
  echo "gpu_check: --book and --all exclude each other (--all includes the book)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1

if [[ -d .whl && $DRY == 0 ]]; then  # the kernel stack carried as wheels (benchmarks/gpu_wheels.sh)
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: .whl/ holds no wheels; run 'bash benchmarks/gpu_wheels.sh' first (it writes them)" >&2
    exit 2
  fi
  SITE=/tmp/spatialkit-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -m ipykernel install --prefix /tmp/spatialkit-jupyter --name python3 >/dev/null
  export JUPYTER_PATH=/tmp/spatialkit-jupyter/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}
  echo "gpu_check: $(ls .whl/*.whl | wc -l) carried wheels installed into $SITE;" \
       "python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
fi

if [[ $DEVICE == cuda && $DRY == 0 ]] &&
   ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False with $PY); nothing was built or run." >&2
  echo "gpu_check: run it on a GPU machine, or pass --dry-run to print the plan." >&2
  exit 2
fi

run() {  # print, then execute unless dry
  echo "+ $*"
  [[ $DRY == 1 ]] || "$@"
}

logged() {  # logged LOG SECONDS CMD...: CMD under a time limit (SIGINT, which stops the suite's workers and
  # kernels cleanly, then KILL 15 s on), its output shown and kept in $LOGDIR/LOG; returns CMD's status
  local log=$1 seconds=$2; shift 2
  echo "+ timeout $seconds $* (log: $log)"
  [[ $DRY == 1 ]] && return 0
  set +e
  timeout -s INT -k 15 "$seconds" "$@" 2>&1 | tee "$LOGDIR/$log"
  local status=${PIPESTATUS[0]}
  set -e
  return "$status"
}

book_copy() {  # a copy of what `spatialkit run` reads (bench_book's list), for a run that must not share
  # book/executed with another
  "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import bench_book; \
bench_book.copy_sources(Path(sys.argv[1]))" "$1"
}

all_book() {  # --all's part 3: the cold quick book with the time left of TOTAL_S
  book_s=$(( TOTAL_S - ($(date +%s) - START) - 15 ))
  (( book_s >= 60 )) || book_s=60
  echo "== 3. the quick book cold on $BOOK_DEVICE ($(nproc) cores, limit $book_s s)"
  executed=/tmp/spatialkit-gpu-exec
  [[ $DRY == 1 ]] || executed=$(mktemp -d -t spatialkit-gpu-exec-XXXX)
  start=$(date +%s)
  logged book.log "$book_s" "$PY" benchmarks/bench_book.py --profile quick --skip-speedup --run-only --scenes 50 \
    -p device "$BOOK_DEVICE" --log "$LOGDIR/book_stream.log" --keep-executed "$executed/executed" \
    || echo "gpu_check: the quick book stopped (status $?) after $(( $(date +%s) - start )) s (book_stream.log)"
  if [[ $DRY == 0 && -d $executed/executed ]]; then tar czf "$LOGDIR/executed.tgz" -C "$executed" executed; fi
}

if [[ $BOOK == 1 ]]; then
  echo "== 3. the quick book cold on $BOOK_DEVICE ($(nproc) cores)"
  [[ $DRY == 1 ]] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  book=(--profile quick --skip-speedup -p device "$BOOK_DEVICE")
  # without jupyter-book (not carried) it times `spatialkit run`: training and execution, no HTML build
  "$PY" -c "import jupyter_book" 2>/dev/null || book+=(--run-only)
  run "$PY" benchmarks/bench_book.py "${book[@]}"
  [[ $DRY == 1 ]] && echo "gpu_check: dry run, nothing executed"
  exit 0
fi

if [[ $ALL == 1 ]]; then
  LOGDIR=${LOGDIR:-${OUT:-/tmp/spatialkit-gpu-logs}}
  TOTAL_S=${TOTAL_S:-560}; PRE_S=${PRE_S:-150}; VLM_S=${VLM_S:-120}
  if [[ $DRY == 0 ]]; then
    mkdir -p "$LOGDIR"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  fi
  echo "== 0. preflight: every notebook, smoke profile, on $DEVICE (limit $PRE_S s)"
  pre=/tmp/spatialkit-gpu-pre
  [[ $DRY == 1 ]] || { pre=$(mktemp -d -t spatialkit-gpu-pre-XXXX); book_copy "$pre/root"; }
  start=$(date +%s)
  if ! SPATIALKIT_ROOT=$pre/root SPATIALKIT_CACHE=$pre/cache logged preflight.log "$PRE_S" \
      "$PY" -m spatialkit run --profile smoke -p device "$DEVICE"; then
    if [[ ${PRE_STOP:-1} == 1 ]]; then
      echo "gpu_check: the preflight failed after $(( $(date +%s) - start )) s (preflight.log); nothing else ran" >&2
      exit 3
    fi
    echo "gpu_check: the preflight failed after $(( $(date +%s) - start )) s (preflight.log); going on (PRE_STOP=0)"
  else
    echo "gpu_check: preflight done in $(( $(date +%s) - start )) s"
  fi
  if [[ ${SKIP_VLM:-0} == 1 ]]; then
    echo "== 1. and 2. skipped (SKIP_VLM=1)"
    all_book
    echo "gpu_check: --all done in $(( $(date +%s) - START )) s"
    exit 0
  fi
fi

if [[ $DRY == 1 ]]; then WORK=${WORK:-/tmp/spatialkit-gpu-check}; else WORK=${WORK:-$(mktemp -d -t spatialkit-gpu-check-XXXX)}; fi
MODELS=(qwen2_vl:default qwen2_5_vl:default qwen3_vl:default llava:default llava:sentencepiece)
NOTEBOOKS=(02_semantic_loudness 03_attention_allocation 04_adaptvis)

pids=()
for spec in "${MODELS[@]}"; do  # the tiny checkpoints, built side by side
  family=${spec%%:*}; tok=${spec##*:}
  run "$PY" -c "from spatialkit.testing import hf_tiny; hf_tiny.save_hub_layout('$family', '$WORK/$family-$tok', tokenizer='$tok')" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed build stops the check here

echo "== 1. notebook steps on $DEVICE (batch $BATCH): time and peak memory"
args=()
for spec in "${MODELS[@]}"; do args+=(--model "$WORK/${spec%%:*}-${spec##*:}"); done
if [[ $ALL == 1 ]]; then
  logged memory.log "$VLM_S" "$PY" benchmarks/bench_memory.py --device "$DEVICE" --dtype bfloat16 \
    --batch-size "$BATCH" "${args[@]}" || echo "gpu_check: bench_memory stopped (status $?)"
else
  run "$PY" benchmarks/bench_memory.py --device "$DEVICE" --dtype bfloat16 --batch-size "$BATCH" "${args[@]}"
fi

echo "== 2. notebooks that take model, on $DEVICE"
printf '%-24s %-58s %-7s %6s\n' model notebook status time
if [[ $ALL == 1 ]]; then  # every model at once, each in its own copy of the book (one checkpoint store)
  pids=()
  for spec in "${MODELS[@]}"; do
    name="${spec%%:*}-${spec##*:}"
    [[ $DRY == 1 ]] || book_copy "$WORK/root-$name"
    ( start=$(date +%s); status=ok
      SPATIALKIT_ROOT=$WORK/root-$name SPATIALKIT_CACHE=$WORK/cache LOGDIR=$WORK logged "vlm-$name.log" "$VLM_S" \
        "$PY" -m spatialkit run --profile smoke --only "${NOTEBOOKS[@]}" --force -p model "$WORK/$name" \
        -p device "$DEVICE" -p batch_size "$BATCH" > /dev/null || status=FAILED
      [[ $DRY == 1 ]] && status=planned
      printf '%-24s %-58s %-7s %5ss\n' "$spec" "${NOTEBOOKS[*]}" "$status" "$(( $(date +%s) - start ))" ) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  if [[ $DRY == 0 ]]; then  # one file back for the five (a device call returns at most 8)
    for log in "$WORK"/vlm-*.log; do echo "=== $log"; cat "$log"; done > "$LOGDIR/vlm.log"
    grep -hE "^\[[0-9]+/[0-9]+\]|Error" "$WORK"/vlm-*.log | head -60 || true
  fi

  all_book
  echo "gpu_check: --all done in $(( $(date +%s) - START )) s"
  [[ $DRY == 1 ]] && echo "gpu_check: dry run, nothing executed (work folder would be $WORK)"
  exit 0
fi

results=()
for spec in "${MODELS[@]}"; do
  folder="$WORK/${spec%%:*}-${spec##*:}"
  for nb in "${NOTEBOOKS[@]}"; do
    extra=()
    [[ $nb != 02_semantic_loudness ]] && extra=(-p batch_size "$BATCH")
    start=$(date +%s)
    status=ok; [[ $DRY == 1 ]] && status=planned
    run "$PY" -m spatialkit run --profile smoke --only "$nb" --force -p model "$folder" -p device "$DEVICE" \
      "${extra[@]}" || status=FAILED
    results+=("$(printf '%-24s %-58s %-7s %5ss' "${spec}" "$nb" "$status" "$(( $(date +%s) - start ))")")
  done
done
printf '%s\n' "${results[@]}"
[[ $DRY == 1 ]] && echo "gpu_check: dry run, nothing executed (work folder would be $WORK)"
exit 0

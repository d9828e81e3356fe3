#!/usr/bin/env bash
# GPU check of the real-VLM path: builds tiny hub-layout checkpoints (sharded bf16 safetensors, chat_template.json,
# preprocessor_config.json; LLaVA also with a Llama SentencePiece tokenizer), then on CUDA
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
# Run the default parts and --book as two device calls (each is meant to fit one 10-minute call).
#
# On the GPU machine the repository's .venv does not exist (it cannot travel): its python3 has torch and
# transformers but no Jupyter kernel stack. Prepare that here first, `bash benchmarks/gpu_wheels.sh` (writes .whl/),
# and name ".whl" in the device call's carry; this script then installs it into /tmp/site, registers the kernel
# papermill runs ("python3") and uses python3 with the repository on PYTHONPATH.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--book]   # env: PY (python, default .venv/bin/python, else python3),
#                                                       #      BATCH (256)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
BATCH=${BATCH:-256}
DRY=0
BOOK=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --book) BOOK=1 ;;
    *) echo "gpu_check: unknown option '$arg' (allowed: --dry-run, --book)" >&2; exit 2 ;;
  esac
done
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
  echo "gpu_check: $(ls .whl/*.whl | wc -l) carried wheels installed into $SITE; python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  if [[ $DRY == 0 ]]; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False with $PY); nothing was built or run." >&2
    echo "gpu_check: run it on a GPU machine, or pass --dry-run to print the plan." >&2
    exit 2
  fi
fi

run() {  # print, then execute unless dry
  echo "+ $*"
  [[ $DRY == 1 ]] || "$@"
}

if [[ $BOOK == 1 ]]; then
  echo "== 3. the quick book cold on cuda ($(nproc) cores)"
  [[ $DRY == 1 ]] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  book=(--profile quick --skip-speedup -p device cuda)
  # without jupyter-book (not carried) it times `spatialkit run`: training and execution, no HTML build
  "$PY" -c "import jupyter_book" 2>/dev/null || book+=(--run-only)
  run "$PY" benchmarks/bench_book.py "${book[@]}"
  [[ $DRY == 1 ]] && echo "gpu_check: dry run, nothing executed"
  exit 0
fi

if [[ $DRY == 1 ]]; then WORK=${WORK:-/tmp/spatialkit-gpu-check}; else WORK=${WORK:-$(mktemp -d -t spatialkit-gpu-check-XXXX)}; fi
MODELS=(qwen2_vl:default qwen2_5_vl:default qwen3_vl:default llava:default llava:sentencepiece)
NOTEBOOKS=(02_semantic_loudness 03_attention_allocation 04_adaptvis)

for spec in "${MODELS[@]}"; do
  family=${spec%%:*}; tok=${spec##*:}
  run "$PY" -c "from spatialkit.testing import hf_tiny; hf_tiny.save_hub_layout('$family', '$WORK/$family-$tok', tokenizer='$tok')"
done

echo "== 1. notebook steps on cuda (batch $BATCH): time and peak memory"
args=()
for spec in "${MODELS[@]}"; do args+=(--model "$WORK/${spec%%:*}-${spec##*:}"); done
run "$PY" benchmarks/bench_memory.py --device cuda --dtype bfloat16 --batch-size "$BATCH" "${args[@]}"

echo "== 2. notebooks that take model, on cuda"
results=()
for spec in "${MODELS[@]}"; do
  folder="$WORK/${spec%%:*}-${spec##*:}"
  for nb in "${NOTEBOOKS[@]}"; do
    extra=()
    [[ $nb != 02_semantic_loudness ]] && extra=(-p batch_size "$BATCH")
    start=$(date +%s)
    status=ok; [[ $DRY == 1 ]] && status=planned
    run "$PY" -m spatialkit run --profile smoke --only "$nb" --force -p model "$folder" -p device cuda "${extra[@]}" \
      || status=FAILED
    results+=("$(printf '%-28s %-26s %-7s %5ss' "${spec}" "$nb" "$status" "$(( $(date +%s) - start ))")")
  done
done
printf '%-28s %-26s %-7s %6s\n' model notebook status time
printf '%s\n' "${results[@]}"
[[ $DRY == 1 ]] && echo "gpu_check: dry run, nothing executed (work folder would be $WORK)"
exit 0

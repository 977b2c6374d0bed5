#!/usr/bin/env bash
# Main job: pretrain the 'mini' PanGu-alpha on the embedded People's Daily corpus
# as a real 2-process tensor-parallel (mp2) fleet job on this CPU, then load the
# consolidated model in one process for validation perplexity and a generated sample.
#
#   pip install -e . && bash tools/main_job.sh
#
# Steps: prepare data if missing -> launch 2-process training
# (configs/pretrain/mini_cpu_mp2.yaml; checkpoints, VisualDL logs, final_model/)
# -> perplexity of runs/mini_cpu_mp2/final_model -> `pangu generate` sample.
# Environment: CONFIG (default configs/pretrain/mini_cpu_mp2.yaml), NPROC (2),
# STEPS (override train.max_steps), PROMPT.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="${CONFIG:-configs/pretrain/mini_cpu_mp2.yaml}"
NPROC="${NPROC:-2}"
DATA_DIR="data/peoples_daily"
PROMPT="${PROMPT:-中国人民}"
RUN_DIR="$(python -c "import yaml,sys; print(yaml.safe_load(open('$CONFIG'))['train']['output_dir'])")"
EXTRA=()
if [[ -n "${STEPS:-}" ]]; then EXTRA+=(--set "train.max_steps=${STEPS}"); fi

# CPU math-library set-up (MKL_DEBUG_CPU_TYPE on AMD only, threads = cores / local processes) is
# decided per machine by paddle_pangu/runtime.py at the start of every pangu / tools/*.py process.
export FLAGS_call_stack_level=2

start=$(date +%s)
stamp() { echo "[main_job +$(( $(date +%s) - start ))s] $*"; }

if [[ ! -f "$DATA_DIR/manifest.json" ]]; then
    stamp "preparing data: builtin:peoples-daily -> $DATA_DIR"
    pangu prepare-data --input builtin:peoples-daily --output "$DATA_DIR"
else
    stamp "data present: $DATA_DIR"
fi

stamp "training: $NPROC processes, $CONFIG (fresh run in $RUN_DIR)"
rm -rf "$RUN_DIR"
python -m paddle.distributed.launch --nproc_per_node "$NPROC" --log_dir "$RUN_DIR/launch_logs" \
    tools/train.py --config "$CONFIG" "${EXTRA[@]}" \
    || { echo "training failed; rank logs:"; tail -n 30 "$RUN_DIR"/launch_logs/workerlog.*; exit 1; }
grep -h -E "step [0-9]+/|eval step|final model" "$RUN_DIR/launch_logs/workerlog.0" | tail -n 8

stamp "consolidated model: $RUN_DIR/final_model ($(ls "$RUN_DIR/final_model" | tr '\n' ' '))"
stamp "checkpoints: $(ls "$RUN_DIR/checkpoints" | tr '\n' ' '); VisualDL: visualdl --logdir $RUN_DIR/visualdl"
python -c "
import json
rows = [json.loads(l) for l in open('$RUN_DIR/metrics.jsonl')]
train = [r for r in rows if r['type'] == 'train']
first, last = sum(r['loss'] for r in train[:10]) / 10, sum(r['loss'] for r in train[-10:]) / 10
print(f'training loss: first 10 steps {first:.3f} -> last 10 steps {last:.3f}')
"

stamp "validation perplexity of the consolidated model (one process):"
pangu train --config "$CONFIG" "${EXTRA[@]}" --evaluate "$RUN_DIR/final_model"

stamp "sample from the trained model:"
pangu generate --model "$RUN_DIR/final_model" --prompt "$PROMPT" --max-new-tokens 40 --do-sample --top-k 20 \
    --temperature 0.8 --seed 1

stamp "done in $(( $(date +%s) - start ))s"

#!/usr/bin/env bash
# Main job: the whole product end to end on this machine's CPU, in a few minutes.
#
#   pip install -e . && bash tools/main_job.sh [--verbose]
#
# 1. prepare the embedded People's Daily 1998 corpus -> data/peoples_daily (skipped when present)
# 2. pretrain the 'mini' PanGu-alpha as a real 2-process tensor-parallel (mp2) fleet job:
#    pangu train --config configs/pretrain/mini_cpu_mp2.yaml --nproc 2 (checkpoints, VisualDL, final_model/)
# 3. evaluate the consolidated model: held-out perplexity and the few-shot `reviews` task (0 and 4 shots)
# 4. export prefill/decode graphs and generate through the Paddle Inference predictor
# 5. a summary: artefacts, numbers, next commands
#
# Quiet by default (one line per step, rank 0's training lines; the launcher's dump goes to
# runs/mini_cpu_mp2/launch_logs/, each step's full output to runs/mini_cpu_mp2/main_job_logs/ and is
# printed when the step fails). --verbose shows everything.
# Environment: CONFIG (default configs/pretrain/mini_cpu_mp2.yaml), NPROC (2), STEPS (override
# train.max_steps), LIMIT (reviews examples, 32), PROMPT.
set -euo pipefail
cd "$(dirname "$0")/.."

VERBOSE=0
for arg in "$@"; do
    case "$arg" in
        --verbose|-v) VERBOSE=1 ;;
        -h|--help) sed -n 2,17p "$0"; exit 0 ;;
        *) echo "main_job.sh: unknown argument $arg (only --verbose)" >&2; exit 2 ;;
    esac
done

CONFIG="${CONFIG:-configs/pretrain/mini_cpu_mp2.yaml}"
NPROC="${NPROC:-2}"
LIMIT="${LIMIT:-32}"
DATA_DIR="data/peoples_daily"
PROMPT="${PROMPT:-中国人民}"
RUN_DIR="$(python -c "import yaml; print(yaml.safe_load(open('$CONFIG'))['train']['output_dir'])")"
FINAL="$RUN_DIR/final_model"
EXPORT="$RUN_DIR/export"
EVAL_JSON="$RUN_DIR/eval/results.json"
LOGS="$RUN_DIR/main_job_logs"
EXTRA=()
if [[ -n "${STEPS:-}" ]]; then EXTRA+=(--set "train.max_steps=${STEPS}"); fi
VFLAG=()
if [[ "$VERBOSE" == 1 ]]; then VFLAG+=(--verbose); fi

# CPU math-library set-up (MKL_DEBUG_CPU_TYPE on AMD only, threads = cores / local processes) is
# decided per machine by paddle_pangu/runtime.py at the start of every pangu process.
export FLAGS_call_stack_level=2

start=$(date +%s)
stamp() { echo "[main_job +$(( $(date +%s) - start ))s] $*"; }
# run NAME CMD...: quiet -> output to $LOGS/NAME.log, its tail printed on failure; verbose -> console
run() {
    local name="$1"; shift
    if [[ "$VERBOSE" == 1 ]]; then "$@"; return; fi
    mkdir -p "$LOGS"
    if ! "$@" > "$LOGS/$name.log" 2>&1; then
        echo "main_job: step '$name' failed: $*" >&2
        tail -n 40 "$LOGS/$name.log" >&2
        echo "main_job: full output: $LOGS/$name.log" >&2
        exit 1
    fi
}

if [[ ! -f "$DATA_DIR/manifest.json" ]]; then
    stamp "1/4 preparing data: builtin:peoples-daily -> $DATA_DIR"
    mkdir -p "$LOGS"
    run prepare-data pangu prepare-data --input builtin:peoples-daily --output "$DATA_DIR" --no-progress
else
    stamp "1/4 data present: $DATA_DIR"
fi

stamp "2/4 training: pangu train --config $CONFIG --nproc $NPROC (fresh run in $RUN_DIR)"
rm -rf "$RUN_DIR"
# quiet: rank 0's lines on the console, the launcher's output in $RUN_DIR/launch_logs/, tails on failure
pangu train --config "$CONFIG" --nproc "$NPROC" "${EXTRA[@]}" "${VFLAG[@]}"
mkdir -p "$LOGS" "$(dirname "$EVAL_JSON")"

stamp "3/4 evaluating $FINAL: perplexity on $DATA_DIR's test split, reviews 0/4-shot on $LIMIT examples"
run evaluate pangu evaluate --model "$FINAL" --perplexity "$DATA_DIR" --ppl-samples 16 \
    --task reviews --shots 0 4 --limit "$LIMIT" --output "$EVAL_JSON"
[[ "$VERBOSE" == 1 ]] || grep -a -E '^(perplexity:|reviews +[0-9])' "$LOGS/evaluate.log" || true

stamp "4/4 exporting to $EXPORT and generating through Paddle Inference"
run export pangu export --model "$FINAL" --output "$EXPORT"
pangu generate --model "$EXPORT" --prompt "$PROMPT" --max-new-tokens 40 --do-sample --top-k 20 \
    --temperature 0.8 --seed 1 --no-stream > "$LOGS/generate.txt" 2> "$LOGS/generate.log" \
    || { cat "$LOGS/generate.log" >&2; exit 1; }
[[ "$VERBOSE" == 1 ]] && cat "$LOGS/generate.log"

wall=$(( $(date +%s) - start ))
# CPU seconds of every finished child (user + sys), from bash's `times`
times > "$LOGS/times.txt"  # in this shell (a pipeline's subshell would see no children)
cpu=$(python -c "
import re, sys
vals = [float(m) * 60 + float(s) for m, s in re.findall(r'(\d+)m([\d.]+)s', open(sys.argv[1]).read())]
print(f'{sum(vals):.0f}')" "$LOGS/times.txt")
python - "$RUN_DIR" "$EVAL_JSON" "$LOGS/generate.txt" "$DATA_DIR" "$EXPORT" "$wall" "$cpu" "$PROMPT" <<'EOF'
import json, os, sys
run_dir, eval_json, gen, data_dir, export, wall, cpu, prompt = sys.argv[1:]
rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
train = [r for r in rows if r.get("type") == "train"]
evals = [r for r in rows if r.get("type") == "eval"]
results = json.load(open(eval_json, encoding="utf-8"))
ppl = next((r for r in results if r["task"] == "perplexity"), {})
shots = [r for r in results if r["task"] != "perplexity"]
text = open(gen, encoding="utf-8").read().strip().replace("\n", " ")
load = os.getloadavg()[0]
print("\n==== main job summary " + "=" * 50)
print(f"time       {wall} s wall, {cpu} CPU-s (user+sys), load average now {load:.1f} on {os.cpu_count()} cores")
print(f"data       {data_dir}/  (manifest.json, .bin/.idx)")
print(f"training   {run_dir}/  steps {train[-1]['step']}, loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}"
      + (f", validation perplexity {evals[-1]['ppl']:.1f} (step {evals[-1]['step']})" if evals else ""))
print(f"           final_model/ (consolidated), checkpoints/, visualdl/, launch_logs/, metrics.jsonl")
if ppl:
    print(f"perplexity {ppl['perplexity']:.1f} on {ppl['tokens']} held-out test tokens ({eval_json})")
for r in shots:
    print(f"reviews    {r['shots']}-shot accuracy {r['accuracy']:.3f} on {r['n']} examples (chance {r.get('chance', 0.5):.2f})")
print(f"export     {export}/  (prefill/decode graphs for Paddle Inference)")
print(f"generated  {prompt} -> {text[:120]}")
print("next       pangu serve --model " + export + " --port 8000          # OpenAI API + web page")
print("           pangu finetune --model_name_or_path " + run_dir + "/final_model --train_file builtin:instructions \\")
print("               --output_dir runs/ft_mini --max_steps 50          # PaddleNLP Trainer, built-in data")
print("           pangu evaluate --model " + run_dir + "/final_model --task paper --data-dir DIR --shots 0 1  # docs/EVALUATION.md")
print("           bash tools/main_job.sh --verbose                       # everything the launcher says")
EOF

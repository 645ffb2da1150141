#!/usr/bin/env bash
# End-to-end acceptance on a real small verifier (SmolLM2-135M-Instruct, built offline by the kit):
# verifier's own replies (kit regen/train600) -> spectool data prepare -> hidden states (local
# verifier, cached; reused when valid) -> spectool train (EAGLE-3 and DFlash) for a fixed CPU budget
# -> acceptance length on the first N validation prompts, measured three ways:
#   1. in-process speculative decoding (`spectool eval`, lossless check on, fp32),
#   2. vLLM (CPU build, .vllm-venv) serving the verifier with the draft as speculative model:
#      `spectool eval --vllm-endpoint` diffs vLLM's Prometheus spec-decode counters (+ tokens/s
#      against a server without speculation),
#   3. simulated from held-out accuracies (`spectool eval --simulated-data`).
# Results: $WORK/results/{eval,vllm}-<kind>.json; summary lines on stdout.
#
#   bash bench/quality/run.sh [WORK_DIR]
# Knobs (env):
#   data:   KIT, VERIFIER, SAMPLES (600), MAX_SEQ_LEN (512), GENERATE (1)
#   train:  EPOCHS (2), STEPS (empty = whole epochs), TOTAL_SEQ_LEN (2048), DRAFT_VOCAB (8192),
#           OPTIMIZER (adamw), SCHEDULER (cosine), LR_EAGLE3 (1e-3), LR_DFLASH (3e-3), TTT_STEPS (3),
#           EAGLE3_LAYERS (1), DFLASH_BLOCK (4), DFLASH_LAYERS (1), MAX_ANCHORS (256), SEED (0)
#   eval:   KINDS ("eagle3 dflash"), EVAL_N (20), NEW_TOKENS (64), INPROCESS (1), SIMULATED (1)
#   vLLM:   VLLM (1; 0 skips), VLLM_PYTHON (.vllm-venv/bin/python), VLLM_DTYPE (bfloat16),
#           VLLM_PORT (8210), BASELINE (1: also a server without speculation, for tokens/s)
#   SPECTOOL (.venv/bin/spectool)
# A trained draft is reused when $WORK/<kind>-<params>/DONE exists (delete it to retrain).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-$ROOT/.cache/bench-quality}"
KIT="${KIT:-/work/shared/kit}"
VERIFIER="${VERIFIER:-$ROOT/.cache/verifier-smollm2}"
SPECTOOL="${SPECTOOL:-$ROOT/.venv/bin/spectool}"
SAMPLES="${SAMPLES:-600}"; MAX_SEQ_LEN="${MAX_SEQ_LEN:-512}"; GENERATE="${GENERATE:-1}"
EPOCHS="${EPOCHS:-2}"; STEPS="${STEPS:-}"; TOTAL_SEQ_LEN="${TOTAL_SEQ_LEN:-2048}"; DRAFT_VOCAB="${DRAFT_VOCAB:-8192}"
OPTIMIZER="${OPTIMIZER:-adamw}"; SCHEDULER="${SCHEDULER:-cosine}"; SEED="${SEED:-0}"
LR_EAGLE3="${LR_EAGLE3:-1e-3}"; LR_DFLASH="${LR_DFLASH:-3e-3}"; TTT_STEPS="${TTT_STEPS:-3}"; EAGLE3_LAYERS="${EAGLE3_LAYERS:-1}"
DFLASH_BLOCK="${DFLASH_BLOCK:-4}"; DFLASH_LAYERS="${DFLASH_LAYERS:-1}"; MAX_ANCHORS="${MAX_ANCHORS:-256}"
KINDS="${KINDS:-eagle3 dflash}"; EVAL_N="${EVAL_N:-20}"; NEW_TOKENS="${NEW_TOKENS:-64}"
INPROCESS="${INPROCESS:-1}"; SIMULATED="${SIMULATED:-1}"
VLLM="${VLLM:-1}"; VLLM_PYTHON="${VLLM_PYTHON:-$ROOT/.vllm-venv/bin/python}"; VLLM_DTYPE="${VLLM_DTYPE:-bfloat16}"
VLLM_PORT="${VLLM_PORT:-8210}"; BASELINE="${BASELINE:-1}"
VSFX=""; [ "$VLLM_DTYPE" = bfloat16 ] || VSFX="-$VLLM_DTYPE"  # vLLM result files: vllm-<kind>[-<dtype>].json
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
mkdir -p "$WORK/results" "$WORK/logs"
t() { local s=$SECONDS; "$@"; echo "[quality] $(basename "$1") ${2:-} took $((SECONDS - s)) s" >&2; }

[ -f "$VERIFIER/model.safetensors" ] || t bash "$KIT/make-verifier.sh" "$VERIFIER"

if [ ! -f "$WORK/data/meta.json" ]; then
  t "$SPECTOOL" data prepare --verifier-name-or-path "$VERIFIER" --data "$KIT/regen/train600.regen.jsonl" \
    --output "$WORK/data" --max-seq-len "$MAX_SEQ_LEN" --max-samples "$SAMPLES" --overwrite
fi
# Keeps every valid cached file; generates only missing/invalid ones (600 samples: ~16 min on 2 cores).
# GENERATE=0 skips this check (training runs with --on-missing raise either way).
[ "$GENERATE" = 1 ] && t "$SPECTOOL" data generate --verifier-name-or-path "$VERIFIER" --data-path "$WORK/data" --generator local

# ------------------------------------------------------------------------ vLLM servers
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 -- "-$SERVER_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT
# serve LOG [vllm args...]: the verifier on vLLM's CPU build (own process group), waits for /health.
serve() {
  local log=$1; shift
  VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false \
    setsid "$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server --model "$VERIFIER" --host 127.0.0.1 --port "$VLLM_PORT" \
    --dtype "$VLLM_DTYPE" --enforce-eager --max-model-len 1024 --seed 0 "$@" > "$log" 2>&1 &
  SERVER_PID=$!
  local s=$SECONDS
  until curl -sf "http://127.0.0.1:$VLLM_PORT/health" > /dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null || [ $((SECONDS - s)) -gt 600 ]; then
      echo "[quality] vLLM did not start; log tail:" >&2; tail -n 40 "$log" >&2; return 1
    fi
    sleep 1
  done
  echo "[quality] vLLM ready in $((SECONDS - s)) s ($log)" >&2
}

summary() {  # summary KIND: one line per result file
  python3 - "$WORK/results" "$1" "$VSFX" <<'EOF'
import json, os, sys
d, kind, vsfx = sys.argv[1:]
r3 = lambda xs: [round(x, 3) for x in xs]
p = os.path.join(d, f"eval-{kind}.json")
if os.path.exists(p):
    r = json.load(open(p))
    print(kind, "in-process AL", round(r["acceptance_length"], 3), "per-pos", r3(r["per_position_acceptance"]),
          "tokens", r["new_tokens"], "steps", r["steps"], "hist", r["accepted_histogram"], "ties", r["near_ties"],
          *(["simulated AL", round(r["simulated"]["acceptance_length"], 3), "full_acc", r3(r["simulated"]["full_acc"])] if r.get("simulated") else []))
p = os.path.join(d, f"vllm-{kind}{vsfx}.json")
if os.path.exists(p):
    r = json.load(open(p))
    print(kind, f"vLLM{vsfx} AL", round(r["acceptance_length"], 3), "per-pos", r3(r["per_position_acceptance"]),
          "drafts", int(r["drafts"]), "accepted", int(r["accepted_tokens"]), "tokens", r["spec"]["completion_tokens"],
          "tok/s", round(r["spec"]["tokens_per_s"], 1),
          *(["baseline tok/s", round(r["baseline"]["tokens_per_s"], 1), "speed-up", round(r["speedup"], 2)] if "baseline" in r else []))
EOF
}

# ------------------------------------------------------------------------ per draft
for KIND in $KINDS; do
  if [ "$KIND" = dflash ]; then
    LR=$LR_DFLASH; K=$((DFLASH_BLOCK - 1)); METHOD=dflash
    EXTRA=(--block-size "$DFLASH_BLOCK" --max-anchors "$MAX_ANCHORS" --num-layers "$DFLASH_LAYERS")
    TAG="dflash-b$DFLASH_BLOCK-l$DFLASH_LAYERS"
  else
    LR=$LR_EAGLE3; K=$TTT_STEPS; METHOD=eagle3
    EXTRA=(--ttt-steps "$TTT_STEPS" --num-layers "$EAGLE3_LAYERS")
    TAG="eagle3-ttt$TTT_STEPS-l$EAGLE3_LAYERS"
  fi
  [ -n "$STEPS" ] && EXTRA+=(--max-steps "$STEPS")
  SAVE="$WORK/$TAG-e$EPOCHS${STEPS:+-s$STEPS}-$OPTIMIZER-lr$LR-$SCHEDULER-seed$SEED"
  if [ ! -f "$SAVE/DONE" ]; then
    # --on-missing raise: the cached hidden states must all be there; nothing is regenerated silently.
    t "$SPECTOOL" train --verifier-name-or-path "$VERIFIER" --speculator-type "$KIND" --data-path "$WORK/data" \
      --save-path "$SAVE" --draft-vocab-size "$DRAFT_VOCAB" --total-seq-len "$TOTAL_SEQ_LEN" --epochs "$EPOCHS" \
      --optimizer "$OPTIMIZER" --lr "$LR" --scheduler-type "$SCHEDULER" --draft-attn-impl sdpa --num-workers 0 \
      --on-missing raise --seed "$SEED" "${EXTRA[@]}" > "$WORK/logs/train-$KIND.log" 2>&1 \
      || { echo "[quality] training $KIND failed; log tail:" >&2; tail -n 30 "$WORK/logs/train-$KIND.log" >&2; exit 1; }
    grep -E "^epoch [0-9]+/[0-9]+ step [0-9]+/" "$WORK/logs/train-$KIND.log" | tail -n 1
    touch "$SAVE/DONE"
  fi
  CKPT="$SAVE/latest"

  if [ "$INPROCESS" = 1 ]; then
    SIM=(); [ "$SIMULATED" = 1 ] && SIM=(--simulated-data "$WORK/data")
    t "$SPECTOOL" eval "$CKPT" --verifier-name-or-path "$VERIFIER" --data "$KIT/prompts/val.jsonl" \
      --limit "$EVAL_N" --max-new-tokens "$NEW_TOKENS" --num-speculative-tokens "$K" "${SIM[@]}" --json > "$WORK/results/eval-$KIND.json"
  fi

  if [ "$VLLM" = 1 ]; then
    serve "$WORK/logs/vllm-$KIND.log" \
      --speculative_config "{\"model\": \"$CKPT\", \"method\": \"$METHOD\", \"num_speculative_tokens\": $K}"
    t "$SPECTOOL" eval "$CKPT" --vllm-endpoint "http://127.0.0.1:$VLLM_PORT/v1" --data "$KIT/prompts/val.jsonl" \
      --limit "$EVAL_N" --max-new-tokens "$NEW_TOKENS" --json > "$WORK/results/vllm-$KIND$VSFX.json"
    stop_server
  fi
  summary "$KIND"
done

if [ "$VLLM" = 1 ] && [ "$BASELINE" = 1 ]; then
  # tokens/s without speculation on the same prompts (same server settings), and the speed-up.
  serve "$WORK/logs/vllm-baseline.log"
  BASE_URL="http://127.0.0.1:$VLLM_PORT/v1"
  "$ROOT/.venv/bin/python" - "$WORK/results" "$BASE_URL" "$KIT/prompts/val.jsonl" "$EVAL_N" "$NEW_TOKENS" "$ROOT/src" "$VSFX" <<'EOF'
import json, os, sys
d, url, data, n, new, src, vsfx = sys.argv[1:]
sys.path.insert(0, src)
from spectool.eval import read_prompts, run_completions
base = run_completions(url, read_prompts(data, int(n)), int(new))
json.dump(base, open(os.path.join(d, f"vllm-baseline{vsfx}.json"), "w"), indent=1)
print("baseline (no speculation) tok/s", round(base["tokens_per_s"], 1), "tokens", base["completion_tokens"])
for name in sorted(os.listdir(d)):
    if name.startswith("vllm-") and name.endswith(f"{vsfx}.json") and not name.startswith("vllm-baseline") and (vsfx or name.count("-") == 1):
        r = json.load(open(os.path.join(d, name)))
        print(name[5:-5], "vLLM tok/s", round(r["spec"]["tokens_per_s"], 1), "speed-up vs baseline", round(r["spec"]["tokens_per_s"] / base["tokens_per_s"], 2))
EOF
  stop_server
fi

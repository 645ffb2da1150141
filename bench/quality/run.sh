#!/usr/bin/env bash
# End-to-end acceptance on a real small verifier (SmolLM2-135M-Instruct, built offline by the kit):
# verifier's own replies (kit regen/train600) -> spectool data prepare -> hidden states (local
# verifier) -> spectool train (EAGLE-3, then DFlash) for a fixed small CPU budget -> spectool eval
# on the first N validation prompts (lossless check on) + simulated AL on the held-out split.
#
#   bash bench/quality/run.sh [WORK_DIR]
# Knobs (env): KIT, VERIFIER, SAMPLES (600), MAX_SEQ_LEN (512), STEPS (200), TOTAL_SEQ_LEN (2048),
#   DRAFT_VOCAB (8192), EVAL_N (20), NEW_TOKENS (128), KINDS ("eagle3 dflash"), SPECTOOL (.venv/bin/spectool)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-$ROOT/.cache/bench-quality}"
KIT="${KIT:-/work/shared/kit}"
VERIFIER="${VERIFIER:-$ROOT/.cache/verifier-smollm2}"
SPECTOOL="${SPECTOOL:-$ROOT/.venv/bin/spectool}"
SAMPLES="${SAMPLES:-600}"; MAX_SEQ_LEN="${MAX_SEQ_LEN:-512}"; STEPS="${STEPS:-200}"
TOTAL_SEQ_LEN="${TOTAL_SEQ_LEN:-2048}"; DRAFT_VOCAB="${DRAFT_VOCAB:-8192}"
EVAL_N="${EVAL_N:-20}"; NEW_TOKENS="${NEW_TOKENS:-128}"; KINDS="${KINDS:-eagle3 dflash}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
mkdir -p "$WORK"
t() { local s=$SECONDS; "$@"; echo "[quality] $(basename "$1") ${2:-} took $((SECONDS - s)) s" >&2; }

[ -f "$VERIFIER/model.safetensors" ] || t bash "$KIT/make-verifier.sh" "$VERIFIER"

if [ ! -f "$WORK/data/meta.json" ]; then
  t "$SPECTOOL" data prepare --verifier-name-or-path "$VERIFIER" --data "$KIT/regen/train600.regen.jsonl" \
    --output "$WORK/data" --max-seq-len "$MAX_SEQ_LEN" --max-samples "$SAMPLES" --overwrite
fi
t "$SPECTOOL" data generate --verifier-name-or-path "$VERIFIER" --data-path "$WORK/data" --generator local

for KIND in $KINDS; do
  EXTRA=()
  [ "$KIND" = dflash ] && EXTRA=(--block-size 4 --max-anchors 256)
  t "$SPECTOOL" train --verifier-name-or-path "$VERIFIER" --speculator-type "$KIND" --data-path "$WORK/data" \
    --save-path "$WORK/$KIND" --draft-vocab-size "$DRAFT_VOCAB" --total-seq-len "$TOTAL_SEQ_LEN" \
    --max-steps "$STEPS" --epochs 100 --lr 1e-3 --draft-attn-impl sdpa --num-workers 0 --on-missing raise \
    --checkpoint-freq 1000 --seed 0 "${EXTRA[@]}"
  t "$SPECTOOL" eval "$WORK/$KIND/latest" --verifier-name-or-path "$VERIFIER" --data "$KIT/prompts/val.jsonl" \
    --limit "$EVAL_N" --max-new-tokens "$NEW_TOKENS" --simulated-data "$WORK/data" --json > "$WORK/eval-$KIND.json"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'AL', round(r['acceptance_length'],3), 'per-pos', [round(x,3) for x in r['per_position_acceptance']], 'simulated', round(r['simulated']['acceptance_length'],3), 'tokens', r['new_tokens'], 'steps', r['steps'], 'ties', r['near_ties'])" "$WORK/eval-$KIND.json" "$KIND"
done

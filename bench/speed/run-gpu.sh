#!/usr/bin/env bash
# One-shot GPU variant of bench/speed/bench.py (for a lent device): flex attention on both sides,
# bf16 autocast on both sides, FLOPs of each draft step and its MFU against the device peak.
# Results: $OUT/bench-speed-gpu.jsonl and .md (or ./bench-speed-gpu.*).
#
#   bash bench/speed/run-gpu.sh
# Knobs (env): PYTHON (an interpreter that already holds torch (CUDA), transformers and
# speculators 0.9.0 plus spectool; default: make .speculators-venv with setup.sh, which needs
# pip to reach PyPI), VERIFIER (a built kit verifier; default: built by the kit, which needs
# PyPI too), SEQ_LENS (2048,8192), DRAFT_VOCABS (8192,32000), KINDS (eagle3,dflash),
# PEAK_TFLOPS (0 = a measured bf16 matmul; H200 dense bf16 is 989), STEPS (10), WARMUP (3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUTDIR="${OUT:-$ROOT}"
VERIFIER="${VERIFIER:-$ROOT/.cache/verifier-smollm2}"
[ -f "$VERIFIER/model.safetensors" ] || bash /work/shared/kit/make-verifier.sh "$VERIFIER"
if [ -z "${PYTHON:-}" ]; then
  bash "$ROOT/bench/speed/setup.sh"  # on a GPU host torch==2.13.0 from PyPI is the CUDA build
  "$ROOT/.speculators-venv/bin/pip" install -q triton 2>/dev/null || true  # speculators' fused loss
  PYTHON="$ROOT/.speculators-venv/bin/python"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUTDIR/gpu.txt"
# Each timing line also carries cuda_host_syncs_in_step (CUDA sync debug mode over one step).
"$PYTHON" "$ROOT/bench/speed/bench.py" --verifier "$VERIFIER" --device cuda --attn simple_flex_attention --bf16 --flops \
  --peak-tflops "${PEAK_TFLOPS:-0}" --kinds "${KINDS:-eagle3,dflash}" --seq-lens "${SEQ_LENS:-2048,8192}" \
  --draft-vocabs "${DRAFT_VOCABS:-8192,32000}" --batches kit,random --warmup "${WARMUP:-3}" --steps "${STEPS:-10}" \
  --threads 4 --workdir "$OUTDIR/bench-speed-work" --out "$OUTDIR/bench-speed-gpu.jsonl"

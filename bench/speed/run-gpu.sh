#!/usr/bin/env bash
# One-shot GPU variant (for a lent device): set up the speculators venv there, build the
# kit verifier, run the same comparison on CUDA with flex attention on both sides.
# Results: $OUT/bench-speed-gpu.jsonl (or ./bench-speed-gpu.jsonl).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUTDIR="${OUT:-$ROOT}"
VERIFIER="${VERIFIER:-$ROOT/.cache/verifier-smollm2}"
[ -f "$VERIFIER/model.safetensors" ] || bash /work/shared/kit/make-verifier.sh "$VERIFIER"
# On a GPU host torch==2.13.0 from PyPI is the CUDA build; speculators then uses its fused (Triton) loss.
bash "$ROOT/bench/speed/setup.sh"
"$ROOT/.speculators-venv/bin/pip" install -q triton 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUTDIR/gpu.txt"
"$ROOT/.speculators-venv/bin/python" "$ROOT/bench/speed/bench_eagle3.py" --verifier "$VERIFIER" --device cuda \
  --attn simple_flex_attention --seq-lens 2048,4096,8192 --draft-vocabs 8192,32000 --warmup 3 --steps 10 \
  --out "$OUTDIR/bench-speed-gpu.jsonl"

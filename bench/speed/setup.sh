#!/usr/bin/env bash
# The reference trainer `speculators` (PyPI) in its own virtual environment, never in ours.
# torch==2.13.0 first so pip takes the local CPU wheel instead of a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${SPECULATORS_VENV:-$ROOT/.speculators-venv}"
SPECULATORS_VERSION="${SPECULATORS_VERSION:-0.9.0}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "speculators==$SPECULATORS_VERSION" "torch==2.13.0"
# speculators pulls torchvision built for another torch ("operator torchvision::nms does not
# exist" when transformers imports it); the trainer does not need it.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# spectool itself (without deps beyond what speculators already pulled) so the bench script
# can build our drafts in the same interpreter and time both sides in one process.
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for p in ("torch", "transformers", "speculators", "spectool"):
    print(p, md.version(p))
PY

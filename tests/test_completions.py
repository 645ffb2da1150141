"""The committed shell completion scripts equal what the app generates now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "scripts" / "gen_completions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_current(shell):
    gen = _generator()
    committed = (ROOT / "completions" / gen.SHELLS[shell]).read_text()
    assert committed == gen.render(shell), "completions are stale: run `python scripts/gen_completions.py`"
    assert "spectool" in committed


def test_bash_completion_completes_commands_and_choices():
    import os
    import shutil
    import subprocess

    exe = shutil.which("spectool") or str(Path(os.sys.executable).parent / "spectool")

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_SPECTOOL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        return subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60).stdout.split()

    assert {"init", "inspect"} <= set(complete("spectool in"))
    assert {"eagle3", "dflash"} <= set(complete("spectool init --speculator-type "))

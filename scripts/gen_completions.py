"""Write completions/spectool.{bash,zsh,fish} from the Typer app (tests fail when stale)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHELLS = {"bash": "spectool.bash", "zsh": "spectool.zsh", "fish": "spectool.fish"}
OUT = Path(__file__).resolve().parent.parent / "completions"


def render(shell: str) -> str:
    from typer.testing import CliRunner

    from spectool.cli.app import app

    os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    result = CliRunner().invoke(app, ["--show-completion", shell], prog_name="spectool")
    if result.exit_code != 0:
        raise SystemExit(f"completion for {shell} failed: {result.output}")
    return result.output


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for shell, name in SHELLS.items():
        (OUT / name).write_text(render(shell))
        print(f"wrote {OUT / name}", file=sys.stderr)


if __name__ == "__main__":
    main()

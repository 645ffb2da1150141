"""The output directory of ``data prepare``: replace a dataset only when asked, nothing else."""

from __future__ import annotations

from pathlib import Path

from spectool.data.chat.read import ChatDataError
from spectool.data.dataset import TOKEN_FREQ_FILE, is_processed_dataset

# Files derived from a dataset that --overwrite replaced: stale, so removed after the new
# one is written (mappings derived automatically are keyed by content and need not go).
_STALE_FILES = ("d2t.npy", "t2d.npy", "vocab.json")


def check_output_dir(output: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing dataset unless asked; never delete what isn't ours."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ChatDataError(f"{output} exists and is not a directory: choose another --output")
    if not output.is_dir():
        return
    holds = is_processed_dataset(output) or (output / "meta.json").is_file() or (output / TOKEN_FREQ_FILE).is_file()
    if holds and not overwrite:
        raise ChatDataError(f"{output} already holds a dataset: pass --overwrite to replace it, or choose another --output")
    if holds and (output / "hidden_states").is_dir() and any((output / "hidden_states").iterdir()):
        raise ChatDataError(
            f"{output}/hidden_states holds a hidden-state cache of the old dataset that would not match the new one: "
            "delete it or choose another --output"
        )


def remove_stale_derived(output: Path) -> None:
    """After ``--overwrite`` wrote a new dataset: remove the files derived from the old one."""
    for name in _STALE_FILES:
        (output / name).unlink(missing_ok=True)

"""The output directory of ``data prepare``: replace a dataset only when asked, nothing else."""

from __future__ import annotations

from pathlib import Path

from spectool.data.chat.read import ChatDataError
from spectool.data.dataset import is_processed_dataset

TOKEN_FREQ_FILE = "token_freq.pt"
# Files that belong to a processed dataset (or are derived from one) and may be replaced
# by --overwrite.
_DATASET_FILES = ("meta.json", "input_ids.npy", "loss_mask.npy", "offsets.npy", TOKEN_FREQ_FILE, "d2t.npy", "t2d.npy")


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


def remove_old_dataset(output: Path) -> None:
    """Remove the files of the dataset ``--overwrite`` replaces (meta.json first: no half dataset looks whole)."""
    for name in _DATASET_FILES:
        (output / name).unlink(missing_ok=True)

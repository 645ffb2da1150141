"""Simulated acceptance length from held-out accuracies, with the training engine's own
validation pieces (split, packed loader, forward_train metrics)."""

from __future__ import annotations

from pathlib import Path

from spectool.eval.report import SIMULATED_CONVENTION, EvalError


def simulated_acceptance(
    draft_dir: str | Path,
    data_dir: str | Path,
    verifier_name_or_path: str | None = None,
    *,
    val_ratio: float = 0.05,
    total_seq_len: int = 8192,
    seed: int = 0,
) -> dict:
    """Held-out simulated acceptance length of a draft on a processed data dir whose hidden
    states are cached (``DATA/hidden_states``; missing files are skipped, never generated).

    Reuses the training engine's validation pieces: the same split (the tail ``val_ratio``),
    packed loader, ``forward_train`` metrics (full_acc_k) and ``with_acceptance``
    (1 + sum_k full_acc_k), so the number is the one ``spectool train`` logs."""
    import torch

    from spectool.config import RunConfig
    from spectool.data.dataset import ProcessedDataset
    from spectool.data.hidden_states.factory import build_source
    from spectool.data.loader import PackedLoader
    from spectool.engine.distributed import DistEnv
    from spectool.engine.metrics import MetricSum
    from spectool.models import load_draft, plugin_for, read_config
    from spectool.verifier import load_verifier_info, read_verifier_tensors

    spec = read_config(draft_dir)
    plugin = plugin_for(spec)
    verifier = verifier_name_or_path or spec.verifier_name_or_path
    cfg = RunConfig()
    cfg.model.verifier_name_or_path = verifier
    cfg.data.data_path = str(data_dir)
    cfg.data.on_missing = "skip"
    cfg.data.total_seq_len = total_seq_len
    dataset = ProcessedDataset(Path(data_dir))
    _, val_idx = dataset.split(val_ratio)
    if not val_idx:
        raise EvalError(f"{data_dir}: no held-out samples (val ratio {val_ratio}): use a larger dataset")
    draft = load_draft(draft_dir, spec)
    draft.attach_verifier(read_verifier_tensors(load_verifier_info(verifier)), copy_embed_and_head=False)
    draft.eval()
    source = build_source(cfg, dataset, aux_layer_ids=spec.aux_layer_ids)
    loader = PackedLoader(
        dataset, val_idx, lambda: source, total_seq_len, seed=seed,
        sample_transform=plugin.sample_transform,
        noise_std=0.0, num_workers=0, dtype=torch.float32,
    )
    acc = MetricSum()
    batches = 0
    with torch.no_grad():
        for b, batch in enumerate(loader.iterate(0)):
            gen = torch.Generator().manual_seed(seed + b)
            _, metrics = draft.forward_train(batch, **plugin.eval_kwargs(spec, generator=gen))
            acc.add(metrics)
            batches += 1
    if not batches:
        raise EvalError(f"{data_dir}: none of the {len(val_idx)} held-out samples has cached hidden states: generate them first")
    values = acc.values(DistEnv())
    full = [values[f"full_acc_{k}"] for k in range(len([k for k in values if k.startswith("full_acc_")]))]
    return {
        "convention": SIMULATED_CONVENTION,
        "acceptance_length": values["acceptance_length"],
        "full_acc": full,
        "held_out_samples": len(val_idx),
        "batches": batches,
    }

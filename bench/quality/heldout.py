"""Score several drafts with one evaluator on the same held-out rows: spectool's validation.

``python bench/quality/heldout.py [--seed S] RUN_YAML NAME=CHECKPOINT [NAME=CHECKPOINT ...] > out.json``

RUN_YAML is the ``run.yaml`` a spectool training wrote (one per draft under bench/quality/run.sh):
it fixes the data, the held-out split, the vocabulary and the draft type. Each CHECKPOINT (a
spectool checkpoint, or a speculators one made loadable by ``speculators_train.py
with-embeddings``) is loaded as saved and scored by the trainer's own ``validate``: the same
packed rows, the same DFlash anchors, the same metric definitions and the KL loss for every
draft. Rows and anchors come from ``--seed`` (default 0), not from the seed a draft was trained
with, so drafts of different seeds are scored on the same rows too. Why: the two trainers' own
validation numbers are not comparable, and 20 served prompts give an acceptance length with a
standard error of about 0.02, while the held-out rows hold ~4,000 supervised tokens.
"""

from __future__ import annotations

import json
import sys
import tempfile


def main(argv: list[str]) -> None:
    import torch

    from spectool.config import RunConfig
    from spectool.engine import distributed as D
    from spectool.engine.trainer import Trainer
    from spectool.models import load_draft

    seed = 0
    if argv[:1] == ["--seed"] and len(argv) > 1:
        seed, argv = int(argv[1]), argv[2:]
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        sys.exit(__doc__.split("\n\n")[1].strip())
    run_yaml, drafts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    cfg = RunConfig.load_yaml(run_yaml)
    cfg.training.seed = seed
    cfg.loss.loss = "kl"  # one yardstick, whatever --loss a draft trained with
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        cfg.training.save_path = scratch  # the trainer writes its run files here, nothing else
        cfg.training.no_resume_from_checkpoint = True
        trainer = Trainer(cfg, D.init_distributed())
        reference = trainer.model
        for name, path in drafts.items():
            # The draft as saved (its own architecture flags, e.g. speculators' norm_before_fc),
            # with the run's verifier norm and lm_head rows (never saved) for the targets.
            draft = load_draft(path)
            if type(draft) is not type(reference):
                sys.exit(f"{path} is a {type(draft).__name__}, the run trains a {type(reference).__name__}")
            if not torch.equal(draft.target_ids(), reference.target_ids().cpu()):
                sys.exit(f"{path} has another draft vocabulary than the run: its targets would be other rows")
            for buffer_name, buf in reference.named_buffers():
                if buffer_name.startswith("verifier_"):
                    draft.get_buffer(buffer_name).copy_(buf)
            trainer.model = draft.to(next(reference.parameters()).device)
            with torch.no_grad():
                results[name] = {k: round(v, 5) for k, v in trainer.validate(0).items()}
            print(name, results[name], file=sys.stderr)
    json.dump({"run_yaml": run_yaml, "seed": seed, "drafts": drafts, "heldout": results}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])

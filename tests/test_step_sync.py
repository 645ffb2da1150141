"""The training step leaves metrics on the device: no device-to-host copy inside it."""

from __future__ import annotations

import traceback

import pytest
import torch

from test_train import config, train_data  # noqa: F401  (the session fixture)

SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_train_step_issues_no_device_to_host_copy(kind, tiny_llama, train_data, tmp_path, monkeypatch):  # noqa: F811
    from spectool.engine import distributed as D
    from spectool.engine.trainer import Trainer

    trainer = Trainer(config(tiny_llama, train_data, tmp_path / "save", kind, grad_clip=1.0), D.DistEnv())
    trainer.model.train()
    batches = list(trainer.train_loader.iterate(0))[:2]
    calls: list[str] = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            # torch.optim reads its step counter, a host tensor by design (no sync on a GPU).
            if "/torch/optim/" not in caller.filename:
                calls.append(f"{name}: {caller.filename}:{caller.lineno} {caller.line}")
            return real(self, *args, **kwargs)

        return wrapper

    with monkeypatch.context() as m:
        for name in SYNCING:
            m.setattr(torch.Tensor, name, counting(name))
        steps = [trainer._train_step(batch, 0, b) for b, batch in enumerate(batches)]
    assert calls == []
    # The metrics it returned stay on the device, and reduce to real numbers when logged.
    from spectool.engine.metrics import reduce_steps

    assert all(pair.device == trainer.env.device for m in steps for pair in m.values())
    values, (bad,) = reduce_steps(steps, trainer.env, [trainer.guard.first_bad >= 0])
    assert bad == 0 and all(0.0 <= v["full_acc_0"] <= 1.0 and v["loss"] > 0 for v in values)


def test_non_finite_loss_stops_before_a_checkpoint(tiny_llama, train_data, tmp_path):  # noqa: F811
    from spectool.engine import distributed as D
    from spectool.engine.finite import NonFiniteError
    from spectool.engine.trainer import Trainer

    trainer = Trainer(config(tiny_llama, train_data, tmp_path / "save", lr=1e-3), D.DistEnv())
    with torch.no_grad():
        trainer.model.fc.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite"):
        trainer.run()
    assert not any(p.name.startswith("epoch") for p in (tmp_path / "save").iterdir())


def test_float16_is_accepted_and_scales_only_on_cuda(tiny_llama, train_data, tmp_path):  # noqa: F811
    """float16 is a valid --hidden-states-dtype: a GradScaler on CUDA, plain fp32 steps on CPU."""
    from spectool.engine import distributed as D
    from spectool.engine.trainer import Trainer

    cfg = config(tiny_llama, train_data, tmp_path / "save", hidden_states_dtype="float16")
    cfg.validate()
    trainer = Trainer(cfg, D.DistEnv())
    assert trainer.scaler.is_enabled() == (trainer.env.device.type == "cuda")
    batch = next(iter(trainer.train_loader.iterate(0)))
    before = trainer.model.fc.weight.detach().clone()
    metrics = trainer._train_step(batch, 0, 0)
    assert torch.isfinite(metrics["loss"]).all() and not torch.equal(before, trainer.model.fc.weight)

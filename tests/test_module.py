"""The LightningModule learns, and LRA's learning-rate schedules have LRA's values."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lra.models.classifier import build_classifier
from lra.module import LRAClassifier
from lra.schedules import cosine, rsqrt, schedule

OPTIM = dict(
    lr=3e-3, betas=[0.9, 0.98], eps=1e-9, weight_decay=0.0,
    schedule="constant", warmup_steps=1, max_steps=120,
)  # fmt: skip


def test_rsqrt_warms_up_linearly_then_decays_as_one_over_sqrt_step() -> None:
    f = rsqrt(warmup=100)
    assert f(50) == pytest.approx(0.5 / 10)
    assert f(100) == pytest.approx(1 / 10)
    assert f(400) == pytest.approx(1 / 20)


def test_cosine_warms_up_then_anneals_to_zero() -> None:
    f = cosine(warmup=10, total=110)
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(500) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        schedule("linear", 10, 100)


def toy_batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Label = the first token's parity: learnable by any mixer in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 9, (n, 8), generator=g)
    rows = [{"input_ids": x[i], "label": x[i, 0] % 2} for i in range(n)]
    return rows


def test_training_moves_accuracy_from_chance_to_near_perfect() -> None:
    pl.seed_everything(0)
    encoder = dict(
        max_len=8, d_model=32, num_layers=1, num_heads=2, qkv_dim=32, mlp_dim=64,
        dropout=0.0, attn_dropout=0.0, pos_emb="learned", pooling="cls",
    )  # fmt: skip
    net = build_classifier(encoder, {"name": "baseline"}, vocab_size=10, num_classes=2)
    module = LRAClassifier(net, num_classes=2, optim=OPTIM)
    train = DataLoader(toy_batches(512, 0), batch_size=32, shuffle=True)
    val = DataLoader(toy_batches(256, 1), batch_size=64)
    trainer = pl.Trainer(
        max_steps=120, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    before = trainer.validate(module, val, verbose=False)[0]["val/acc"]
    trainer.fit(module, train, val)
    after = trainer.validate(module, val, verbose=False)[0]["val/acc"]
    assert before < 0.7 and after > 0.95
    assert module.val_acc_best.compute().item() >= after - 1e-6


def test_first_update_runs_at_step_ones_rate_not_at_lr_zero() -> None:
    net = torch.nn.Linear(2, 2)
    module = LRAClassifier(
        net, num_classes=2, optim={**OPTIM, "schedule": "rsqrt", "warmup_steps": 4}
    )
    module.trainer = pl.Trainer(max_steps=10, logger=False)  # configure_optimizers reads max_steps
    opt = module.configure_optimizers()
    lr = opt["optimizer"].param_groups[0]["lr"]
    assert lr == pytest.approx(3e-3 * (1 / 4) / math.sqrt(4))


def test_the_first_non_finite_loss_is_kept_on_the_device_and_named_when_checked() -> None:
    """On a GPU the check waits for the device, so it runs at logging intervals and before any
    save; what it reports is still the first bad step and its loss."""
    from types import SimpleNamespace

    from lra.module import NonFiniteLossError

    encoder = dict(
        max_len=8, d_model=8, num_layers=1, num_heads=1, qkv_dim=8, mlp_dim=8,
        dropout=0.0, attn_dropout=0.0, pos_emb="none", pooling="mean",
    )  # fmt: skip
    module = LRAClassifier(build_classifier(encoder, {"name": "baseline"}, 10, 2), 2, OPTIM)
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    module._trainer = SimpleNamespace(strategy=strategy, global_step=0)
    for step, loss in enumerate([1.0, 0.5, math.inf, math.nan, 0.3]):
        module._trainer.global_step = step  # global_step + 1 is the step this loss belongs to
        module.note_non_finite(torch.tensor(loss))
        if step == 1:
            module.check_finite()  # nothing yet
    with pytest.raises(NonFiniteLossError, match=r"\(here inf; any rank stops all\) at step 3:"):
        module.check_finite()

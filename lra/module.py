"""The LightningModule: cross-entropy, accuracy metrics, AdamW with LRA's schedules."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from lra.schedules import schedule


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run stops, and says at which step."""


class LRAClassifier(pl.LightningModule):
    """Trains any `net(batch) -> logits`; `optim` is the task's optimisation block."""

    def __init__(self, net: nn.Module, num_classes: int, optim: dict[str, Any]) -> None:
        super().__init__()
        # The run logs its whole resolved config itself; the checkpoint keeps these for reloading.
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.optim = optim
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        return F.cross_entropy(logits, batch["label"]), logits.argmax(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, preds = self._step(batch)
        # every rank stops together, whichever diverged (one rank alone would hang the others)
        if self.trainer.strategy.reduce_boolean_decision(bool(~torch.isfinite(loss)), all=False):
            raise NonFiniteLossError(
                f"non-finite training loss (here {loss.item()}; any rank stops all) at step "
                f"{self.global_step + 1}: lower "
                f"task.optim.lr (now {self.optim['lr']:g}), set task.optim.grad_clip, or check the "
                "data"
            )
        self.train_acc(preds, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, preds = self._step(batch)
        self.val_acc(preds, batch["label"])
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, preds = self._step(batch)
        self.test_acc(preds, batch["label"])
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        opt = torch.optim.AdamW(
            self.parameters(),
            lr=o["lr"],
            betas=tuple(o["betas"]),
            eps=o["eps"],
            weight_decay=o["weight_decay"],
        )
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else o["max_steps"]
        factor = schedule(o["schedule"], o["warmup_steps"], total)
        # LambdaLR's i is 0 at the first update. LRA's Flax loop evaluates its schedule at the
        # optimizer's step count before each update, from 0, so its first update runs at lr 0
        # (warm-up factor 0/warmup). Here update i runs at factor(i + 1): LRA's schedule one
        # update earlier, so no update is spent at lr 0.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: factor(i + 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

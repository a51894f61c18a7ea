"""The LightningModule: cross-entropy, accuracy metrics, AdamW with LRA's schedules.

The optimiser is `task.optim.optimizer`: adamw (the default; decoupled weight decay
`task.optim.weight_decay` on every parameter) or adam (torch.optim.Adam: Keras' Adam, where
weight_decay is an L2 penalty's gradient, coupled). A network may declare L2 groups of its own:
`net.decay_groups()` returns torch.optim param groups (`params`, `weight_decay`) for some of its
parameters (lra-igloo's IGLOO kernels: Keras' l2(c) is weight decay 2c); every other parameter
takes the task's weight_decay. Such groups are L2 penalties, so they need optimizer=adam.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from lra.schedules import schedule

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run stops, and says at which step."""


class LRAClassifier(pl.LightningModule):
    """Trains any `net(batch) -> logits`; `optim` is the task's optimisation block."""

    def __init__(
        self, net: nn.Module, num_classes: int, optim: dict[str, Any], compile: bool = False
    ) -> None:
        super().__init__()
        # The run logs its whole resolved config itself; the checkpoint keeps these for reloading.
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        # `compile`: the whole network under torch.compile; held outside the module tree, so the
        # weights (and checkpoints) stay under `net.` as without it
        object.__setattr__(self, "run_net", torch.compile(net) if compile else net)
        self.optim = optim
        # labels are checked by the readers; validating them here would wait for the device
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best
        # the first non-finite training loss (step, value), kept on the device: -1 while none
        self.register_buffer("first_bad", torch.tensor([-1.0, 0.0]), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_net(batch)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        return F.cross_entropy(logits, batch["label"]), logits.argmax(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, preds = self._step(batch)
        self.note_non_finite(loss.detach())
        # On CPU a check costs nothing; on a GPU it waits for the step, so it runs at logging
        # intervals and before anything is saved (check_finite: LastCheckpoint, validation, end).
        if (
            loss.device.type != "cuda"
            or (self.global_step + 1) % self.trainer.log_every_n_steps == 0
        ):
            self.check_finite()
        self.train_acc(preds, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, prog_bar=True)
        return loss

    def note_non_finite(self, loss: torch.Tensor) -> None:
        """Record the first non-finite loss and its step, on the device (no wait for it)."""
        first = (self.first_bad[0] < 0) & ~torch.isfinite(loss)
        here = torch.stack([torch.tensor(self.global_step + 1.0, device=loss.device), loss.float()])
        self.first_bad.copy_(torch.where(first, here, self.first_bad))

    def check_finite(self) -> None:
        """Raise NonFiniteLossError if any rank has seen a non-finite training loss; every rank
        stops together (one rank alone would hang the others)."""
        step, value = self.first_bad.tolist()
        if self.trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            here = f"here {value}" if step >= 0 else "on another rank"
            raise NonFiniteLossError(
                f"non-finite training loss ({here}; any rank stops all) at step "
                f"{int(step) if step >= 0 else f'{self.global_step} or before'}: lower "
                f"task.optim.lr (now {self.optim['lr']:g}), set task.optim.grad_clip, or check the "
                "data"
            )

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

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
        params = list(self.parameters())
        name = o.get("optimizer", "adamw")
        if name not in OPTIMIZERS:
            raise ValueError(f"task.optim.optimizer='{name}' is not one of {', '.join(OPTIMIZERS)}")
        opt = OPTIMIZERS[name](
            self.param_groups(params, name),
            lr=o["lr"],
            betas=tuple(o["betas"]),
            eps=o["eps"],
            weight_decay=o["weight_decay"],
            fused=all(p.is_cuda for p in params) or None,  # one kernel for all weights on a GPU
        )
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else o["max_steps"]
        factor = schedule(o["schedule"], o["warmup_steps"], total, o.get("decay_rate", 0.0))
        # LambdaLR's i is 0 at the first update. LRA's Flax loop evaluates its schedule at the
        # optimizer's step count before each update, from 0, so its first update runs at lr 0
        # (warm-up factor 0/warmup). Here update i runs at factor(i + 1): LRA's schedule one
        # update earlier, so no update is spent at lr 0.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: factor(i + 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def param_groups(self, params: list[nn.Parameter], optimizer: str) -> list[Any]:
        """`params` as they are, or, where the network declares L2 groups (`decay_groups`), those
        groups and one of every other parameter (which takes the task's weight_decay)."""
        declare = getattr(self.net, "decay_groups", None)
        groups = declare() if declare is not None else []
        if not groups:
            return params
        if optimizer != "adam":
            raise ValueError(
                f"{type(self.net).__name__} declares L2 penalties (decay_groups, e.g. "
                f"model.net.l2), which are coupled weight decay: set task.optim.optimizer=adam "
                f"(now {optimizer}), or model.net.l2=0"
            )
        grouped = {id(p) for g in groups for p in g["params"]}
        return [*groups, {"params": [p for p in params if id(p) not in grouped]}]

"""Callbacks the harness adds to Lightning's own."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from lra.models.encoder import PAD_ID


class TokenThroughput(pl.Callback):
    """Non-padding training tokens per second of training, over the whole fit."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
        self.tokens += sum(int((v != PAD_ID).sum()) for k, v in batch.items() if "input_ids" in k)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class StepSeed(pl.Callback):
    """Reseed torch before every training step from (seed, rank, step).

    Dropout masks then depend on where training is, not on how it got there: a run resumed from
    a checkpoint draws exactly the masks the uninterrupted run drew (validation, data-loader
    start-up and restarts all consume the global RNG differently).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        torch.manual_seed(
            (self.seed * 1_000_003 + trainer.global_rank) * 1_000_003 + trainer.global_step
        )

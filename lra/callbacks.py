"""Callbacks and the checkpoint writer the harness adds to Lightning's own."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from lra.cluster import Preempted
from lra.io import atomic_path
from lra.models.encoder import PAD_ID


class TokenThroughput(pl.Callback):
    """Non-padding training tokens per second of training (validation excluded), over the whole
    fit. Tokens are counted on the device and read once at the end, so no step waits for the host;
    the clock stops at each validation, where the device is waited for anyway."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None
        self.seconds = 0.0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        tokens = sum((v != PAD_ID).sum() for k, v in batch.items() if "input_ids" in k)
        self.count = tokens if self.count is None else self.count + tokens

    def _stop_clock(self, module: Any) -> None:
        if self._t0 is not None:
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def on_validation_start(self, trainer: pl.Trainer, module: Any) -> None:
        self._stop_clock(module)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        self._stop_clock(module)

    @property
    def tokens(self) -> int:
        return int(self.count) if self.count is not None else 0

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


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every n training steps, after every validation, and when a SLURM job is
    signalled (`lra.cluster`: it then stops the run with `Preempted`).

    - A step that a validation follows is saved after that validation, never before it: a run
      killed inside the validation then resumes from the step before and runs it again, where a
      save before it would resume past it and never validate there (Lightning's `save_last`
      saves both before and after).
    - The final step is saved (`test_checkpoint=last` tests it).
    - Nothing is saved at the last step of an epoch: what is due there is saved one step later.
      Lightning (2.6) resumes a checkpoint of an epoch's last step, or of its end, with the data
      order of the wrong epoch (measured: a resumed run's loss drifts from the uninterrupted
      one's), and resumes a checkpoint from inside an epoch exactly.

    It is the one place that knows when saving is safe, so the signals are acted on here; it runs
    after every other callback (Lightning moves checkpoint callbacks last)."""

    def __init__(
        self, dirpath: str | os.PathLike, every_n_train_steps: int, signals: Any = None
    ) -> None:
        super().__init__(
            dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps
        )
        self.signals = signals  # lra.cluster.SlurmSignals, or None
        self._due = False  # a save waits for a step that is not the last of its epoch

    def _signalled(self, trainer: pl.Trainer) -> int:
        return self.signals.agreed(trainer) if self.signals is not None else 0

    @staticmethod
    def _last_batch(trainer: pl.Trainer) -> bool:
        return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def save_now(self, trainer: pl.Trainer, module: Any) -> None:
        self._due = False
        if not self._should_skip_saving_checkpoint(trainer):
            getattr(module, "check_finite", lambda: None)()  # never save a diverged run
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any, **kw: Any) -> None:
        loop = trainer.fit_loop
        signum = self._signalled(trainer)
        if loop.epoch_loop._should_check_val_fx(loop._data_fetcher):
            if signum == signal.SIGTERM:  # no time for the validation: resume before it
                raise Preempted(signum, trainer.global_step, saved=False)
            return  # a validation runs next: saved in on_validation_end, once it has run
        n = self._every_n_train_steps
        final = 0 < trainer.max_steps <= trainer.global_step  # saved as a step: resumable exactly
        self._due |= final or (n > 0 and trainer.global_step % n == 0)
        if self._last_batch(trainer):
            return  # saved (and any signal acted on) at the next step
        if self._due or signum:
            self.save_now(trainer, module)
        if signum:
            # this step's metrics: Lightning logs them after this hook, which the stop skips
            trainer._logger_connector.update_train_step_metrics()
            raise Preempted(signum, trainer.global_step, saved=True)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        # last.ckpt holds the final weights (test_checkpoint=last). The final step is saved as a
        # step already, unless it was an epoch's last: then here, where a resume with more steps
        # would start the next epoch afresh.
        self.save_now(trainer, module)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kw: Any) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if fitting and self._signalled(trainer) == signal.SIGTERM:
            raise Preempted(signal.SIGTERM, trainer.global_step, saved=False)

    def on_validation_end(self, trainer: pl.Trainer, module: Any) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if fitting and self._last_batch(trainer):
            self._due = True  # saved (and any signal acted on) at the next step
            return
        self.save_now(trainer, module)
        if fitting and (signum := self._signalled(trainer)):
            raise Preempted(signum, trainer.global_step, saved=True)


class RunFacts(pl.Callback):
    """Stamps every checkpoint with the run it belongs to (task, model, parameter counts), so a
    checkpoint given to another run can be named in the error (`check_checkpoint`)."""

    KEY = "lra_run"

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts

    def on_save_checkpoint(self, trainer: pl.Trainer, module: Any, checkpoint: dict) -> None:
        checkpoint[self.KEY] = self.facts


def check_checkpoint(
    state: dict[str, Any], path: str, module: torch.nn.Module, facts: dict[str, Any]
) -> None:
    """Refuse, naming both, a checkpoint (`state`, loaded from `path`) whose weights are not this
    run's network's."""
    theirs = {k: tuple(v.shape) for k, v in state["state_dict"].items()}
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if theirs == ours:
        return
    them = state.get(RunFacts.KEY)
    what = (
        f"task={them['task']} model={them['model']}, {them['total']:,} parameters"
        if them
        else f"a network of {len(theirs)} tensors (a checkpoint without the harness's stamp)"
    )
    missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    reshaped = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
    raise ValueError(
        f"ckpt_path={path} holds another network: {what}, where this run is "
        f"task={facts['task']} model={facts['model']}, {facts['total']:,} parameters ("
        f"{len(missing)} tensors missing, e.g. {missing[:1]}; {len(unexpected)} "
        f"unexpected, e.g. {unexpected[:1]}; {len(reshaped)} of other shapes, e.g. {reshaped[:1]})."
        " Resume with the task, model and overrides the checkpoint was trained with"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on a local disk: the checkpoint is written to a
    temporary sibling, flushed to disk, then renamed onto its path, so a failed write (a full disk,
    a kill) leaves the previous file or none, never half of one. Remote URLs go through Lightning's
    own writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())

"""SLURM: who owns which signal in a job, and what a signalled job does.

In a SLURM job (SLURM_JOB_ID set), while `trainer.fit` runs, this module owns:

- SIGUSR2, sent by submitit (`--signal=USR2@signal_delay_s`) before the time limit, and on
  pre-emption with notice: at the next step `last.ckpt` is saved, the W&B run detached, and the
  job requeued (submitit's count of time-outs, `scontrol requeue`); the job exits.
- SIGUSR1 (`sbatch --signal=USR1@N`, Lightning's default warning): the same as SIGUSR2.
- SIGTERM, sent by `scontrol requeue`, pre-emption, `scancel` and the time limit itself: at the
  next step `last.ckpt` is saved and W&B detached; exit 143. SLURM requeues the job or does not.

A handler only notes the signal. The run acts at the next batch boundary, where saving is safe:
`LastCheckpoint` asks `SlurmSignals.agreed` after each training batch, each validation batch
and each validation. In a multi-process job the ranks agree first (an all-reduce), so every rank
saves the same step. A step with a validation due saves after it: after a warning, the
validation runs to its end. After SIGTERM (SLURM kills after KillWait, 30 s by default), the
validation is dropped and the run resumes from the previous `last.ckpt`. A requeued job resumes
by itself (`lra.job.requeued`): the same run directory, the same W&B run id.

Lightning's own SLURM handlers stay out of the way. `slurm_environment` turns its auto-requeue
off (it saved `hpc_ckpt_*.ckpt`, which no resume reads). The handlers Lightning and submitit
installed are put back when training ends, so a signal during the test phase reaches submitit:
it requeues, and the requeued job finds the finished fit and tests again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

log = logging.getLogger(__name__)

WARNINGS = (signal.SIGUSR1, signal.SIGUSR2)  # the time limit is near: save, requeue, exit
OWNED = (*WARNINGS, signal.SIGTERM)  # SIGTERM: save, exit; SLURM decides about the requeue
_RANK = {0: 0, signal.SIGUSR1: 1, signal.SIGUSR2: 1, signal.SIGTERM: 2}  # all-reduce: MAX


def slurm_environment(
    requeue_signal: str = "SIGUSR2", auto_requeue: bool = False
) -> SLURMEnvironment:
    """Lightning's SLURM environment, with its auto-requeue off by default: `SlurmSignals` owns
    the signals (Lightning's handler would save `hpc_ckpt_*.ckpt`, which no resume reads)."""
    return SLURMEnvironment(
        auto_requeue=auto_requeue, requeue_signal=signal.Signals[requeue_signal]
    )


def with_slurm_environment(plugins: list[Any]) -> list[Any]:
    """The trainer's plugins, with `slurm_environment()` where Lightning would detect SLURM and
    none is given (Lightning's own would have its auto-requeue on)."""
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        return [*plugins, slurm_environment()]
    return plugins


def slurm_job() -> str | None:
    """This SLURM job's id (`ARRAYJOB_TASK` for an array job), or None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def cap_threads() -> None:
    """A SLURM task computes on the CPUs it was given (SLURM_CPUS_PER_TASK): torch would start a
    thread on every core of the node, and tasks sharing a node would slow each other down many
    times over (measured: 3 steps/s for two tasks on two cores, against 40 for one)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and 0 < int(cpus) < torch.get_num_threads():
        torch.set_num_threads(int(cpus))


def slurm_facts() -> dict[str, Any] | None:
    """For results.json: the SLURM job, and how often it was started again (None outside)."""
    job = slurm_job()
    if job is None:
        return None
    return {"job_id": job, "restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}


class Preempted(BaseException):
    """Raised at a batch boundary after a SLURM job was signalled: the run stops there.
    A BaseException, so that no `except Exception` on the way mistakes it for a failure."""

    def __init__(self, signum: int, step: int, saved: bool) -> None:
        self.signum, self.step, self.saved = signal.Signals(signum), step, saved
        where = f"last.ckpt saved at step {step}" if saved else "resumes from the last last.ckpt"
        super().__init__(f"SLURM job {slurm_job()}: {self.signum.name}; {where}")

    @property
    def warning(self) -> bool:
        return self.signum in WARNINGS


_noted: list[int] = []  # the signals the job's handler noted since training started


def signalled() -> bool:
    """Has this SLURM job been signalled while it trains? (Then W&B's process may be gone.)"""
    return bool(_noted)


class SlurmSignals(pl.Callback):
    """The owner of SIGUSR1, SIGUSR2 and SIGTERM while a SLURM job trains (the table above).
    Outside SLURM it installs nothing, and Ctrl-C and SIGTERM behave as on any machine."""

    def __init__(self) -> None:
        self.received = 0  # the strongest signal noted so far: 0, a warning, or SIGTERM
        self._previous: dict[int, Any] = {}
        self.submitit: Any = None  # submitit's handler of the warning signal, if it started the job
        self.active = slurm_job() is not None

    def _note(self, signum: int, frame: Any) -> None:
        _noted.append(signum)
        if _RANK[signum] > _RANK[self.received]:
            self.received = signum

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        if not self.active or self._previous:
            return
        _noted.clear()
        for signum in OWNED:  # after Lightning registered its own, at the start of fit
            self._previous[signum] = signal.signal(signum, self._note)
        for signum in WARNINGS:
            handler = self._previous[signum]
            if getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
                self.submitit = handler
        log.info("SLURM job %s: SIGUSR1/SIGUSR2 save and requeue, SIGTERM saves and exits",
                 slurm_job())  # fmt: skip

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        self.restore()

    def on_exception(self, trainer: pl.Trainer, module: Any, exception: BaseException) -> None:
        self.restore()

    def agreed(self, trainer: pl.Trainer) -> int:
        """The signal every rank acts on now (0: none); the same on every rank."""
        if not self.active:
            return 0
        mine = _RANK[self.received]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([mine], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            mine = int(flag.item())
        if mine == 0:
            return 0
        if mine == _RANK[signal.SIGTERM]:
            return signal.SIGTERM
        return self.received if self.received in WARNINGS else signal.SIGUSR2


def requeue(signals: SlurmSignals, e: Preempted) -> None:
    """After a warning signal, once `last.ckpt` is saved and W&B detached: requeue this job.
    Under submitit its own handler does it (the count of time-outs, then `scontrol requeue`) and
    exits; it raises `UncompletedJobError` when the job has timed out too often. Otherwise
    `scontrol requeue` here, on rank 0. The caller exits."""
    if signals.submitit is not None:
        signals.submitit(int(e.signum), None)  # exits (SystemExit), or raises when out of requeues
        return
    if int(os.environ.get("SLURM_PROCID") or 0) != 0:
        return
    job = slurm_job()
    done = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"scontrol requeue {job} failed: {done.stderr.strip()}")
    log.info("SLURM job %s requeued", job)


# --- DDP worker processes of a local sweep ---------------------------------------------------
JOB_ENV = "LRA_DDP_JOB"  # the job a DDP worker process belongs to: its overrides and directory
_LIGHTNING_ARGS = ("hydra.run.dir=", "hydra.job.name=", "hydra.output_subdir=")


def note_job_for_workers(overrides: list[str], output_dir: str) -> None:
    """Before `trainer.fit` of a multirun job: Lightning starts each local DDP worker as
    `python -m lra.train <this process's argv> hydra.run.dir=...`, and that argv is the whole
    sweep (`-m`, `seed=0,1,2`): every worker would run the sweep again. The job's own overrides
    and directory go to the workers in their environment, for `worker_argv`."""
    os.environ[JOB_ENV] = json.dumps({"overrides": list(overrides), "dir": output_dir})


def worker_argv(argv: list[str]) -> list[str]:
    """A local DDP worker's command line (LOCAL_RANK > 0, started by Lightning from a multirun
    job): that one job's overrides in its run directory, not the sweep. Else `argv` as it is."""
    job = os.environ.get(JOB_ENV)
    if not job or os.environ.get("LOCAL_RANK", "0") == "0":
        return argv
    job = json.loads(job)
    kept = [a for a in argv[1:] if a.startswith(_LIGHTNING_ARGS[1:])]
    return [argv[0], *job["overrides"], f"hydra.run.dir={job['dir']}", *kept]


# what Lightning's DDP launcher sets in the environment of the process that starts the workers
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", JOB_ENV)


@contextmanager
def one_ddp_job() -> Iterator[None]:
    """One job of a local multirun: afterwards the process is as before it for the next job.
    Lightning's DDP launcher leaves LOCAL_RANK and the rest in the environment, and the next
    job then takes itself for a worker started by someone else and starts none: it waits for
    ranks that never come. The process group goes too."""
    saved = {key: os.environ.get(key) for key in DDP_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

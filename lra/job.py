"""One job of the harness, whatever it trains (`lra.train`'s fine-tuning, `lra.pretrain`'s
pretraining): where it runs, what it resumes, and the results.json of a job that did not finish.

`run_job(cfg, body)` runs `body(cfg, record)`, which fills `record` with what is known of the run
as it goes (run_dir, trainer, signals, ...); on an error or a signal, `record` becomes
results.json with the status and the reason.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lra.cluster import Preempted, requeue
from lra.config import LAST
from lra.console import print_summary
from lra.io import write_json
from lra.loggers import close_wandb, detach_wandb

log = logging.getLogger(__name__)

# what a finished run measures; null in the results.json of a run that did not finish
MEASURED = ("val_acc_best", "val_loss", "test_acc", "test_loss", "test_checkpoint", "tested",
            "test_majority_rate", "fit_seconds", "train_tokens_per_s")  # fmt: skip


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir`: Hydra's run directory under `python -m lra.train`, else as given."""
    try:
        return Path(cfg.paths.output_dir)
    except InterpolationResolutionError as e:
        raise ValueError(
            "paths.output_dir is not set: it is Hydra's run directory under `python -m lra.train`;"
            " a config composed in process (lra.build.compose) needs paths.output_dir=DIR"
        ) from e


def requeued() -> bool:
    """Is this a SLURM job started again (requeued after a time-out, pre-emption or `scontrol
    requeue`)? SLURM counts the restarts of a job in SLURM_RESTART_COUNT."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def find_resume_dir(cfg: DictConfig, run_dir: Path) -> Path | None:
    """Where `resume=true` (or `ckpt_path=last`, or a requeued SLURM job, which needs no flag)
    continues from: this run directory, if it has a last.ckpt. (On the command line Hydra's run
    directory is already the newest earlier run of this name that has one: `lra.config.run_dir`;
    a requeued job runs again in its own.)"""
    if not (cfg.get("resume") or cfg.get("ckpt_path") == "last"):
        if not (requeued() and (run_dir / LAST).exists()):
            return None
        log.info("requeued SLURM job (restart %s): resuming", os.environ["SLURM_RESTART_COUNT"])
    if (run_dir / LAST).exists():
        return run_dir
    log.warning("resume: no %s under %s yet; starting afresh", LAST, run_dir)
    return None


def finished_results(run_dir: Path) -> dict[str, Any] | None:
    """The results.json of a run that finished in `run_dir`, else None."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if results.get("status", "finished") == "finished" else None


Body = Callable[[DictConfig, dict[str, Any]], dict[str, Any]]


class StageStopped(SystemExit):
    """A stage of a job (`pretrain=mlm`'s pretraining) stopped by a signal: the job ends with
    the stage's exit code, and its results.json with the stage's status (interrupted, requeued)."""

    def __init__(self, code: int, status: str, reason: str) -> None:
        super().__init__(code)
        self.status, self.reason = status, reason


def run_job(cfg: DictConfig, body: Body) -> dict[str, Any]:
    """Run one job (`body`: fit and test, or pretrain); returns (and writes to
    run_dir/results.json) what it measured, with `status: finished`. A run that fails (a
    non-finite loss, bad data, any error) or is interrupted (SIGTERM, Ctrl-C) writes results.json
    with `status: failed` or `interrupted`, the reason and no metrics, and ends in an error: the
    exception goes on, and SIGTERM exits 143 (Lightning's own SIGTERM exit would be 0). A
    signalled SLURM job (`lra.cluster`) saves last.ckpt first, and after a warning signal is
    requeued (`status: requeued`). The W&B run is closed on the way out, failed or not, so a
    sweep's next job opens its own; a signalled job's is marked pre-empted, and its requeued job
    resumes it."""
    record: dict[str, Any] = {}  # what is known of the run so far, for a results.json on failure
    failed, detached = True, False
    try:
        results = body(cfg, record)
        failed = False
        return results
    except BaseException as e:
        signals = record.get("signals")
        if signals is not None and signals.received and not isinstance(e, Preempted):
            # an error after the signal (W&B's process killed with the job, say) is the signal's
            step = record["trainer"].global_step if "trainer" in record else 0
            e = Preempted(signals.received, step, saved=False)
        if isinstance(e, Preempted):
            detached = True
            preempted(e, record)  # exits
        if isinstance(e, SystemExit) and not e.code and not isinstance(e, SIGTERMException):
            raise  # a clean exit is no failure
        try:
            record_failure(record, *outcome(e))
        except Exception:  # a full disk, say: the run's own error is the one to show
            log.exception("could not write results.json for the failed run")
        if isinstance(e, SIGTERMException):
            raise SystemExit(128 + signal.SIGTERM) from e
        raise
    finally:
        if not detached:
            close_wandb(failed)


def preempted(e: Preempted, record: dict[str, Any]) -> None:
    """A signalled SLURM job stops: results.json says so, W&B is detached, and after a warning
    the job is requeued. Exits (SystemExit); raises if the job cannot be requeued."""
    log.warning("%s", e)
    try:
        record_failure(record, "requeued" if e.warning else "interrupted", str(e))
    except Exception:
        log.exception("could not write results.json for the signalled run")
    detach_wandb()
    if e.warning:
        try:
            requeue(record["signals"], e)  # under submitit: requeues and exits
        except Exception as err:  # out of requeues (submitit), or scontrol failed
            record_failure(record, "failed", f"{e}; not requeued: {err}")
            raise
    raise SystemExit(128 + e.signum) from e


def outcome(e: BaseException) -> tuple[str, str]:
    """(status, reason) of a run that ended in `e`."""
    if isinstance(e, StageStopped):
        return e.status, e.reason
    if isinstance(e, SIGTERMException):
        return "interrupted", "SIGTERM"
    if isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
        return "interrupted", "interrupted (Ctrl-C)"  # Lightning exits 1 after a KeyboardInterrupt
    if isinstance(e, SystemExit):
        return "failed", f"SystemExit: exit code {e.code!r}"
    return "failed", f"{type(e).__name__}: {e}"


def record_failure(record: dict[str, Any], status: str, reason: str) -> None:
    """results.json of a run that did not finish: who it was, how far it got, why it stopped."""
    if "run_dir" not in record or record.get("done") or rank_zero_only.rank != 0:
        return  # nothing known yet, a finished run's results (never overwritten), or not rank 0
    trainer = record.get("trainer")
    results = {
        **{k: v for k, v in record.items() if k not in ("trainer", "signals", "started")},
        "status": status,
        "reason": reason,
        **dict.fromkeys(MEASURED, None),
        "steps": trainer.global_step if trainer is not None else 0,
        "wall_seconds": time.time() - record["started"],
    }
    write_json(Path(record["run_dir"]) / "results.json", results)
    print_summary(results)

"""W&B (through Lightning's WandbLogger) and CSV loggers, from `cfg.logger`."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lra.cluster import signalled
from lra.config import in_multirun
from lra.io import atomic_path, write_text

log = logging.getLogger(__name__)


def wandb_group(cfg: DictConfig) -> str | None:
    """The experiment's name; for a multirun without one, the sweep (its directory name)."""
    if cfg.get("experiment_name"):
        return str(cfg.experiment_name)
    if in_multirun():
        return Path(HydraConfig.get().sweep.dir).name
    return None


WANDB_ID_FILE = "wandb_id"


def wandb_run_id(run_dir: Path, resume_dir: Path | None) -> str:
    """The W&B run id of this run: the one stored where we resume from, else a new one."""
    for d in (resume_dir, run_dir):
        if d is not None and (d / WANDB_ID_FILE).exists():
            return (d / WANDB_ID_FILE).read_text().strip()
    from wandb.sdk.lib.runid import generate_id

    return generate_id()


def step_of(row: dict[str, Any]) -> int | None:
    """A metrics.csv row's step; None for a row cut short (a kill while the file was written)."""
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger, but a resumed run keeps its history: Lightning's writer deletes an
    existing metrics.csv, so the rows logged before the checkpoint's step are read first (from the
    run being resumed) and written back as the start of this run's file. Rows of the steps after
    the checkpoint are dropped: the resumed run logs them again."""

    def __init__(self, *args: Any, history: Path | None = None, before_step: int = 0, **kw: Any):
        super().__init__(*args, **kw)
        self._kept: tuple[list[str], list[dict[str, str]]] | None = None
        if history is not None and history.is_file():
            with open(history, newline="") as f:
                reader = csv.DictReader(f)
                steps = [(step_of(r), r) for r in reader]
                rows = [r for s, r in steps if s is not None and s < before_step]
                self._kept = (list(reader.fieldnames or []), rows)

    @property
    def experiment(self) -> Any:
        fresh = self._experiment is None
        writer = super().experiment
        if fresh and self._kept is not None and rank_zero_only.rank == 0:
            keys, rows = self._kept
            with atomic_path(writer.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = list(keys)
        return writer


class JobWandbLogger(WandbLogger):
    """Lightning's W&B logger, for a run that may be a signalled SLURM job: SIGTERM reaches every
    process of the job, W&B's own too, and a metric logged after that raises ("Connection
    lost") before the run reaches the step's end, where it saves its checkpoint. Once the job is
    signalled (`lra.cluster.signalled`), a metric W&B cannot take is dropped, not raised."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        try:
            super().log_metrics(metrics, step)
        except Exception as e:
            if not signalled():
                raise
            log.warning("W&B is gone with the signalled job (%s: %s): metrics of step %s dropped",
                        type(e).__name__, e, step)  # fmt: skip


def start_wandb(logger: WandbLogger, w: DictConfig) -> Any:
    """The logger's W&B run, started now; a server out of reach is one clear error."""
    from wandb.errors import CommError, UsageError

    try:
        return logger.experiment
    except (CommError, UsageError, TimeoutError) as e:
        raise RuntimeError(
            f"W&B could not start its run (mode={w.mode}, logger.wandb.init_timeout="
            f"{w.get('init_timeout')} s): {type(e).__name__}: {e}. Set WANDB_MODE=offline to log "
            "locally and `wandb sync` the run later, or logger=csv"
        ) from e


def build_loggers(
    cfg: DictConfig, run_dir: Path, resume_dir: Path | None = None, resume_step: int = 0
) -> list[Logger]:
    """W&B and CSV loggers. A resumed run (or a requeued SLURM job) continues its W&B run, and its
    CSV metrics up to the step it resumes from."""
    loggers: list[Logger] = []
    if cfg.logger.get("wandb"):
        w = cfg.logger.wandb
        run_id = wandb_run_id(run_dir, resume_dir)
        if rank_zero_only.rank == 0:
            write_text(run_dir / WANDB_ID_FILE, run_id + "\n")
        import wandb

        logger = JobWandbLogger(
            settings=wandb.Settings(init_timeout=float(w.get("init_timeout", 90))),
            id=run_id,
            resume="allow",
            project=w.project,
            entity=w.entity,
            name=cfg.run_name,
            group=wandb_group(cfg),
            tags=[cfg.task.name, cfg.model.name],
            job_type=w.job_type,
            mode=w.mode,
            save_dir=str(run_dir),
        )
        if rank_zero_only.rank == 0:  # the dashboard's summary keeps the best val/acc, not the last
            start_wandb(logger, w).define_metric("val/acc", summary="max")
        loggers.append(logger)
    if cfg.logger.get("csv"):
        history = resume_dir / "csv" / "metrics.csv" if resume_dir is not None else None
        loggers.append(
            ContinuedCSVLogger(
                save_dir=str(run_dir),
                name="csv",
                version="",
                history=history,
                before_step=resume_step,
            )  # fmt: skip
        )
    return loggers


def log_run_facts(loggers: list[Logger], config: dict[str, Any], params: dict[str, Any]) -> None:
    """The resolved config and the parameter counts, in every logger (and W&B's summary)."""
    for logger in loggers:
        logger.log_hyperparams({**config, "params": params})
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            for key, value in params.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    logger.experiment.summary[f"params/{key}"] = value


def log_cost(loggers: list[Logger], cost: dict[str, float | None]) -> None:
    """What the run cost (FLOPs, steps/s, memory, wall time), in W&B's summary under the names
    results.json uses, so that `lra.report --wandb` reads the same fields."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            for key, value in cost.items():
                if value is not None:
                    logger.experiment.summary[key] = value


def close_wandb(failed: bool) -> None:
    """Close the W&B run, if one is open. An error closing it (W&B's process gone) is logged,
    never raised: it must not replace the run's own outcome."""
    import wandb

    if wandb.run is None:
        return
    try:
        wandb.finish(exit_code=1 if failed else 0)
    except Exception as e:
        log.warning("W&B run not closed cleanly: %s: %s", type(e).__name__, e)


def detach_wandb() -> None:
    """A signalled SLURM job's W&B run: marked pre-empted and closed, so that the requeued job
    resumes it (same id) and nothing of the old process raises later. If W&B's own process was
    killed with the job (SIGTERM reaches every process of the job), what it had written stays;
    the error is logged, not raised."""
    import wandb

    if wandb.run is None:
        return
    try:
        wandb.mark_preempting()
    except Exception as e:
        log.warning("W&B run not marked pre-empted (%s: %s): its process was stopped with the job",
                    type(e).__name__, e)  # fmt: skip
    close_wandb(failed=True)  # a non-zero exit after mark_preempting: W&B shows it pre-empted
    if wandb.run is not None:  # its process is gone: forget the run, so nothing retries it
        try:
            wandb.teardown(exit_code=1)
        except Exception as e:
            log.warning("W&B teardown failed: %s: %s", type(e).__name__, e)

"""W&B (through Lightning's WandbLogger) and CSV loggers, from `cfg.logger`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lra.io import write_text


def wandb_group(cfg: DictConfig) -> str | None:
    """The experiment's name; for a multirun without one, the sweep (its directory name)."""
    if cfg.get("experiment_name"):
        return str(cfg.experiment_name)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
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


def build_loggers(cfg: DictConfig, run_dir: Path, resume_dir: Path | None = None) -> list[Logger]:
    """W&B and CSV loggers. A resumed run (or a requeued SLURM job) continues its W&B run."""
    loggers: list[Logger] = []
    if cfg.logger.get("wandb"):
        w = cfg.logger.wandb
        run_id = wandb_run_id(run_dir, resume_dir)
        if rank_zero_only.rank == 0:
            write_text(run_dir / WANDB_ID_FILE, run_id + "\n")
        logger = WandbLogger(
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
            logger.experiment.define_metric("val/acc", summary="max")
        loggers.append(logger)
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    return loggers


def log_run_facts(loggers: list[Logger], config: dict[str, Any], params: dict[str, Any]) -> None:
    """The resolved config and the parameter counts, in every logger (and W&B's summary)."""
    for logger in loggers:
        logger.log_hyperparams({**config, "params": params})
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            for key, value in params.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    logger.experiment.summary[f"params/{key}"] = value


def close_wandb(failed: bool) -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)

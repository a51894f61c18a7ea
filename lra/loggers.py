"""W&B (through Lightning's WandbLogger) and CSV loggers, from `cfg.logger`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger


def wandb_group(cfg: DictConfig) -> str | None:
    """The experiment's name; for a multirun without one, the sweep (its directory name)."""
    if cfg.get("experiment_name"):
        return str(cfg.experiment_name)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.get("wandb"):
        w = cfg.logger.wandb
        logger = WandbLogger(
            project=w.project,
            entity=w.entity,
            name=cfg.run_name,
            group=wandb_group(cfg),
            tags=[cfg.task.name, cfg.model.name],
            job_type=w.job_type,
            mode=w.mode,
            save_dir=str(run_dir),
        )
        # The dashboard's summary keeps the best validation accuracy, not the last.
        logger.experiment.define_metric("val/acc", summary="max")
        loggers.append(logger)
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    return loggers


def log_run_facts(loggers: list[Logger], config: dict[str, Any], params: dict[str, int]) -> None:
    """The resolved config and the parameter counts, in every logger (and W&B's summary)."""
    for logger in loggers:
        logger.log_hyperparams({**config, "params": params})
        if isinstance(logger, WandbLogger):
            for key, value in params.items():
                logger.experiment.summary[f"params/{key}"] = value


def close_wandb(failed: bool) -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)

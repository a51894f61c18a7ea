"""`python -m lra.train task=... model=...`: compose, build, fit, test, write results.json.

Data flows one way: config -> DataModule -> LightningModule(net = encoder + head) -> Trainer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

import lra.config  # noqa: F401  (registers the ${lra.*} resolvers)
from lra.callbacks import TokenThroughput
from lra.console import print_config_tree, print_summary
from lra.data.base import LRADataModule
from lra.io import write_json
from lra.loggers import build_loggers, close_wandb, log_run_facts
from lra.models.classifier import build_classifier, count_parameters
from lra.module import LRAClassifier
from lra.registry import TASKS

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> LRADataModule:
    data = OmegaConf.to_container(cfg.task.data, resolve=True)
    return TASKS.get(cfg.task.family)(
        task_name=cfg.task.name,
        cache_dir=cfg.paths.cache_dir,
        max_len=cfg.task.max_len,
        batch_size=cfg.task.optim.batch_size,
        **data,
    )


def build_module(cfg: DictConfig) -> LRAClassifier:
    net = build_classifier(
        OmegaConf.to_container(cfg.task.encoder, resolve=True),
        OmegaConf.to_container(cfg.model.mixer, resolve=True),
        vocab_size=cfg.task.vocab_size,
        num_classes=cfg.task.num_classes,
        head=cfg.task.get("head", "single"),
    )
    optim = OmegaConf.to_container(cfg.task.optim, resolve=True)
    return LRAClassifier(net, num_classes=cfg.task.num_classes, optim=optim)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run; returns (and writes to run_dir/results.json) what it measured."""
    t_start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg)

    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    params = count_parameters(module.net)
    config = OmegaConf.to_container(cfg, resolve=True)

    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-step{step}",
        monitor="val/acc",
        mode="max",
        auto_insert_metric_name=False,
    )
    # last.ckpt on its own clock: Lightning refreshes `save_last` only when a best is saved.
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
    )
    throughput = TokenThroughput()
    loggers = build_loggers(cfg, run_dir)
    log_run_facts(loggers, config, params)
    callbacks: list[pl.Callback] = [best, last, throughput]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=run_dir
    )

    t_fit = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.time() - t_fit
    val_best = module.val_acc_best.compute().item() if module.val_acc_best.update_called else None

    test_acc, tested = None, None
    if cfg.get("test", True):
        tested = best.best_model_path or None
        if tested is None:
            log.warning("no best checkpoint (no validation ran): testing the final weights")
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=False)
        test_acc = metrics[0]["test/acc"]

    results = {
        "run_name": cfg.run_name,
        "run_dir": str(run_dir),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "params": params,
        "val_acc_best": val_best,
        "test_acc": test_acc,
        "test_checkpoint": tested,
        "test_majority_rate": datamodule.majority_rate("test"),
        "steps": trainer.global_step,
        "fit_seconds": fit_seconds,
        "wall_seconds": time.time() - t_start,
        "train_tokens_per_s": throughput.tokens_per_s,
        "config": config,
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        print_summary(results)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    failed = True
    try:
        results = train(cfg)
        failed = False
    finally:
        close_wandb(failed)  # always close the W&B run, so a sweep's next job opens its own
    metric = {"val/acc_best": results["val_acc_best"], "test/acc": results["test_acc"]}
    return metric.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()

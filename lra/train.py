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
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

import lra.config  # noqa: F401  (registers the ${lra.*} resolvers)
from lra.callbacks import StepSeed, TokenThroughput
from lra.console import print_config_tree, print_summary
from lra.data.base import LRADataModule
from lra.io import write_json
from lra.loggers import build_loggers, close_wandb, log_run_facts
from lra.models.classifier import count_parameters
from lra.module import LRAClassifier
from lra.params import match_parameters
from lra.registry import ARCHITECTURES, TASKS

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.ckpt"


def device_count(devices: Any) -> int:
    """Lightning's `devices`: an int, a list of ids, "-1"/"auto" (all visible GPUs, else 1)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | tuple):
        return len(devices)
    if str(devices).isdigit() and int(devices) > 0:
        return int(devices)
    import torch

    return max(1, torch.cuda.device_count())


def per_device_batch(cfg: DictConfig) -> int:
    """The task's batch is global: split it over devices x nodes x gradient accumulation."""
    t = cfg.trainer
    split = (
        device_count(t.devices)
        * int(t.get("num_nodes", 1))
        * int(t.get("accumulate_grad_batches", 1))
    )
    batch = int(cfg.task.optim.batch_size)
    if batch % split:
        raise ValueError(
            f"task.optim.batch_size={batch} (the global batch) does not divide over "
            f"trainer.devices x trainer.num_nodes x trainer.accumulate_grad_batches = {split}: "
            f"choose a batch size that is a multiple of {split}, or other device counts"
        )
    return batch // split


def build_datamodule(cfg: DictConfig) -> LRADataModule:
    data = OmegaConf.to_container(cfg.task.data, resolve=True)
    return TASKS.get(cfg.task.family)(
        task_name=cfg.task.name,
        cache_dir=cfg.paths.cache_dir,
        max_len=cfg.task.max_len,
        batch_size=per_device_batch(cfg),
        shuffle_seed=cfg.seed,
        **data,
    )


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The network the task trains. The model names a whole architecture; by default
    (`encoder`) the shared encoder with the task's shape and head and the model's mixer. A model
    may change the task's encoder in `model.encoder` (disentangled: no absolute positions)."""
    build = ARCHITECTURES.get(cfg.model.get("architecture", "encoder"))
    return build(
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(
            OmegaConf.merge(cfg.task.encoder, cfg.model.get("encoder", {})), resolve=True
        ),
        vocab_size=cfg.task.vocab_size,
        num_classes=cfg.task.num_classes,
        head=cfg.task.get("head", "single"),
    )


def build_module(cfg: DictConfig) -> LRAClassifier:
    optim = OmegaConf.to_container(cfg.task.optim, resolve=True)
    return LRAClassifier(build_net(cfg), num_classes=cfg.task.num_classes, optim=optim)


def find_resume_dir(cfg: DictConfig, run_dir: Path) -> Path | None:
    """Where `resume=true` (or `ckpt_path=last`) continues from: this run directory if it has a
    last.ckpt (a requeued job), else the newest earlier run of the same name that has one."""
    if not (cfg.get("resume") or cfg.get("ckpt_path") == "last"):
        return None
    if (run_dir / LAST).exists():
        return run_dir
    earlier = sorted(
        (Path(cfg.paths.log_dir) / "runs" / cfg.run_name).glob(f"*/{LAST}"),
        key=lambda p: p.stat().st_mtime,
    )
    if not earlier:
        log.warning("resume: no %s under %s yet; starting afresh", LAST, run_dir)
        return None
    return earlier[-1].parents[1]


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run; returns (and writes to run_dir/results.json) what it measured."""
    t_start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    if rank_zero_only.rank == 0:
        print_config_tree(cfg)

    resume_dir = find_resume_dir(cfg, run_dir)
    ckpt_path = str(resume_dir / LAST) if resume_dir else cfg.get("ckpt_path")
    if ckpt_path == "last":  # asked to resume, nothing to resume from
        ckpt_path = None
    if resume_dir:
        log.info("resuming %s from %s", cfg.run_name, ckpt_path)

    matched = match_parameters(cfg)  # sets the model's knob in cfg to meet the task's budget
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    params = {**matched, **count_parameters(module.net)}
    config = OmegaConf.to_container(cfg, resolve=True)
    config["per_device_batch"] = datamodule.batch_size

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
    loggers = build_loggers(cfg, run_dir, resume_dir)
    log_run_facts(loggers, config, params)
    callbacks: list[pl.Callback] = [best, last, throughput, StepSeed(cfg.seed)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=run_dir
    )

    t_fit = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.time() - t_fit
    val_best = module.val_acc_best.compute().item() if module.val_acc_best.update_called else None

    test: dict[str, float] = {}
    tested = None
    if cfg.get("test", True):
        tested = best.best_model_path or None
        if tested is None:
            log.warning("no best checkpoint (no validation ran): testing the final weights")
        test = trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=False)[0]

    results = {
        "run_name": cfg.run_name,
        "run_dir": str(run_dir),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "params": params,
        "val_acc_best": val_best,
        "val_loss": _float(trainer.callback_metrics.get("val/loss")),
        "test_acc": test.get("test/acc"),
        "test_loss": test.get("test/loss"),
        "test_checkpoint": tested,
        "test_majority_rate": datamodule.majority_rate("test"),
        "steps": trainer.global_step,
        "resumed_from": ckpt_path,
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

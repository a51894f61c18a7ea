"""`python -m lra.train task=... model=...`: the entry point, and nothing else imports it.

compose (Hydra) -> match parameters -> build (lra/build.py) -> fit -> test -> results.json.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lra.build import build_datamodule, build_module, strategy_for, training_flops, validate
from lra.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    RunFacts,
    StepSeed,
    TokenThroughput,
    check_checkpoint,
)
from lra.cluster import (
    SlurmSignals,
    cap_threads,
    note_job_for_workers,
    one_ddp_job,
    slurm_facts,
    with_slurm_environment,
    worker_argv,
)
from lra.config import CONF_DIR, LAST, STAGE, end_job, in_multirun
from lra.console import print_config_tree, print_summary
from lra.io import write_json
from lra.job import find_resume_dir, finished_results, output_dir, run_job
from lra.loggers import build_loggers, log_cost, log_run_facts
from lra.matching import match_parameters, matched_facts
from lra.memory import check_run, peak_memory_mb
from lra.models.classifier import count_parameters
from lra.pretraining import ENCODER_FILE, load_pretrained, objective, refuse_whole_networks, stage

log = logging.getLogger(__name__)

# what a finished run measures; null in the results.json of a run that did not finish
COST_FIELDS = ("flops_per_step", "train_flops", "steps_per_s", "peak_memory_mb", "wall_seconds")
# optimized_metric (what a Hydra sweeper optimises) -> the results.json field that holds it
OPTIMIZABLE = {
    "val/acc_best": "val_acc_best",
    "val/loss": "val_loss",
    "test/acc": "test_acc",
    "test/loss": "test_loss",
}


def optimized_field(cfg: DictConfig) -> str:
    """The results.json field of `optimized_metric`, checked before anything is built."""
    metric = cfg.get("optimized_metric")
    if metric not in OPTIMIZABLE:
        raise ValueError(
            f"optimized_metric={metric!r} is not one this run reports: use one of "
            f"{', '.join(OPTIMIZABLE)}"
        )
    if metric.startswith("test/") and not cfg.get("test", True):
        raise ValueError(f"optimized_metric={metric} needs test=true (this run does not test)")
    return OPTIMIZABLE[metric]


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run (`run_job` says what a run that fails or is signalled leaves);
    with `pretrain` set (`pretrain=mlm`), self-pretrain its encoder first (lra.pretraining)."""
    return run_job(cfg, fit_and_test)


def pretrained_encoder(cfg: DictConfig, run_dir: Path, record: dict[str, Any]) -> str | Path | None:
    """The encoder this run fine-tunes: `pretrained=PATH`, or with `pretrain=mlm` the one its
    pretraining stage makes now (lra.pretraining.stage, in RUN_DIR/pretrain); None from scratch.
    `record` says which before the stage runs, so a job stopped in it is no run from scratch."""
    path, name = cfg.get("pretrained"), objective(cfg)
    if path is not None and name != "none":
        raise ValueError(
            f"pretrained={path} and pretrain={name} both set: fine-tune the given encoder "
            "(pretrain=none) or pretrain one in this job (pretrained=null)"
        )
    if (path is not None or name != "none") and cfg.get("ckpt_path") not in (None, "last"):
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} with a pretrained encoder: the checkpoint's weights would "
            "replace it. Start from the checkpoint (pretrained=null, pretrain=none) or from the "
            "encoder (ckpt_path=null)"
        )
    if name != "none":
        refuse_whole_networks(cfg)
        record["pretrained"] = {"objective": name, "path": str(run_dir / STAGE / ENCODER_FILE)}
        return stage(cfg, run_dir)
    if path is not None:
        refuse_whole_networks(cfg)
        record["pretrained"] = {"path": str(path)}
    return path


def fit_and_test(cfg: DictConfig, record: dict[str, Any]) -> dict[str, Any]:
    t_start = time.time()
    validate(cfg)
    optimized_field(cfg)
    run_dir = output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.update(started=t_start, run_name=cfg.run_name, run_dir=str(run_dir), task=cfg.task.name,
                  model=cfg.model.name, seed=cfg.seed)  # fmt: skip
    pl.seed_everything(cfg.seed, workers=True)
    cap_threads()  # a SLURM task: its own CPUs, not the node's

    resume_dir = find_resume_dir(cfg, run_dir)
    ckpt_path = str(resume_dir / LAST) if resume_dir else cfg.get("ckpt_path")
    if ckpt_path == "last":  # asked to resume, nothing to resume from
        ckpt_path = None
    if resume_dir:
        done = finished_results(resume_dir)
        if done is not None:  # nothing to resume: say so, and touch nothing
            record["done"] = True
            if rank_zero_only.rank == 0:
                print(
                    f"{cfg.run_name}: already finished in {resume_dir}; nothing resumed", flush=True
                )
                print_summary(done)
            return done
        log.info("resuming %s from %s", cfg.run_name, ckpt_path)

    # pretrain=mlm: the pretraining stage runs here
    pretrained = pretrained_encoder(cfg, run_dir, record)
    pl.seed_everything(cfg.seed, workers=True)  # after a stage, as before it: the same fresh head
    cfg = match_parameters(cfg)  # the run config: knobs turned, params.* filled, encoder resolved
    if rank_zero_only.rank == 0:
        print_config_tree(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    params = {**matched_facts(cfg), **count_parameters(module.net)}
    config = OmegaConf.to_container(cfg, resolve=True)
    config["per_device_batch"] = datamodule.batch_size
    if pretrained is not None:  # the encoder's weights; the head stays the seed's fresh one
        facts = load_pretrained(module.net, pretrained, cfg)
        config["pretrained_from"] = record["pretrained"] = facts
    flops = training_flops(cfg) if cfg.get("count_flops", True) else None
    record.update(params=params, resumed_from=ckpt_path, config=config, slurm=slurm_facts())
    stamp = {"task": cfg.task.name, "model": cfg.model.name, "total": params["total"]}
    checkpoint = None  # memory-mapped: the weights are not read here
    if ckpt_path is not None:
        checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)
        check_checkpoint(checkpoint, ckpt_path, module, stamp)

    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-step{step}",
        monitor="val/acc",
        mode="max",
        auto_insert_metric_name=False,
    )
    # last.ckpt on its own clock (Lightning refreshes `save_last` only when a best is saved),
    # after `best` in the callback list, so it holds best's state after each validation.
    signals = record["signals"] = SlurmSignals()  # owns the job's signals under SLURM
    last = LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every_n_steps, signals)
    throughput = TokenThroughput()
    resume_step = int(checkpoint["global_step"]) if resume_dir and checkpoint else 0
    loggers = build_loggers(cfg, run_dir, resume_dir, resume_step)
    log_run_facts(loggers, config, params)
    callbacks: list[pl.Callback] = [best, last, signals, throughput, StepSeed(cfg.seed),
                                     RunFacts(stamp)]  # fmt: skip
    if cfg.trainer.get("enable_progress_bar", True):  # each refresh waits for the device
        callbacks.append(RichProgressBar(refresh_rate=cfg.trainer.get("log_every_n_steps", 50)))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    plugins = with_slurm_environment(
        [hydra.utils.instantiate(p) for p in cfg.trainer.get("plugins") or []]
    )
    strategy = strategy_for(cfg, module.net)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=run_dir,
        plugins=[*plugins, AtomicCheckpointIO()], **({"strategy": strategy} if strategy else {}),
    )  # fmt: skip
    record["trainer"] = trainer
    device = trainer.strategy.root_device
    if cfg.get("check_memory", True) and device.type == "cuda":
        est = check_run(
            module.net, device, inputs=datamodule.inputs, n=cfg.task.max_len,
            vocab=cfg.task.vocab_size, precision=str(cfg.trainer.get("precision", "32")),
            per_device=datamodule.batch_size, global_batch=cfg.task.optim.batch_size,
            accumulate=int(cfg.trainer.get("accumulate_grad_batches") or 1),
        )  # fmt: skip
        peak, batch = est.peak(datamodule.batch_size) / 2**30, datamodule.batch_size
        log.info("memory: about %.1f GiB of %.1f GiB free at a per-device batch of %d", peak,
                 est.free / 2**30, batch)  # fmt: skip

    if in_multirun():
        note_job_for_workers(HydraConfig.get().overrides.task, str(run_dir))
    t_fit = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.time() - t_fit
    val_best = module.val_acc_best.compute().item() if module.val_acc_best.update_called else None
    if val_best is None and best.best_model_score is not None:
        # resumed after its last validation (a SLURM signal in the final steps): no validation ran
        # in this process, and the best val/acc is the one the restored checkpointer holds
        val_best = float(best.best_model_score)
    val_loss = _float(trainer.callback_metrics.get("val/loss"))  # trainer.test replaces them
    data_source = datamodule.source()  # known once prepare_data has found or made the data
    for logger in loggers:
        logger.log_hyperparams({"data_source": data_source})

    test: dict[str, float] = {}
    tested, rule = None, cfg.get("test_checkpoint", "last")
    if cfg.get("test", True):
        tested = (best.best_model_path if rule == "best" else last.last_model_path) or None
        if tested is None:
            log.warning("no %s checkpoint: testing the final weights", rule)
        test = trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=False)[0]

    results = {
        "run_name": cfg.run_name,
        "run_dir": str(run_dir),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "status": "finished",
        "params": params,
        "data_source": data_source,
        "val_acc_best": val_best,
        "val_loss": val_loss,
        "test_acc": test.get("test/acc"),
        "test_loss": test.get("test/loss"),
        "test_checkpoint": tested,
        "tested": rule if cfg.get("test", True) else None,  # last | best: which weights were tested
        "test_majority_rate": datamodule.majority_rate("test"),
        "pretrained": record.get("pretrained"),  # the encoder fine-tuned from; null: from scratch
        "val_is_test": datamodule.validates_on_test(),  # then val numbers are test numbers
        "steps": trainer.global_step,
        "resumed_from": ckpt_path,
        "slurm": record["slurm"],
        "fit_seconds": fit_seconds,
        # cost: FLOPs per training step at the task's shape, steps/s of this fit, peak memory
        "flops_per_step": flops,
        "train_flops": None if flops is None else flops * trainer.global_step,
        "steps_per_s": (trainer.global_step - resume_step) / fit_seconds if fit_seconds else None,
        "peak_memory_mb": peak_memory_mb(device),
        "wall_seconds": time.time() - t_start,
        "train_tokens_per_s": throughput.tokens_per_s,
        "config": config,
    }
    log_cost(loggers, {k: results[k] for k in COST_FIELDS})
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        record["done"] = True  # from here on, nothing may turn the file into a failure
        print_summary(results)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The value of `optimized_metric`, for a Hydra sweeper (Optuna)."""
    try:
        with one_ddp_job() if in_multirun() else nullcontext():  # the next job: its own workers
            return train(cfg)[optimized_field(cfg)]
    finally:
        if HydraConfig.initialized():  # a sweeper calls main; a test may call main.__wrapped__
            end_job(HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.argv = worker_argv(sys.argv)  # a DDP worker of a sweep's job runs that job, not the sweep
    main()

"""`python -m lra.train task=... model=...`: the entry point, and nothing else imports it.

compose (Hydra) -> match parameters -> build (lra/build.py) -> fit -> test -> results.json.
"""

from __future__ import annotations

import json
import logging
import os
import signal
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
from omegaconf.errors import InterpolationResolutionError
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException
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
    Preempted,
    SlurmSignals,
    cap_threads,
    note_job_for_workers,
    one_ddp_job,
    requeue,
    slurm_facts,
    with_slurm_environment,
    worker_argv,
)
from lra.config import CONF_DIR, LAST, end_job, in_multirun
from lra.console import print_config_tree, print_summary
from lra.io import write_json
from lra.loggers import build_loggers, close_wandb, detach_wandb, log_cost, log_run_facts
from lra.matching import match_parameters, matched_facts
from lra.memory import check_run, peak_memory_mb
from lra.models.classifier import count_parameters

log = logging.getLogger(__name__)

# what a finished run measures; null in the results.json of a run that did not finish
COST_FIELDS = ("flops_per_step", "train_flops", "steps_per_s", "peak_memory_mb", "wall_seconds")
MEASURED = ("val_acc_best", "val_loss", "test_acc", "test_loss", "test_checkpoint", "tested",
            "test_majority_rate", "fit_seconds", "train_tokens_per_s")  # fmt: skip
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


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run; returns (and writes to run_dir/results.json) what it measured, with
    `status: finished`. A run that fails (a non-finite loss, bad data, any error) or is interrupted
    (SIGTERM, Ctrl-C) writes results.json with `status: failed` or `interrupted`, the reason and no
    metrics, and ends in an error: the exception goes on, and SIGTERM exits 143 (Lightning's own
    SIGTERM exit would be 0). A signalled SLURM job (`lra.cluster`) saves last.ckpt first, and
    after a warning signal is requeued (`status: requeued`). The W&B run is closed on the way
    out, failed or not, so a sweep's next job opens its own; a signalled job's is marked
    pre-empted, and its requeued job resumes it."""
    record: dict[str, Any] = {}  # what is known of the run so far, for a results.json on failure
    failed, detached = True, False
    try:
        results = fit_and_test(cfg, record)
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

    cfg = match_parameters(cfg)  # the run config: knobs turned, params.* filled, encoder resolved
    if rank_zero_only.rank == 0:
        print_config_tree(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    params = {**matched_facts(cfg), **count_parameters(module.net)}
    config = OmegaConf.to_container(cfg, resolve=True)
    config["per_device_batch"] = datamodule.batch_size
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

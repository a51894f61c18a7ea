"""Scale-out and sweeps: DDP on 2 CPU processes, a multirun and Optuna through the real CLI,
SIGKILL then resume, the SLURM launcher's composed settings."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CLI, ROOT, TINY, Runs, ok
from omegaconf import OmegaConf
from wandb_records import read_offline_run

from lra.build import compose, per_device_batch


@pytest.mark.slow
def test_ddp_sim_trains_and_tests_and_only_rank_zero_writes(cli: CLI) -> None:
    proc = ok(cli.run("trainer=ddp_sim"))
    out = proc.stdout + proc.stderr
    assert out.count("results: ") == 1, "one summary, from rank 0"
    r = cli.results()
    assert r["steps"] == 4 and r["test_acc"] is not None
    assert r["config"]["trainer"]["strategy"] == "ddp" and r["config"]["trainer"]["devices"] == 2
    assert r["config"]["per_device_batch"] == 8, "global batch 16 over 2 processes"
    assert list((cli.root / "run").glob("**/results.json")) == [cli.root / "run" / "results.json"]
    assert len(list((cli.root / "run" / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_a_local_sweep_of_ddp_jobs_runs_each_job_once(cli: CLI) -> None:
    """Lightning starts a DDP worker with the command line of its parent, here the whole sweep:
    the worker must run its job (`lra.cluster.worker_argv`), not the sweep again."""
    sweep = cli.root / "sweep"
    ok(cli.run("trainer=ddp_sim", "seed=0,1", f"hydra.sweep.dir={sweep}", flags=("-m",),
               timeout=180))  # fmt: skip
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert [json.loads((j / "results.json").read_text())["seed"] for j in jobs] == [0, 1]
    assert all(json.loads((j / "results.json").read_text())["steps"] == 4 for j in jobs)
    assert [len(list((j / "wandb").glob("offline-run-*"))) for j in jobs] == [1, 1]
    assert {p.name for p in sweep.iterdir()} == {j.name for j in jobs} | {"multirun.yaml"}
    assert not (cli.root / "outputs").exists(), "no worker ran a job of its own elsewhere"


def test_a_2x2_multirun_gives_4_runs_in_one_wandb_group(runs: Runs) -> None:
    sweep = runs.root / "sweep"
    runs.command_line("-m", "seed=0,1", "task.optim.lr=0.001,0.002", f"hydra.sweep.dir={sweep}")
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 4
    configs = {
        (
            json.loads(p.read_text())["seed"],
            json.loads(p.read_text())["config"]["task"]["optim"]["lr"],
        )
        for p in results
    }  # noqa: E501
    assert configs == {(0, 0.001), (0, 0.002), (1, 0.001), (1, 0.002)}
    logged = [read_offline_run(d) for d in sweep.glob("*/wandb/offline-run-*")]
    assert len(logged) == 4 and len({run["id"] for run in logged}) == 4
    assert {run["group"] for run in logged} == {"sweep"}, "the sweep's name groups its runs"
    assert all(run["job_type"] == "train" and "listops_small" in run["tags"] for run in logged)
    single = runs.train("logger=wandb", run_dir="after")  # a run after the sweep: its own group
    (after,) = (runs.root / "after" / "wandb").glob("offline-run-*")
    assert read_offline_run(after)["group"] == "" and single["steps"] == 4


def test_optuna_sweep_of_two_trials_reports_the_best_value(runs: Runs) -> None:
    sweep = runs.root / "optuna"
    runs.command_line("hparams_search=optuna", "hydra.sweeper.n_trials=2", "logger=csv",
                      f"hydra.sweep.dir={sweep}")  # fmt: skip
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text())["val_acc_best"] for p in sweep.glob("*/results.json")]
    assert len(trials) == 2
    assert best["best_value"] == pytest.approx(max(trials))
    assert set(best["best_params"]) == {
        "task.optim.lr",
        "task.optim.weight_decay",
        "task.encoder.dropout",
    }


RESUMABLE = [
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "checkpoint_every_n_steps=5",
    "task.encoder.dropout=0.1",  # dropout masks must be reproduced after the resume too
    "task.encoder.attn_dropout=0.1",
]


def metric_rows(path: Path) -> dict[tuple[int, str], float]:
    """(step, metric) -> value of a metrics.csv, for training loss and validation."""
    with open(path) as f:
        return {
            (int(row["step"]), key): float(row[key])
            for row in csv.DictReader(f)
            for key in ("train/loss", "val/loss", "val/acc")
            if row.get(key)
        }


# `python -m lra.train ARGS` that kills itself with SIGKILL inside the validation after step 30
# (epoch 1: 16 steps an epoch), at its second batch: no signal handler, no clean-up, as a node
# that fails there.
KILLED_IN_VALIDATION = """
import os, runpy, signal, sys
import lra.module
validate = lra.module.LRAClassifier.validation_step
def validation_step(self, batch, batch_idx):
    if self.global_step == 30 and batch_idx == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return validate(self, batch, batch_idx)
lra.module.LRAClassifier.validation_step = validation_step
sys.argv = ["lra.train", *sys.argv[1:]]
runpy.run_module("lra.train", run_name="__main__")
"""


def command(runs: Runs, *extra: str, killed: bool = True) -> list[str]:
    """`python -m lra.train` (killed inside the validation after step 30, or not), in the default
    layout: runs under paths.log_dir/runs/NAME/<time>/."""
    start = ["-c", KILLED_IN_VALIDATION] if killed else ["-m", "lra.train"]
    return [
        sys.executable, *start, *TINY, *RESUMABLE, *extra, f"paths.data_dir={runs.data_dir}",
        f"paths.log_dir={runs.root / 'outputs'}",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_inside_a_validation_then_resume_reaches_exactly_the_uninterrupted_metrics(
    runs: Runs,
) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin"}
    killed = subprocess.Popen(command(runs), cwd=ROOT, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    # while it starts (its imports, one core), the uninterrupted run, on the same data
    straight = runs.train(*RESUMABLE, run_dir="straight")
    _, stderr = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, f"killed inside a validation\n{stderr[-3000:]}"
    (run,) = (runs.root / "outputs" / "runs" / "listops_small-baseline-s0").iterdir()
    assert not (run / "results.json").exists()
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 25, "the step before the validation it was killed in"
    assert state["epoch"] == 1, "inside a later epoch: the sampler's epoch must be restored"

    # what a user types: the same command with resume=true; it continues in the run's directory
    proc = subprocess.run(command(runs, "resume=true", killed=False), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"the resumed run\n{proc.stderr[-3000:]}"
    assert [run] == list(run.parent.iterdir()), "no second run directory"
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["resumed_from"] == str(last)
    assert isinstance(straight["val_loss"], float), "real numbers are compared"
    for key in ("steps", "val_acc_best", "val_loss", "test_acc", "test_loss"):
        assert resumed[key] == straight[key], key
    assert Path(resumed["test_checkpoint"]).name == Path(straight["test_checkpoint"]).name

    folders = {"straight": runs.root / "straight", "killed": run}
    logged = {name: metric_rows(folder / "csv" / "metrics.csv") for name, folder in folders.items()}
    assert logged["killed"] == logged["straight"], "the CSV history is kept and continued"
    assert {step for step, _ in logged["straight"]} == set(range(40)), "every step is logged"

    wandb_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2
    assert wandb_runs[0].name.split("-")[-1] == wandb_runs[1].name.split("-")[-1]
    stored = (run / "wandb_id").read_text().strip()
    assert read_offline_run(wandb_runs[1])["id"] == stored


LATER_EPOCH = ["logger=csv", "task.optim.max_steps=40", "trainer.val_check_interval=10",
               "task.encoder.dropout=0.1"]  # fmt: skip


@pytest.mark.parametrize(
    ("every", "cut", "saved"),
    [(5, 25, 25), (16, 17, 17)],  # 16: due at the last step of epoch 0, saved one step later
    ids=["inside-epoch-1", "due-at-an-epochs-end"],
)
def test_a_resume_inside_a_later_epoch_sees_that_epochs_batches(
    runs: Runs, every: int, cut: int, saved: int
) -> None:
    """256 rows in batches of 16: 16 steps an epoch, so step 25 is inside epoch 1. Resumed there,
    the run must draw the rest of epoch 1's order (the sampler's epoch restored), not epoch 0's.
    A checkpoint of an epoch's last step is resumed by Lightning in the wrong epoch's order, so
    LastCheckpoint saves it one step later."""
    common = [*LATER_EPOCH, f"checkpoint_every_n_steps={every}"]
    straight = runs.train(*common, "trainer.max_steps=40", run_dir="straight")
    runs.train(*common, f"trainer.max_steps={cut}", run_dir="cut")
    last = runs.root / "cut" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert (state["global_step"], state["epoch"]) == (saved, 1), "the cut is inside epoch 1"
    resumed = runs.train(*common, "trainer.max_steps=40", f"ckpt_path={last}",
                         run_dir="resumed")  # fmt: skip
    losses = {name: {step: v for (step, key), v in metric_rows(
        runs.root / name / "csv" / "metrics.csv").items() if key == "train/loss"}
        for name in ("straight", "resumed")}  # fmt: skip
    assert sorted(losses["resumed"]) == list(range(saved, 40))
    assert losses["resumed"] == {s: losses["straight"][s] for s in range(saved, 40)}, "same batches"
    for key in ("val_acc_best", "val_loss", "test_acc", "test_loss"):
        assert resumed[key] == straight[key], key


def test_slurm_launcher_composes_with_one_task_per_gpu() -> None:
    cfg = compose(["hydra/launcher=slurm", "trainer=slurm", "trainer.devices=4",
                   "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
                  return_hydra_config=True)  # fmt: skip
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu" and launcher["signal_delay_s"] > 0
    assert launcher["max_num_timeout"] > 0
    assert launcher["cpus_per_task"] == cfg.task.data.num_workers + 1, "what a task uses"
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer["strategy"] == "ddp" and trainer["num_nodes"] == 2 and trainer["devices"] == 4
    assert trainer["plugins"][0]["requeue_signal"] == "SIGUSR2"
    assert per_device_batch(compose(["trainer=slurm", "trainer.devices=4",
                                     "trainer.num_nodes=2", "task=listops"])) == 4  # fmt: skip

    from lra.cluster import slurm_environment

    env = slurm_environment("SIGUSR2")
    assert not env.auto_requeue, "lra.cluster.SlurmSignals owns the signals, not Lightning"
    assert env.requeue_signal == signal.SIGUSR2
    assert launcher["mem_gb"] == 64, "16 GB per GPU"


def test_slurm_launcher_for_cpu_nodes_asks_for_no_gpus_and_a_small_node() -> None:
    cfg = compose(["hydra/launcher=slurm", "trainer=cpu", "task.data.num_workers=1"],
                  return_hydra_config=True)  # fmt: skip
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] is None, "trainer=cpu: no --gpus-per-node"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["cpus_per_task"]) == (1, 1, 2)
    assert launcher["mem_gb"] == 4


def test_a_row_cut_short_by_a_kill_is_dropped_from_the_history(tmp_path: Path) -> None:
    from lra.loggers import ContinuedCSVLogger

    history = tmp_path / "old.csv"
    history.write_text("epoch,step,train/loss\n0,0,2.5\n0,1,2.4\n0")  # the last row cut short
    logger = ContinuedCSVLogger(save_dir=str(tmp_path), name="csv", version="", history=history,
                                before_step=5)  # fmt: skip
    logger.experiment  # noqa: B018  (creates the writer, which writes the kept rows)
    kept = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert kept == ["epoch,step,train/loss", "0,0,2.5", "0,1,2.4"]


def test_registries_and_resolvers_pickle_by_name_into_a_job() -> None:
    """Hydra's launchers pickle the config's resolvers into every job; a registry copied there
    by value was empty ("unknown task 'listops'; registered: ." in every job)."""
    import cloudpickle

    from lra import config
    from lra.registry import ARCHITECTURES, MIXERS, TASKS

    for registry in (TASKS, MIXERS, ARCHITECTURES):
        assert cloudpickle.loads(cloudpickle.dumps(registry)) is registry
    for resolver in (config.vocab_size, config.num_classes, config.run_dir, config.hydra_subdir):
        assert cloudpickle.loads(cloudpickle.dumps(resolver)) is resolver, "by reference"


@pytest.mark.slow
def test_a_sweep_through_hydras_submitit_launcher_runs_every_job(cli: CLI) -> None:
    """Hydra's local submitit launcher: each job a process of its own from pickled state, as on
    SLURM (hydra/launcher=slurm), with no cluster."""
    sweep = cli.root / "sweep"
    proc = ok(cli.run("hydra/launcher=submitit_local", "seed=0,1", "logger=csv",
                      f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=5",
                      flags=("--multirun",)))  # fmt: skip
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2, proc.stderr[-3000:]
    assert {json.loads(p.read_text())["status"] for p in results} == {"finished"}
    assert {json.loads(p.read_text())["seed"] for p in results} == {0, 1}

"""A signalled SLURM job (lra/cluster.py), in process and without a cluster: the job's
environment is set by hand, the signals are sent by the run to itself, and `scontrol` is a script
that writes down how it was called. The same paths on a real cluster: tests/slurm/."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from conftest import Runs
from test_scale import metric_rows

import lra.module
from lra.cluster import OWNED

STEADY = ["trainer.max_steps=24", "trainer.val_check_interval=10", "checkpoint_every_n_steps=5",
          "task.encoder.dropout=0.1", "logger=csv"]  # fmt: skip


@pytest.fixture
def slurm_job(monkeypatch, tmp_path: Path) -> Path:
    """This process is SLURM job 4242; `scontrol` on PATH logs its arguments to the file given."""
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def signal_at(monkeypatch, signum: int, step: int, in_validation: bool = False) -> None:
    """The run sends itself `signum` in training step `step` (or in the validation after it)."""
    hook = "validation_step" if in_validation else "training_step"
    original = getattr(lra.module.LRAClassifier, hook)

    def step_and_signal(self, batch, batch_idx):
        if self.global_step == step and batch_idx == (1 if in_validation else batch_idx):
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(lra.module.LRAClassifier, hook, step_and_signal)


def saved_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def test_sigterm_in_a_slurm_job_saves_the_step_then_the_requeued_job_ends_as_if_never_stopped(
    runs: Runs, slurm_job: Path, monkeypatch
) -> None:
    before = {s: signal.getsignal(s) for s in OWNED}
    signal_at(monkeypatch, signal.SIGTERM, step=7)
    with pytest.raises(SystemExit) as stopped:
        runs.train(*STEADY)
    assert stopped.value.code == 128 + signal.SIGTERM
    run = runs.root / "run"
    assert saved_step(run) == 8, "last.ckpt of the step the signal arrived in"
    r = runs.results()
    assert r["status"] == "interrupted" and r["test_acc"] is None
    assert r["reason"] == "SLURM job 4242: SIGTERM; last.ckpt saved at step 8"
    assert not slurm_job.exists(), "SIGTERM: SLURM requeues the job (or not), not the run"
    assert {s: signal.getsignal(s) for s in OWNED} == before, "handlers put back"

    assert_resumes_as_if_never_stopped(runs, monkeypatch)


@pytest.mark.parametrize("step", [12, 15], ids=["mid-epoch", "last-batch-of-an-epoch"])
def test_the_time_limit_warning_saves_and_requeues_the_job(
    runs: Runs, slurm_job: Path, monkeypatch, step: int
) -> None:
    signal_at(monkeypatch, signal.SIGUSR2, step=step)  # 16 steps an epoch
    with pytest.raises(SystemExit) as stopped:
        runs.train(*STEADY)
    assert stopped.value.code == 128 + signal.SIGUSR2
    assert slurm_job.read_text() == "requeue 4242\n"
    saved = step + 1 if step != 15 else step + 2  # an epoch's last step: saved at the next
    assert saved_step(runs.root / "run") == saved
    r = runs.results()
    assert r["status"] == "requeued", "a requeued run is not finished, and not a failure"
    assert r["reason"] == f"SLURM job 4242: SIGUSR2; last.ckpt saved at step {saved}"
    assert_resumes_as_if_never_stopped(runs, monkeypatch)


def test_a_warning_before_a_validation_lets_it_run_then_saves_after_it(
    runs: Runs, slurm_job: Path, monkeypatch
) -> None:
    signal_at(monkeypatch, signal.SIGUSR2, step=9)  # step 10 is validated
    with pytest.raises(SystemExit):
        runs.train(*STEADY)
    assert saved_step(runs.root / "run") == 10
    validated = {step for (step, key) in metric_rows(runs.root / "run" / "csv" / "metrics.csv")
                 if key == "val/acc"}  # fmt: skip
    assert validated == {9}, "the validation after step 10 ran (logged at its last step, 9)"
    assert runs.results()["reason"] == "SLURM job 4242: SIGUSR2; last.ckpt saved at step 10"
    assert_resumes_as_if_never_stopped(runs, monkeypatch)


def assert_resumes_as_if_never_stopped(runs: Runs, monkeypatch) -> None:
    """The job started again by SLURM ends with the uninterrupted run's metrics and losses."""
    monkeypatch.undo()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    resumed = runs.train(*STEADY)
    assert resumed["slurm"] == {"job_id": "4242", "restarts": 1}
    assert resumed["resumed_from"] == str(runs.root / "run" / "checkpoints" / "last.ckpt")
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    straight = runs.train(*STEADY, run_dir="straight")
    for key in ("steps", "val_acc_best", "val_loss", "test_acc", "test_loss"):
        assert resumed[key] == straight[key], key
    logged = {d: metric_rows(runs.root / d / "csv" / "metrics.csv") for d in ("run", "straight")}
    assert logged["run"] == logged["straight"], "every step's losses, logged once"


def test_sigterm_inside_a_validation_drops_it_and_keeps_the_last_checkpoint(
    runs: Runs, slurm_job: Path, monkeypatch
) -> None:
    signal_at(monkeypatch, signal.SIGTERM, step=10, in_validation=True)
    with pytest.raises(SystemExit) as stopped:
        runs.train(*STEADY)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert saved_step(runs.root / "run") == 5, "the step-10 save comes after its validation"
    r = runs.results()
    assert r["reason"] == "SLURM job 4242: SIGTERM; resumes from the last last.ckpt"
    assert_resumes_as_if_never_stopped(runs, monkeypatch)


def test_outside_slurm_sigterm_is_an_interruption_as_before(runs: Runs, monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    signal_at(monkeypatch, signal.SIGTERM, step=7)
    with pytest.raises(SystemExit) as stopped:
        runs.train(*STEADY)
    assert stopped.value.code == 128 + signal.SIGTERM
    r = runs.results()
    assert (r["status"], r["reason"]) == ("interrupted", "SIGTERM")

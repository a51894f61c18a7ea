"""The SLURM path on a real one-node cluster (tests/slurm/up.sh): sweeps through Hydra's submitit
launcher, a job requeued with `scontrol requeue`, a job hit by its time-limit signal, a job
cancelled. `make test-slurm` starts the cluster, runs these and stops it; without a cluster they
are skipped, saying how to start one.

What each test saw (job states, restart counts, the step resumed from, the final metrics) is
written to $LRA_SLURM_DIR/observed/<test>.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, TINY, Runs
from test_scale import metric_rows
from wandb_records import read_offline_run

from lra.report import main as report_main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SLURM_DIR = Path(os.environ.get("LRA_SLURM_DIR", "/tmp/lra-slurm"))
COMPARED = ("steps", "val_acc_best", "val_loss", "test_acc", "test_loss")


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """The environment of a client of the local cluster; skips where there is none."""
    conf = os.environ.get("SLURM_CONF") or str(SLURM_DIR / "slurm.conf")
    if not Path(conf).exists():
        pytest.skip(f"no SLURM cluster ({conf} not found): `make test-slurm` starts one")
    env = {**os.environ, "SLURM_CONF": conf, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                               text=True, timeout=20).stdout.split()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the SLURM cluster does not answer ({e}): `make test-slurm` starts one")
    if not {"idle", "mix", "alloc"} & set(state):
        pytest.skip(f"the SLURM node is {state or 'unknown'}, not idle: see {SLURM_DIR}/log")
    return env


class Sweep:
    """`python -m lra.train -m hydra/launcher=slurm` on the tiny task, started in the background."""

    def __init__(self, cluster: dict[str, str], runs: Runs, name: str, *overrides: str) -> None:
        self.name, self.env, self.dir = name, cluster, runs.root / name
        self.overrides = overrides
        self.started = time.time()
        args = [sys.executable, "-m", "lra.train", "-m", "hydra/launcher=slurm", *TINY,
                *overrides, f"paths.data_dir={runs.data_dir}",
                f"paths.log_dir={runs.root / 'outputs'}", f"hydra.sweep.dir={self.dir}",
                f"hydra.launcher.name={name}"]  # fmt: skip
        self.log = (runs.root / f"{name}.log").open("w")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=cluster, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.states: list[str] = []

    def slurm(self, *args: str) -> str:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    def job_id(self, timeout: float = 60) -> str:
        """The job's id, once it is queued; its states are watched from then on."""
        end = time.time() + timeout
        while time.time() < end:
            if ids := self.slurm("squeue", "-h", "-n", self.name, "-o", "%i").split():
                self.watch(ids[0])
                return ids[0]
            assert self.proc.poll() is None, f"the launcher ended early: {self.output()[-3000:]}"
            time.sleep(0.5)
        raise AssertionError(f"no job {self.name} in the queue after {timeout} s")

    def watch(self, job: str) -> None:
        """From now until the launcher ends, note the job's state (squeue's) when it changes."""

        def poll() -> None:
            while self.proc.poll() is None:
                state = self.slurm("squeue", "-h", "-j", job, "-o", "%T") or "gone"
                if not self.states or self.states[-1] != state:
                    self.states.append(state)
                time.sleep(0.3)

        threading.Thread(target=poll, daemon=True).start()

    def step(self) -> int:
        """The last training step the job logged (-1 before its first)."""
        rows = [r for f in self.dir.glob("*/csv/metrics.csv") for r in metric_rows(f)]
        return max((step for step, _ in rows), default=-1)

    def wait_for_step(self, step: int, timeout: float = 180) -> None:
        end = time.time() + timeout
        while self.step() < step:
            assert time.time() < end, f"step {step} not reached in {timeout} s"
            assert self.proc.poll() is None, f"the launcher ended early: {self.output()[-3000:]}"
            time.sleep(0.3)

    def finish(self, timeout: float = 300) -> int:
        end = time.time() + timeout
        while self.proc.poll() is None:
            if time.time() > end:
                self.proc.kill()
                raise AssertionError(f"the launcher still waits after {timeout} s")
            time.sleep(0.5)
        time.sleep(0.5)  # the watcher's last look
        self.log.close()
        self.seconds = time.time() - self.started
        return self.proc.returncode

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.dir.parent / f"{self.name}.log").read_text()

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.dir.glob("*/results.json"))]


def observed(test: str, **facts: Any) -> None:
    folder = SLURM_DIR / "observed"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{test}.json").write_text(json.dumps(facts, indent=1, default=str))


def uninterrupted(runs: Runs, *overrides: str) -> dict[str, Any]:
    """The same run in this process, on one thread (a core is the job's)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return runs.train(*overrides, "logger=csv", run_dir="straight")
    finally:
        torch.set_num_threads(threads)


def same_as_uninterrupted(result: dict[str, Any], straight: dict[str, Any]) -> None:
    for key in COMPARED:
        assert result[key] == straight[key], key
    run = Path(result["run_dir"])
    logged = metric_rows(run / "csv" / "metrics.csv")
    assert logged == metric_rows(Path(straight["run_dir"]) / "csv" / "metrics.csv"), "per step"
    assert {s for s, _ in logged} == set(range(straight["steps"])), "every step logged once"
    ids = {read_offline_run(d)["id"] for d in (run / "wandb").glob("offline-run-*")}
    assert ids == {(run / "wandb_id").read_text().strip()}, "one W&B run, resumed"


def test_a_two_job_sweep_runs_both_jobs_to_their_results_in_one_wandb_group(
    cluster: dict[str, str], runs: Runs
) -> None:
    sweep = Sweep(cluster, runs, "lra-sweep", "seed=0,1")
    sweep.job_id()
    assert sweep.finish() == 0, sweep.output()[-3000:]
    results = sweep.results()
    assert [(r["seed"], r["status"], r["steps"]) for r in results] == [
        (0, "finished", 4), (1, "finished", 4)]  # fmt: skip
    assert all(r["slurm"]["job_id"] and r["slurm"]["restarts"] == 0 for r in results)
    logged = [read_offline_run(d) for d in sweep.dir.glob("*/wandb/offline-run-*")]
    assert len({run["id"] for run in logged}) == 2
    assert {run["group"] for run in logged} == {sweep.dir.name}
    ids = [r["slurm"]["job_id"] for r in results]
    states = sweep.slurm("sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(ids)).split()
    assert states == ["COMPLETED", "COMPLETED"]
    observed("sweep", seconds=sweep.seconds, jobs=ids, sacct=states,
             test_acc=[r["test_acc"] for r in results])  # fmt: skip


LONG = ["trainer.val_check_interval=200", "checkpoint_every_n_steps=100",
        "task.encoder.dropout=0.1"]  # fmt: skip


def test_a_job_requeued_mid_run_resumes_and_ends_as_if_never_stopped(
    cluster: dict[str, str], runs: Runs
) -> None:
    overrides = [*LONG, "trainer.max_steps=1200"]
    sweep = Sweep(cluster, runs, "lra-requeue", *overrides)
    job = sweep.job_id()
    sweep.wait_for_step(300)
    at = sweep.step()
    assert sweep.slurm("scontrol", "requeue", job) == ""
    straight = uninterrupted(runs, *overrides)  # meanwhile, here
    assert sweep.finish() == 0, sweep.output()[-3000:]
    (result,) = sweep.results()
    assert result["status"] == "finished" and result["slurm"] == {"job_id": job, "restarts": 1}
    last = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    assert result["resumed_from"] == str(last)
    log = (Path(result["run_dir"]) / "train.log").read_text()
    saved = int(log.split("SIGTERM; last.ckpt saved at step ")[1].split()[0])
    assert at <= saved < 1200, "saved where the requeue found it"
    assert "PENDING" in sweep.states[sweep.states.index("RUNNING") :], "queued again"
    same_as_uninterrupted(result, straight)
    observed("requeue", seconds=sweep.seconds, states=sweep.states, requeued_at_step=at,
             saved_step=saved, restarts=result["slurm"]["restarts"],
             metrics={k: result[k] for k in COMPARED},
             uninterrupted={k: straight[k] for k in COMPARED})  # fmt: skip


def test_a_two_process_ddp_job_requeued_mid_run_ends_as_if_never_stopped(
    cluster: dict[str, str], runs: Runs
) -> None:
    """Two tasks (trainer=ddp_sim: one CPU process each, over gloo). SLURM signals both; they
    agree on the step, both save it, and the requeued job's two tasks resume it. The run to
    compare with is the same job on SLURM, not requeued."""
    overrides = ["trainer=ddp_sim", *LONG, "trainer.max_steps=1500"]
    sweep = Sweep(cluster, runs, "lra-ddp-requeue", *overrides)
    job = sweep.job_id()
    sweep.wait_for_step(300)
    assert sweep.slurm("scontrol", "requeue", job) == ""
    assert sweep.finish() == 0, sweep.output()[-3000:]
    (result,) = sweep.results()
    assert result["status"] == "finished" and result["slurm"] == {"job_id": job, "restarts": 1}
    assert result["config"]["per_device_batch"] == 8, "two processes"
    log = (Path(result["run_dir"]) / "train.log").read_text()
    saved = {int(p.split()[0]) for p in log.split("SIGTERM; last.ckpt saved at step ")[1:]}
    assert len(saved) == 1, "both tasks saved the same step"
    straight_sweep = Sweep(cluster, runs, "lra-ddp-straight", *overrides)
    assert straight_sweep.finish() == 0, straight_sweep.output()[-3000:]
    (straight,) = straight_sweep.results()
    same_as_uninterrupted(result, straight)
    observed("ddp_requeue", seconds=sweep.seconds, states=sweep.states, saved_step=saved.pop(),
             restarts=result["slurm"]["restarts"], metrics={k: result[k] for k in COMPARED},
             uninterrupted={k: straight[k] for k in COMPARED})  # fmt: skip


def test_a_job_hit_by_its_time_limit_signal_is_requeued_and_ends_as_if_never_stopped(
    cluster: dict[str, str], runs: Runs
) -> None:
    """A two-minute limit with submitit's USR2 50 s before it: due 70 s into each attempt, sent
    up to 60 s early ("the resolution of event handling by Slurm", sbatch(1)), so never in the
    first seconds, before any handler is installed, where it would kill the process. The run
    trains for about 80 s (6,500 steps at 80 a second), so it needs more than one attempt."""
    overrides = [*LONG, "trainer.max_steps=6500"]
    sweep = Sweep(cluster, runs, "lra-timeout", *overrides, "hydra.launcher.timeout_min=2",
                  "hydra.launcher.signal_delay_s=50")  # fmt: skip
    job = sweep.job_id()
    straight = uninterrupted(runs, *overrides)
    assert sweep.finish(timeout=600) == 0, sweep.output()[-3000:]
    (result,) = sweep.results()
    assert result["status"] == "finished"
    assert result["slurm"]["job_id"] == job and result["slurm"]["restarts"] >= 1
    log = (Path(result["run_dir"]) / "train.log").read_text()
    saves = [int(part.split()[0]) for part in log.split("SIGUSR2; last.ckpt saved at step ")[1:]]
    assert saves and saves == sorted(saves), "each attempt went on from the one before"
    same_as_uninterrupted(result, straight)
    observed("time_limit", seconds=sweep.seconds, states=sweep.states, saved_steps=saves,
             restarts=result["slurm"]["restarts"], metrics={k: result[k] for k in COMPARED},
             uninterrupted={k: straight[k] for k in COMPARED})  # fmt: skip


def test_a_cancelled_job_is_reported_failed_by_the_sweep_and_the_report(
    cluster: dict[str, str], runs: Runs, capsys
) -> None:
    sweep = Sweep(cluster, runs, "lra-cancel", *LONG, "trainer.max_steps=3000")
    job = sweep.job_id()
    sweep.wait_for_step(50)
    sweep.slurm("scancel", job)
    cancelled = time.time()
    assert sweep.finish(timeout=120) != 0, "the sweep fails, and says why"
    waited = time.time() - cancelled
    out = sweep.output()
    assert "UncompletedJobError" in out and f"Job {job}" in out
    (result,) = sweep.results()
    assert result["status"] == "interrupted" and result["test_acc"] is None
    assert result["reason"].startswith(f"SLURM job {job}: SIGTERM")
    sacct = sweep.slurm("sacct", "-n", "-X", "-P", "-o", "State", "-j", job)
    assert sacct.startswith("CANCELLED")
    capsys.readouterr()
    assert report_main([str(sweep.dir), "--out", str(runs.root / "report")]) == 0
    table = capsys.readouterr().out
    failed = table.split("## Failed runs (1)")[1]
    assert "seed 0: interrupted: SLURM job" in failed
    observed("cancel", launcher_exit_after_s=round(waited, 1), sacct=sacct,
             status=result["status"], reason=result["reason"])  # fmt: skip

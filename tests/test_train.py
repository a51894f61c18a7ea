"""One run, in process (`train(cfg)`) and through the real CLI: results.json, checkpoints, loggers,
the summary, the sweeper's value, the errors a user meets."""

from __future__ import annotations

import ast
import csv
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import CLI, Runs, ok
from wandb_records import read_offline_run

import lra
from lra.module import NonFiniteLossError
from lra.train import main, optimized_field


def test_fast_dev_run_trains_and_tests(runs: Runs) -> None:
    results = runs.train("trainer.fast_dev_run=true", "logger=none")
    assert results["steps"] == 1
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results == runs.results(), "what train() returns is what results.json holds"
    assert results["status"] == "finished"
    source = results["data_source"]
    assert source["kind"] == "generated" and source["dir"] == str(runs.data_dir / "listops_small")
    assert set(source["sha256"]) == {"basic_train.tsv", "basic_val.tsv", "basic_test.tsv"}
    assert not (runs.root / "run" / "wandb").exists(), "logger=none runs without W&B"


def test_test_checkpoint_chooses_the_weights_tested_and_nothing_else(runs: Runs) -> None:
    common = ["logger=csv", "trainer.max_steps=6", "trainer.val_check_interval=2",
              "checkpoint_every_n_steps=4"]  # fmt: skip
    last = runs.train(*common)  # the default: LRA's code tests the final weights
    assert last["tested"] == "last" and Path(last["test_checkpoint"]).name == "last.ckpt"
    state = torch.load(last["test_checkpoint"], weights_only=False)
    assert state["global_step"] == last["steps"] == 6, "last.ckpt holds the final step"
    best = runs.train(*common, "test_checkpoint=best", run_dir="best")
    assert best["tested"] == "best" and Path(best["test_checkpoint"]).name.startswith("best-step")
    for key in ("steps", "val_acc_best", "val_loss"):
        assert best[key] == last[key], f"{key}: training is the same run"
    with pytest.raises(ValueError, match=r"test_checkpoint='newest': must be last .* or best"):
        runs.config("test_checkpoint=newest")


@pytest.mark.slow
def test_run_writes_results_json_and_an_offline_wandb_run(cli: CLI) -> None:
    proc = ok(cli.run("experiment_name=smoke", env={"COLUMNS": "80"}))  # a log file's width
    r = cli.results()
    assert r["run_name"] == "listops_small-baseline-s0"
    assert (r["task"], r["model"], r["seed"], r["steps"]) == ("listops_small", "baseline", 0, 4)
    assert 0.0 <= r["val_acc_best"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
    assert r["val_loss"] > 0 and r["test_loss"] > 0
    assert 0.0 < r["test_majority_rate"] < 1.0
    assert r["test_checkpoint"] == str(cli.root / "run" / "checkpoints" / "last.ckpt")
    assert r["tested"] == "last", "the final weights, as LRA's code tests"
    assert r["params"]["total"] > r["params"]["mixer"] > 0
    assert r["wall_seconds"] >= r["fit_seconds"] > 0 and r["train_tokens_per_s"] > 0
    assert r["config"]["task"]["vocab_size"] == 16 and r["config"]["task"]["num_classes"] == 10
    lines = proc.stdout.splitlines()
    assert f"results: {cli.root / 'run'}/results.json" in lines, "the path on one line, whole"
    (summary,) = [line for line in lines if line.startswith("listops_small-baseline-s0: test")]
    assert " (final weights), " in summary
    assert summary.endswith(
        f"{r['params']['total']:,} parameters ({r['params']['mixer']:,} in mixers)"
    )

    checkpoints = cli.root / "run" / "checkpoints"
    assert (checkpoints / "last.ckpt").exists() and list(checkpoints.glob("best-step*.ckpt"))
    with open(cli.root / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["val/acc"] for row in rows if row.get("val/acc")], "val/acc in the CSV metrics"

    (offline,) = (cli.root / "run" / "wandb").glob("offline-run-*")
    run = read_offline_run(offline)
    assert run["name"] == "listops_small-baseline-s0"
    assert run["group"] == "smoke" and run["tags"] == ["listops_small", "baseline"]
    assert run["config"]["task"]["name"] == "listops_small"
    assert run["config"]["model"]["mixer"]["name"] == "baseline"
    assert run["config"]["params"] == r["params"]
    assert run["summary"]["params/total"] == r["params"]["total"]
    assert run["config"]["data_source"] == r["data_source"], "the data's source in W&B too"


def test_val_loss_is_the_last_validations_loss(runs: Runs) -> None:
    r = runs.train("logger=csv", "trainer.max_steps=6")
    with open(runs.root / "run" / "csv" / "metrics.csv") as f:
        logged = [(int(row["step"]), float(row["val/loss"])) for row in csv.DictReader(f)
                  if row.get("val/loss")]  # fmt: skip
    assert [step for step, _ in logged] == [1, 3, 5], "validations after steps 2, 4, 6"
    assert r["val_loss"] == pytest.approx(logged[-1][1]) and r["val_loss"] != r["test_loss"]


def test_summary_prints_one_record_per_line(runs: Runs, capsys: pytest.CaptureFixture) -> None:
    deep = runs.root / ("a-rather-long-folder-name-" * 4) / "run"  # far wider than 80 columns
    runs.train("logger=none", run_dir=str(deep))
    lines = capsys.readouterr().out.splitlines()
    assert f"results: {deep}/results.json" in lines
    (summary,) = [line for line in lines if line.startswith("listops_small-baseline-s0: test")]
    assert " (final weights), " in summary
    assert "best val accuracy" in summary and summary.endswith("in mixers)")


def test_the_sweepers_value_is_the_optimized_metric(runs: Runs) -> None:
    for metric, field in [("val/acc_best", "val_acc_best"), ("val/loss", "val_loss"),
                          ("test/acc", "test_acc"), ("test/loss", "test_loss")]:  # fmt: skip
        assert optimized_field(runs.config(f"optimized_metric={metric}")) == field
    cfg = runs.config("optimized_metric=val/loss", "logger=none")
    value = main.__wrapped__(cfg)  # the function under @hydra.main, as a sweeper calls it
    assert isinstance(value, float) and value == runs.results()["val_loss"]


def test_an_unknown_optimized_metric_fails_before_training(runs: Runs) -> None:
    with pytest.raises(ValueError, match=r"optimized_metric='val/f1' is not one this run reports"):
        runs.train("optimized_metric=val/f1", "logger=none")
    with pytest.raises(ValueError, match="optimized_metric=test/acc needs test=true"):
        runs.train("optimized_metric=test/acc", "test=false", "logger=none")
    assert not (runs.root / "run" / "checkpoints").exists()


def test_resume_from_last_ckpt_continues_the_step_count(runs: Runs) -> None:
    runs.train("logger=csv", run_dir="first")
    last = runs.root / "first" / "checkpoints" / "last.ckpt"
    assert last.exists()
    second = runs.train("logger=csv", f"ckpt_path={last}", "trainer.max_steps=8", run_dir="second")
    assert second["steps"] == 8 and second["resumed_from"] == str(last)
    with open(runs.root / "second" / "csv" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert steps and min(steps) >= 4, f"the resumed run starts after step 4, logged {steps}"


def test_resume_on_a_finished_run_reports_it_and_touches_nothing(runs: Runs, capsys) -> None:
    first = runs.train("logger=csv")
    run = runs.root / "run"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    again = runs.train("logger=csv", "resume=true")
    assert again == first, "the finished run's results"
    out = capsys.readouterr().out
    assert "listops_small-baseline-s0: already finished in " in out and "nothing resumed" in out
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == before, "no file written, replaced or deleted"


def test_unknown_mixer_name_lists_the_registered_ones(runs: Runs) -> None:
    with pytest.raises(KeyError, match="unknown mixer 'nope'; registered: baseline"):
        runs.train("model.mixer.name=nope", "logger=none")


def test_a_non_finite_loss_stops_the_run_and_results_say_failed(runs: Runs, capsys) -> None:
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(here \w+; any rank "
                       r"stops all\) at step \d"):  # fmt: skip
        runs.train("task.optim.lr=1e10", "task.optim.warmup_steps=1", "logger=csv")
    r = runs.results()
    assert r["status"] == "failed" and "NonFiniteLossError" in r["reason"]
    assert r["reason"].endswith("or check the data") and "task.optim.lr (now 1e+10)" in r["reason"]
    assert r["test_acc"] is None and r["val_acc_best"] is None and 0 <= r["steps"] < 4
    assert r["params"]["total"] > 0 and r["config"]["task"]["optim"]["lr"] == 1e10
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("listops_small-baseline-s0: failed after ") for line in lines)


def test_sigterm_ends_the_run_non_zero_and_results_say_interrupted(runs: Runs, monkeypatch) -> None:
    from lra.callbacks import StepSeed

    seed_step = StepSeed.on_train_batch_start

    def terminate_at_step_2(self, trainer, module, batch, idx) -> None:
        seed_step(self, trainer, module, batch, idx)
        if trainer.global_step == 2:
            handler = signal.getsignal(signal.SIGTERM)
            assert handler not in (signal.SIG_DFL, None), "Lightning handles SIGTERM in fit"
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(StepSeed, "on_train_batch_start", terminate_at_step_2)
    with pytest.raises(SystemExit) as stop:
        runs.train("logger=none")
    assert stop.value.code == 128 + signal.SIGTERM
    r = runs.results()
    assert (r["status"], r["reason"], r["test_acc"]) == ("interrupted", "SIGTERM", None)
    assert r["steps"] == 3, "the step under way when the signal came is completed"


COMMANDS = {
    "lra.train",
    "lra.pretrain",
    "lra.params",
    "lra.report",
    "lra.data.prepare",
    "lra.verdict",
}  # python -m ...


def imported_modules(path: Path) -> set[str]:
    """Modules a file imports: `import a.b`, `from a import b` (a and a.b), import_module("a.b")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            found |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)}
    return found


def test_no_module_of_the_package_imports_a_command() -> None:
    package = Path(lra.__file__).parent
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        imports = imported_modules(path) & (COMMANDS - {name})
        assert not imports, f"{path} imports the command(s) {sorted(imports)}"
    assert imported_modules(package / "build.py") >= {"lra.registry"}, "the check reads imports"


def test_wandb_out_of_reach_is_one_clear_error_within_its_timeout(runs: Runs, monkeypatch) -> None:
    import wandb
    from wandb.errors import CommError

    asked = {}

    def unreachable(**kwargs):
        asked.update(kwargs)
        raise CommError("Run initialization has timed out after 30.0 sec.")

    monkeypatch.setattr(wandb, "init", unreachable)
    expected = r"init_timeout=30 s\): CommError: .* Set WANDB_MODE=offline to log locally"
    with pytest.raises(RuntimeError, match=r"W&B could not start its run .*" + expected):
        runs.train("logger=wandb")
    assert asked["settings"].init_timeout == 30


def test_a_requeued_slurm_job_resumes_its_run_without_being_told(runs: Runs, monkeypatch) -> None:
    """SLURM requeues a job into the same run directory; SLURM_RESTART_COUNT says it is one."""
    first = runs.train("logger=csv")
    last = runs.root / "run" / "checkpoints" / "last.ckpt"
    assert first["resumed_from"] is None and last.exists()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    (runs.root / "run" / "results.json").unlink()  # as if the first attempt was stopped
    again = runs.train("logger=csv", "trainer.max_steps=8")
    assert again["resumed_from"] == str(last) and again["steps"] == 8
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    fresh = runs.train("logger=csv", run_dir="other")
    assert fresh["resumed_from"] is None, "a first attempt starts afresh"

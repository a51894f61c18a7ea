"""End to end through the real CLI: `python -m lra.train ...` on tiny generated ListOps."""

from __future__ import annotations

import csv

from conftest import CLI, ok
from wandb_records import read_offline_run


def test_fast_dev_run_trains_and_tests(cli: CLI) -> None:
    ok(cli.run("trainer.fast_dev_run=true", "logger=none"))
    results = cli.results()
    assert results["steps"] == 1
    assert 0.0 <= results["test_acc"] <= 1.0
    assert not (cli.root / "run" / "wandb").exists(), "logger=none runs without W&B"


def test_run_writes_results_json_and_an_offline_wandb_run(cli: CLI) -> None:
    ok(cli.run("experiment_name=smoke"))
    r = cli.results()
    assert r["run_name"] == "listops_small-baseline-s0"
    assert (r["task"], r["model"], r["seed"], r["steps"]) == ("listops_small", "baseline", 0, 4)
    assert 0.0 <= r["val_acc_best"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
    assert 0.0 < r["test_majority_rate"] < 1.0
    assert r["test_checkpoint"].endswith(".ckpt") and "best" in r["test_checkpoint"]
    assert r["params"]["total"] > r["params"]["mixer"] > 0
    assert r["wall_seconds"] >= r["fit_seconds"] > 0 and r["train_tokens_per_s"] > 0
    assert r["config"]["task"]["vocab_size"] == 16 and r["config"]["task"]["num_classes"] == 10

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


def test_resume_from_last_ckpt_continues_the_step_count(cli: CLI) -> None:
    ok(cli.run("logger=csv", run_dir="first"))
    last = cli.root / "first" / "checkpoints" / "last.ckpt"
    assert last.exists()
    ok(cli.run("logger=csv", f"ckpt_path={last}", "trainer.max_steps=8", run_dir="second"))
    assert cli.results("second")["steps"] == 8
    with open(cli.root / "second" / "csv" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert steps and min(steps) >= 4, f"the resumed run starts after step 4, logged {steps}"


def test_unknown_task_or_model_is_a_clear_error(cli: CLI) -> None:
    proc = cli.run("task=listopz", tiny=False)
    assert proc.returncode != 0
    assert "Could not find 'task/listopz'" in proc.stderr and "listops_small" in proc.stderr
    proc = cli.run("model=transformerz", tiny=False)
    assert proc.returncode != 0
    assert "Could not find 'model/transformerz'" in proc.stderr and "baseline" in proc.stderr


def test_unknown_mixer_name_lists_the_registered_ones(cli: CLI) -> None:
    proc = cli.run("model.mixer.name=nope", "logger=none")
    assert proc.returncode != 0
    assert "unknown mixer 'nope'; registered: baseline" in proc.stderr


def test_missing_data_without_generation_names_the_path_and_the_command(cli: CLI) -> None:
    proc = cli.run("task.data.generate=false", "logger=none")
    assert proc.returncode != 0
    expected = f"{cli.data_dir}/listops_small/basic_train.tsv not found"
    assert expected in proc.stderr
    assert "python -m lra.data.prepare listops_small" in proc.stderr

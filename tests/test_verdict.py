"""`python -m lra.verdict`: the grid as one command, resumed where it stopped, then its report."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CLI, TINY, ok

from lra.build import compose
from lra.verdict import load_preset, missing, run_dir

GRID = ["--tasks", "listops_small", "--models", "baseline,igloo"]
STEPS = ("pretrain.steps=2",)  # for the self-pretrained runs alone


def verdict(cli: CLI, out: Path, *args: str, overrides: tuple[str, ...] = ()):
    tiny = [o for o in TINY if not o.startswith("task=")]  # the verdict names the tasks
    return cli.run(*args, "--out", str(out), "--", *tiny, *overrides, "logger=csv",
                   f"paths.data_dir={cli.data_dir}", f"paths.log_dir={cli.root / 'outputs'}",
                   module="lra.verdict")  # fmt: skip


def test_verdict_reruns_only_the_missing_runs_of_a_half_finished_grid(cli: CLI, tmp_path) -> None:
    out = tmp_path / "verdict"
    first = ok(verdict(cli, out, *GRID, "--seeds", "0"))
    assert "0 of 2 runs finished; running 2" in first.stdout
    done = {m: run_dir(out, "listops_small", m, 0) / "results.json" for m in ("baseline", "igloo")}
    before = {m: (p.read_bytes(), p.stat().st_mtime_ns) for m, p in done.items()}
    # a run killed before it finished: it has no results.json
    second = ok(verdict(cli, out, *GRID, "--seeds", "0,1"))
    assert "2 of 4 runs finished; running 2" in second.stdout
    assert "seed=1" in second.stdout and "seed=0," not in second.stdout
    for m, p in done.items():
        assert (p.read_bytes(), p.stat().st_mtime_ns) == before[m], f"{m} seed 0 was rerun"
    assert missing(out, ["listops_small"], ["baseline", "igloo"], [0, 1]) == {}
    results = [json.loads(p.read_text()) for p in (out / "runs").glob("*/results.json")]
    assert sorted((r["model"], r["seed"]) for r in results) == [
        ("baseline", 0), ("baseline", 1), ("igloo", 0), ("igloo", 1)]  # fmt: skip
    assert {r["config"]["experiment_name"] for r in results} == {"verdict-verdict"}, "one group"
    assert all(r["flops_per_step"] > 0 and r["steps_per_s"] > 0 for r in results)
    md = (out / "report" / "leaderboard.md").read_text()
    assert "| listops_small | igloo |" in md and "too few seeds" in md
    third = ok(verdict(cli, out, *GRID, "--seeds", "0,1"))
    assert "4 of 4 runs finished; running 0" in third.stdout


def test_cpu_preset_names_two_generated_tasks_four_models_three_seeds() -> None:
    preset = load_preset("cpu")
    assert preset["tasks"] == ["listops_small", "pathfinder_cpu"]
    assert preset["models"] == ["baseline", "disentangled", "igloo", "igloo_lra"]
    assert preset["seeds"] == [0, 1, 2]
    cfg = compose(["task=pathfinder_cpu"])
    assert cfg.task.data.generate and cfg.task.data.resolution == 16
    assert cfg.task.max_len == 16 * 16


def test_an_unknown_preset_is_named(cli: CLI) -> None:
    proc = cli.run("--preset", "nope", module="lra.verdict")
    assert proc.returncode != 0 and "no verdict preset 'nope'" in proc.stderr
    assert "cpu" in proc.stderr


def test_the_cpu_pathfinder_generates_its_own_16px_set_and_trains(runs) -> None:
    r = runs.train(
        "task=pathfinder_cpu", "task.data.generator.n=40", "task.data.generator.batch_size=20",
        "task.optim.batch_size=8", "trainer=cpu", "trainer.max_steps=2", "logger=none",
        "trainer.enable_progress_bar=false", "task.data.num_workers=0", tiny=False,
    )  # fmt: skip
    assert r["status"] == "finished" and r["steps"] == 2 and r["params"]["match"] is True
    images = list((runs.data_dir / "pathfinder_cpu" / "pathfinder16").rglob("*.png"))
    assert len(images) == 40


def test_the_pretrain_axis_runs_scratch_and_self_pretrained_cells_and_reports_them_side_by_side(
    cli: CLI, tmp_path
) -> None:
    out = tmp_path / "verdict"
    proc = ok(verdict(cli, out, "--tasks", "listops_small", "--models", "igloo,igloo_lra",
                      "--pretrain", "none,mlm", "--seeds", "0", overrides=STEPS))  # fmt: skip
    assert "igloo_lra is a whole network with its own head" in proc.stdout
    assert "0 of 3 runs finished; running 3" in proc.stdout
    assert {p.name for p in (out / "runs").iterdir() if p.is_dir()} == {
        "listops_small-igloo-s0", "listops_small-igloo_lra-s0",
        "listops_small-igloo-mlm-s0"}  # fmt: skip
    tuned = json.loads(
        (run_dir(out, "listops_small", "igloo", 0, "mlm") / "results.json").read_text()
    )
    assert tuned["pretrained"]["steps"] == 2 and tuned["steps"] == 4, "the same fine-tuning steps"
    scratch = json.loads((run_dir(out, "listops_small", "igloo", 0) / "results.json").read_text())
    assert scratch["pretrained"] is None and scratch["steps"] == 4
    md = (out / "report" / "leaderboard.md").read_text()
    assert "## Self-pretraining: from scratch vs self-pretrained" in md
    assert "| listops_small | igloo+mlm | " in md and "Incomplete runs (0)" in md
    assert (out / "report" / "self_pretraining.csv").is_file()
    assert missing(out, ["listops_small"], ["igloo", "igloo_lra"], [0], ["none", "mlm"]) == {}
    again = ok(verdict(cli, out, "--tasks", "listops_small", "--models", "igloo,igloo_lra",
                       "--pretrain", "none,mlm", "--seeds", "0", overrides=STEPS))  # fmt: skip
    assert "3 of 3 runs finished; running 0" in again.stdout


def test_cpu_pretrain_preset_is_the_cpu_verdict_with_the_pretrain_axis() -> None:
    cpu, pre = load_preset("cpu"), load_preset("cpu_pretrain")
    assert pre["tasks"] == cpu["tasks"] and pre["seeds"] == cpu["seeds"]
    assert pre["models"] == [m for m in cpu["models"] if m != "igloo_lra"]
    assert pre["pretrain"] == ["none", "mlm"]
    assert pre["overrides"] == cpu["overrides"] and pre["task_overrides"] == cpu["task_overrides"]
    assert set(pre["pretrain_overrides"]) == set(pre["tasks"])

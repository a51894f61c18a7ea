"""Matched parameter counts: the solver, the budget errors, and the counts of a real run."""

from __future__ import annotations

import pytest
import torch
from conftest import CLI, ok
from omegaconf import OmegaConf
from wandb_records import read_offline_run

from lra.params import (
    ParameterBudgetError,
    budget,
    closest_value,
    compose,
    configs,
    count,
    match_parameters,
)
from lra.train import build_net


def test_closest_value_finds_the_nearest_total() -> None:
    total = lambda v: 1000 + 37 * v  # noqa: E731
    assert closest_value(total, 1000 + 37 * 50 + 10, start=8) == 50
    assert closest_value(total, 1000 + 37 * 50 + 30, start=8) == 51
    assert closest_value(total, 10, start=8) == 1, "below every reachable total: the smallest"
    assert closest_value(total, 10, start=8, low=5) == 5, "never below the knob's min"
    assert closest_value(total, 10**6, start=8, high=60) == 60, "never above its max"
    assert closest_value(total, 1000 + 37 * 7, start=64, low=2, high=64) == 7


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows[1:]]


def test_every_task_and_model_is_within_one_percent_and_check_exits_0(cli: CLI) -> None:
    proc = ok(cli.run("--check", module="lra.params"))
    rows = table_rows(proc.stdout)
    assert {(r[0], r[1]) for r in rows} == {
        (t, m) for t in configs("task") for m in configs("model")
    }
    for task, model, budget_, total, deviation, knobs, _ in rows:
        b, t = int(budget_.replace(",", "")), int(total.replace(",", ""))
        assert abs(t - b) <= 0.01 * b and abs(float(deviation.rstrip("%"))) <= 1.0, (task, model)
        assert "outside tolerance" not in knobs and knobs.startswith("`"), (task, model)
    baseline = ok(cli.run("--check", "model=baseline", module="lra.params"))
    assert all(r[4] == "+0.00%" for r in table_rows(baseline.stdout)), "the budget is baseline's"
    tight = cli.run("--check", "task=pathfinder", "params.tolerance=0.0001", module="lra.params")
    assert tight.returncode == 1 and "outside tolerance" in tight.stdout, "--check can fail"


def test_the_budget_is_the_baseline_at_the_tasks_own_encoder_whatever_the_model_changes() -> None:
    image = compose(["task=image", "model=disentangled"])  # learned positions: 1024 x 128
    assert budget(image) == count(compose(["task=image", "model=baseline"]))["total"]
    net = build_net(image)
    assert not any(name.endswith(".pos") for name, _ in net.named_parameters()), "no table"


def test_knobs_are_turned_in_order_until_the_budget_is_met() -> None:
    text = compose(["task=text", "model=igloo"])
    assert list(match_parameters(text)["knobs"]) == ["task.encoder.qkv_dim"], "the first suffices"
    assert text.task.encoder.mlp_dim == 1024 and text.model.mixer.scale_rows == 4000
    small = compose(["task=pathfinder", "model=igloo"])  # n = 1024, D = 32: B cannot be n x dv
    facts = match_parameters(small)
    assert list(facts["knobs"])[:2] == ["task.encoder.qkv_dim", "model.mixer.scale_rows"]
    assert facts["knobs"]["task.encoder.qkv_dim"] == 8, "held at its min, where it came closest"
    assert abs(facts["deviation"]) <= 0.01
    for path, value in facts["knobs"].items():
        assert OmegaConf.select(small, path) == value
    assert count(small)["total"] == facts["total"]


def test_an_unreachable_budget_fails_before_training_and_says_why(cli: CLI) -> None:
    cfg = compose(["task=listops_small", "model=baseline", "params.budget=1000"])
    with pytest.raises(ParameterBudgetError, match=r"closest reachable total is [\d,]+ parameters "
                       r"with task.encoder.mlp_dim=1, .*from the budget 1,000"):  # fmt: skip
        match_parameters(cfg)
    proc = cli.run("params.match=true", "params.budget=1000", "logger=none")
    assert proc.returncode != 0 and "closest reachable total" in proc.stderr
    assert not (cli.root / "run" / "checkpoints").exists(), "stopped before training"


def test_a_budget_is_met_by_turning_the_knob() -> None:
    cfg = compose(["task=listops_small", "model=baseline", "params.budget=90000"])
    facts = match_parameters(cfg)
    assert facts["knobs"] == {"task.encoder.mlp_dim": cfg.task.encoder.mlp_dim}
    assert cfg.task.encoder.mlp_dim > 128 and abs(facts["total"] - 90000) / 90000 < 0.01
    net = build_net(cfg)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == facts["total"]


def test_match_false_compares_at_equal_dimensions() -> None:
    cfg = compose(["task=listops_small", "model=baseline", "params.match=false"])
    facts = match_parameters(cfg)
    assert facts["match"] is False and facts["knobs"] == {} and cfg.task.encoder.mlp_dim == 128


def test_counts_in_results_are_the_trainable_parameters_of_the_trained_model(cli: CLI) -> None:
    ok(cli.run("params.match=true", "params.budget=30000"))
    r = cli.results()
    p = r["params"]
    assert p["match"] and p["budget"] == 30000 and abs(p["deviation"]) <= 0.01
    (offline,) = (cli.root / "run" / "wandb").glob("offline-run-*")
    run = read_offline_run(offline)
    assert run["config"]["params"] == p, "budget, knobs, totals, deviation in the W&B config"
    assert run["summary"]["params/deviation"] == p["deviation"]
    assert p["knobs"] == {"task.encoder.mlp_dim": r["config"]["task"]["encoder"]["mlp_dim"]}
    net = build_net(OmegaConf.create(r["config"]))
    named = {n: t.numel() for n, t in net.named_parameters() if t.requires_grad}
    assert sum(named.values()) == p["total"]
    state = torch.load(cli.root / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    trained = {k.removeprefix("net."): v.numel() for k, v in state["state_dict"].items()}
    assert {n: trained[n] for n in named} == named, "the same tensors as in the trained weights"

"""Matched parameter counts: the solver, the budget errors, and the counts of a real run."""

from __future__ import annotations

import pytest
import torch
from conftest import CLI, ok
from omegaconf import OmegaConf

from lra.params import ParameterBudgetError, closest_value, compose, configs, match_parameters
from lra.train import build_net


def test_closest_value_finds_the_nearest_total() -> None:
    total = lambda v: 1000 + 37 * v  # noqa: E731
    assert closest_value(total, 1000 + 37 * 50 + 10, start=8) == 50
    assert closest_value(total, 1000 + 37 * 50 + 30, start=8) == 51
    assert closest_value(total, 10, start=8) == 1, "below every reachable total: the smallest"


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows[1:]]


def test_params_table_covers_every_task_and_model_within_tolerance_or_says_why(cli: CLI) -> None:
    proc = cli.run("--check", module="lra.params")
    rows = table_rows(proc.stdout)
    assert {(r[0], r[1]) for r in rows} == {
        (t, m) for t in configs("task") for m in configs("model")
    }
    off = [r for r in rows if "outside tolerance" in r[5]]
    for r in rows:
        deviation = abs(float(r[4].strip("*").rstrip("%")))
        assert (deviation > 1.0) == (r in off), r
    assert proc.returncode == (1 if off else 0), "--check fails exactly when one is off"
    baseline = ok(cli.run("--check", "model=baseline", module="lra.params"))
    assert all(r[4] == "+0.00%" for r in table_rows(baseline.stdout)), "the budget is baseline's"


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
    assert facts["knob"] == "task.encoder.mlp_dim" and cfg.task.encoder.mlp_dim == facts["value"]
    assert facts["value"] > 128 and abs(facts["total"] - 90000) / 90000 < 0.01
    net = build_net(cfg)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == facts["total"]


def test_match_false_compares_at_equal_dimensions() -> None:
    cfg = compose(["task=listops_small", "model=baseline", "params.match=false"])
    facts = match_parameters(cfg)
    assert facts["match"] is False and facts["knob"] is None and cfg.task.encoder.mlp_dim == 128


def test_counts_in_results_are_the_trainable_parameters_of_the_trained_model(cli: CLI) -> None:
    ok(cli.run("logger=csv", "params.match=true", "params.budget=30000"))
    r = cli.results()
    p = r["params"]
    assert p["match"] and p["budget"] == 30000 and abs(p["deviation"]) <= 0.01
    assert r["config"]["task"]["encoder"]["mlp_dim"] == p["value"]
    net = build_net(OmegaConf.create(r["config"]))
    named = {n: t.numel() for n, t in net.named_parameters() if t.requires_grad}
    assert sum(named.values()) == p["total"]
    state = torch.load(cli.root / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    trained = {k.removeprefix("net."): v.numel() for k, v in state["state_dict"].items()}
    assert {n: trained[n] for n in named} == named, "the same tensors as in the trained weights"

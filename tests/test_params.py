"""Matched parameter counts: the solver, the budget errors, `python -m lra.params`, and the counts
of a real run."""

from __future__ import annotations

import pytest
import torch
from conftest import Runs
from omegaconf import OmegaConf
from wandb_records import read_offline_run

from lra.build import build_net, compose, configs, count, with_model
from lra.matching import ParameterBudgetError, budget, closest_value, match_parameters
from lra.params import main as params_main


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


def lra_params(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = params_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_task_and_model_is_within_one_percent_and_check_exits_0(capsys) -> None:
    code, stdout, _ = lra_params(capsys, "--check")
    assert code == 0
    rows = table_rows(stdout)
    assert {(r[0], r[1]) for r in rows} == {
        (t, m) for t in configs("task") for m in configs("model")
    }
    for task, model, budget_, total, deviation, knobs, _ in rows:
        b, t = int(budget_.replace(",", "")), int(total.replace(",", ""))
        assert abs(t - b) <= 0.01 * b and abs(float(deviation.rstrip("%"))) <= 1.0, (task, model)
        assert "outside tolerance" not in knobs and knobs.startswith("`"), (task, model)
    code, stdout, _ = lra_params(capsys, "--check", "model=baseline")
    assert code == 0 and all(r[4] == "+0.00%" for r in table_rows(stdout)), "baseline's budget"
    code, stdout, _ = lra_params(capsys, "--check", "task=pathfinder", "params.tolerance=0.0001")
    assert code == 1 and "outside tolerance" in stdout, "--check can fail"


def test_a_null_knob_is_left_out_and_a_bad_one_is_an_error_row_not_a_crash(capsys) -> None:
    # igloo_lra's CIFAR mode: E = null feeds pixel values as one channel; P alone meets the budget
    code, stdout, _ = lra_params(capsys, "task=image", "model=igloo_lra",
                                 "model.net.embedding_dim=null")  # fmt: skip
    ((*_, knobs, _share),) = table_rows(stdout)
    assert code == 0 and knobs.startswith("`model.net.num_patches` = ") and "embedding" not in knobs
    code, stdout, stderr = lra_params(capsys, "task=image", "model=igloo_lra",
                                      "model.net.embedding_dim=abc")  # fmt: skip
    assert code == 1
    assert "**error**: model 'igloo_lra': match.knobs path 'model.net.embedding_dim' is not an " \
        "integer in the config (found 'abc')" in stdout  # fmt: skip
    assert "task=image model=igloo_lra: model 'igloo_lra'" in stderr


def test_a_model_without_knobs_is_counted_as_it_is() -> None:
    cfg = compose(["task=listops_small", "model=baseline", "model.match.knobs=[]"])
    at_budget = match_parameters(cfg)  # the baseline is its own budget: nothing to turn
    assert at_budget.params.knobs == {} and at_budget.params.deviation == 0.0
    with pytest.raises(ParameterBudgetError, match=r"with no knob to turn \(match.knobs is empty"):
        match_parameters(compose(["task=listops_small", "model=igloo", "model.match.knobs=[]"]))


def test_counting_builds_on_meta_without_drawing_from_the_generator() -> None:
    for model in configs("model"):
        cfg = compose(["task=listops_small", f"model={model}"])
        state = torch.get_rng_state()
        counts = count(cfg)
        assert torch.equal(torch.get_rng_state(), state), f"{model}: counting drew random numbers"
        torch.manual_seed(0)
        net = build_net(cfg)
        assert counts["total"] == sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_matching_returns_a_new_config_and_leaves_its_argument_alone() -> None:
    cfg = compose(["task=image", "model=disentangled"])
    before = OmegaConf.to_yaml(cfg)
    matched = match_parameters(cfg)
    assert OmegaConf.to_yaml(cfg) == before, "the argument is unchanged"
    assert matched.task.encoder.pos_emb == "none", "the encoder the network is built with"
    assert matched.params.knobs == {"task.encoder.mlp_dim": matched.task.encoder.mlp_dim}
    assert matched.params.budget == budget(cfg) and matched.params.total == count(matched)["total"]
    assert match_parameters(matched).params.total == matched.params.total, "matching is stable"


def test_the_budget_is_the_baseline_at_the_tasks_own_encoder_whatever_the_model_changes() -> None:
    image = compose(["task=image", "model=disentangled"])  # learned positions: 1024 x 128
    assert budget(image) == count(compose(["task=image", "model=baseline"]))["total"]
    assert budget(image) == count(with_model(image, "baseline"))["total"]
    net = build_net(image)
    assert not any(name.endswith(".pos") for name, _ in net.named_parameters()), "no table"


def test_knobs_are_turned_in_order_until_the_budget_is_met() -> None:
    text = match_parameters(compose(["task=text", "model=igloo"]))
    assert list(text.params.knobs) == ["task.encoder.qkv_dim"], "the first suffices"
    assert text.task.encoder.mlp_dim == 1024 and text.model.mixer.scale_rows == 4000
    small = match_parameters(compose(["task=pathfinder", "model=igloo"]))  # n = 1024, D = 32
    facts = small.params
    assert list(facts["knobs"])[:2] == ["task.encoder.qkv_dim", "model.mixer.scale_rows"]
    assert facts["knobs"]["task.encoder.qkv_dim"] == 8, "held at its min, where it came closest"
    assert abs(facts["deviation"]) <= 0.01
    for path, value in facts["knobs"].items():
        assert OmegaConf.select(small, path) == value
    assert count(small)["total"] == facts["total"]


def test_an_unreachable_budget_fails_before_training_and_says_why(runs: Runs) -> None:
    cfg = compose(["task=listops_small", "model=baseline", "params.budget=1000"])
    with pytest.raises(ParameterBudgetError, match=r"closest reachable total is [\d,]+ parameters "
                       r"with task.encoder.mlp_dim=1, .*from the budget 1,000"):  # fmt: skip
        match_parameters(cfg)
    with pytest.raises(ParameterBudgetError, match="closest reachable total"):
        runs.train("params.match=true", "params.budget=1000", "logger=none")
    assert not (runs.root / "run" / "checkpoints").exists(), "stopped before training"


def test_a_budget_is_met_by_turning_the_knob() -> None:
    cfg = match_parameters(compose(["task=listops_small", "model=baseline", "params.budget=90000"]))
    facts = cfg.params
    assert facts["knobs"] == {"task.encoder.mlp_dim": cfg.task.encoder.mlp_dim}
    assert cfg.task.encoder.mlp_dim > 128 and abs(facts["total"] - 90000) / 90000 < 0.01
    net = build_net(cfg)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == facts["total"]


def test_match_false_compares_at_equal_dimensions() -> None:
    cfg = match_parameters(compose(["task=listops_small", "model=baseline", "params.match=false"]))
    facts = cfg.params
    assert facts["match"] is False and facts["knobs"] == {} and cfg.task.encoder.mlp_dim == 128


def test_counts_in_results_are_the_trainable_parameters_of_the_trained_model(runs: Runs) -> None:
    r = runs.train("params.match=true", "params.budget=30000")
    p = r["params"]
    assert set(p) == {"match", "budget", "knobs", "total", "mixer", "deviation"}
    assert p["match"] and p["budget"] == 30000 and abs(p["deviation"]) <= 0.01
    assert {k: r["config"]["params"][k] for k in p} == p, "the config records the same facts"
    (offline,) = (runs.root / "run" / "wandb").glob("offline-run-*")
    run = read_offline_run(offline)
    assert run["config"]["params"] == p, "budget, knobs, totals, deviation in the W&B config"
    assert run["summary"]["params/deviation"] == p["deviation"]
    assert p["knobs"] == {"task.encoder.mlp_dim": r["config"]["task"]["encoder"]["mlp_dim"]}
    net = build_net(OmegaConf.create(r["config"]))
    named = {n: t.numel() for n, t in net.named_parameters() if t.requires_grad}
    assert sum(named.values()) == p["total"]
    state = torch.load(runs.root / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    trained = {k.removeprefix("net."): v.numel() for k, v in state["state_dict"].items()}
    assert {n: trained[n] for n in named} == named, "the same tensors as in the trained weights"

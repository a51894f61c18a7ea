"""Matched parameter counts (lra/matching.py): the solver, the budget, knobs, errors, and the run
config it returns."""

from __future__ import annotations

import pytest
import torch
from conftest import Runs
from omegaconf import OmegaConf

from lra.build import build_module, build_net, compose, configs, count, with_model
from lra.matching import ParameterBudgetError, budget, closest_value, match_parameters


def test_closest_value_finds_the_nearest_total() -> None:
    total = lambda v: 1000 + 37 * v  # noqa: E731
    assert closest_value(total, 1000 + 37 * 50 + 10, start=8) == 50
    assert closest_value(total, 1000 + 37 * 50 + 30, start=8) == 51
    assert closest_value(total, 10, start=8) == 1, "below every reachable total: the smallest"
    assert closest_value(total, 10, start=8, low=5) == 5, "never below the knob's min"
    assert closest_value(total, 10**6, start=8, high=60) == 60, "never above its max"
    assert closest_value(total, 1000 + 37 * 7, start=64, low=2, high=64) == 7


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


def test_matching_again_replaces_every_fact() -> None:
    matched = match_parameters(compose(["task=pathfinder", "model=igloo"]))
    assert len(matched.params.knobs) >= 2
    again = match_parameters(matched)  # the same network; its record names this pass's knobs
    assert again.params.total == matched.params.total
    for path, value in matched.params.knobs.items():
        assert OmegaConf.select(again, path) == value
    assert set(again.params.knobs) <= set(matched.params.knobs)
    with_override = OmegaConf.merge(matched, {"params": {"match": False}})
    off = match_parameters(with_override)
    assert off.params.match is False and off.params.knobs == {}, "no knob of the earlier match"


@pytest.mark.parametrize("given", [0, -5])
def test_a_budget_must_be_a_positive_count(given: int) -> None:
    with pytest.raises(ValueError, match=rf"params.budget={given}: a budget is a positive"):
        match_parameters(compose(["task=listops_small", f"params.budget={given}"]))


def test_matching_leaves_the_initial_weights_as_they_were() -> None:
    cfg = compose(["task=listops_small", "model=igloo", "params.match=false"])
    torch.manual_seed(0)
    plain = build_module(cfg).state_dict()
    torch.manual_seed(0)
    matched = match_parameters(cfg)  # counts on meta: no draw from the generator
    rebuilt = build_module(matched).state_dict()
    assert plain.keys() == rebuilt.keys()
    assert all(torch.equal(plain[k], rebuilt[k]) for k in plain)

"""`python -m lra.params`: the table of matched counts, its exit codes, and the counts a run
records."""

from __future__ import annotations

import pytest
import torch
from conftest import Runs
from omegaconf import OmegaConf
from wandb_records import read_offline_run

from lra.build import build_net, configs
from lra.params import main as params_main


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
    assert all(r[4] == "+0.00%" for r in rows if r[1] == "baseline"), "the budget is baseline's"
    code, stdout, _ = lra_params(capsys, "model=baseline", "task=text")
    assert code == 0 and [r[:2] for r in table_rows(stdout)] == [["text", "baseline"]]
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

"""`python -m lra.gpucheck`: the dry run through the real CLI, and what makes the check fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, ok

from lra import gpucheck
from lra.build import configs
from lra.gpucheck import DRY_RUN, NO_CUDA, Point, Row, main


@pytest.mark.slow
def test_dry_run_passes_its_stages_and_writes_the_table(tmp_path: Path) -> None:
    """The in-process stages (`bench` and `cli` start a process a point, a minute more here): CI
    runs the whole dry run, `python -m lra.gpucheck --dry-run` (.ci/run)."""
    out = tmp_path / "gpucheck"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    here = ["train", "disentangled"]
    proc = ok(subprocess.run(
        [sys.executable, "-m", "lra.gpucheck", "--dry-run", "--stages", *here, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    ))  # fmt: skip
    assert "| stage | check | status | figure |" in proc.stdout
    for stage in here:
        assert f"| {stage} |" in proc.stdout
    record = json.loads((out / "gpucheck.json").read_text())
    assert (out / "gpucheck.md").read_text().count("\n| ") == len(record["rows"]) + 1
    rows = {(r["stage"], r["check"]): r for r in record["rows"]}
    assert {r["status"] for r in rows.values()} <= {"ok", "skip"}
    tasks, models = configs("task"), configs("model")
    for task in tasks:
        for model in models:
            train = rows[("train", f"{task}/{model}")]
            assert train["status"] == "ok" and train["detail"]["seconds_per_step"] > 0
            assert not train["detail"]["unused"] and not train["detail"]["nonfinite"]
        assert rows[("disentangled", f"sdpa vs eager: {task}")]["status"] == "ok"
        assert rows[("disentangled", f"flex vs eager: {task}")]["status"] == "skip"  # CPU
    assert rows[("train", "text/disentangled")]["detail"]["impls"] == [["sdpa", "sdpa"]]


def stages(**checks) -> dict:
    """STAGES with one stage, "train", of the given checks (name -> run), each on the budget."""
    return {"train": lambda run: [Point("train", c, f, run.budget_s) for c, f in checks.items()]}


def test_a_failing_or_late_point_makes_the_exit_code_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Row:
        raise ValueError("the kernel disagrees")

    def fine() -> Row:
        return Row("train", "fine", "ok", "1 s/step")

    monkeypatch.setattr(gpucheck, "STAGES", stages(fine=fine))
    assert main(["--dry-run", "--out", str(tmp_path / "ok")]) == 0

    monkeypatch.setattr(gpucheck, "STAGES", stages(fine=fine, broken=broken))
    assert main(["--dry-run", "--out", str(tmp_path / "fail")]) == 1
    rows = json.loads((tmp_path / "fail" / "gpucheck.json").read_text())["rows"]
    assert [(r["check"], r["status"]) for r in rows] == [("fine", "ok"), ("broken", "fail")]
    assert rows[1]["figure"] == "ValueError: the kernel disagrees"

    t0 = time.perf_counter()
    monkeypatch.setattr(gpucheck, "STAGES", stages(late=lambda: time.sleep(30)))
    assert main(["--dry-run", "--budget-s", "0.3", "--out", str(tmp_path / "late")]) == 1
    assert time.perf_counter() - t0 < 10
    (row,) = json.loads((tmp_path / "late" / "gpucheck.json").read_text())["rows"]
    assert row["status"] == "timeout" and row["figure"] == "over its 0.3 s budget"


def test_a_command_past_its_budget_is_killed() -> None:
    t0 = time.perf_counter()
    code, _ = gpucheck.run_command([sys.executable, "-c", "import time; time.sleep(60)"], 0.5)
    assert code is None and time.perf_counter() - t0 < 10


def test_an_oom_is_retried_at_half_the_batch_until_it_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = []

    def fit_steps(cfg, batch, profile, root):
        tried.append(batch)
        if batch > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"batch": batch, "n": 64, "seconds_per_step": 0.1, "peak_gib": 70.0,
                "impls": [], "unused": [], "nonfinite": []}  # fmt: skip

    monkeypatch.setattr(gpucheck, "fit_steps", fit_steps)
    profile = replace(DRY_RUN, overrides=(*DRY_RUN.overrides, "task.optim.batch_size=16"))
    row = gpucheck.train_point(profile, "text", "baseline", tmp_path)
    assert tried == [16, 8, 4]
    assert row.status == "fail" and "OOM at B=16, largest that fits 4" in row.figure


def test_without_cuda_it_asks_for_the_dry_run(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2
    assert NO_CUDA in capsys.readouterr().err

"""`python -m lra.report` on hand-made results.json files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from conftest import CLI, ok

ACC = {  # (task, model) -> test accuracies over seeds 0, 1, 2
    ("listops", "baseline"): [0.36, 0.38, 0.37],
    ("listops", "igloo"): [0.40, 0.35],
    ("text", "baseline"): [0.64, 0.66, 0.61],
    ("retrieval", "baseline"): [0.57],
    ("image", "baseline"): [0.42, 0.43],
    ("pathfinder", "baseline"): [0.71, 0.72],
    ("pathx", "baseline"): [0.50],
}


def write_runs(root: Path) -> None:
    for (task, model), accs in ACC.items():
        for seed, acc in enumerate(accs):
            d = root / "multiruns" / "sweep" / f"{task}-{model}-s{seed}"
            d.mkdir(parents=True)
            results = {"task": task, "model": model, "seed": seed, "test_acc": acc,
                       "tested": "last",
                       "params": {"total": 1000 + len(task), "mixer": 10}}  # fmt: skip
            (d / "results.json").write_text(json.dumps(results))
    crashed = root / "runs" / "text-igloo-s0" / "t0"
    crashed.mkdir(parents=True)
    (crashed / "results.json").write_text(
        json.dumps(
            {
                "task": "text",
                "model": "igloo",
                "seed": 0,
                "test_acc": None,
                "tested": None,
                "params": {},
            }
        )
    )
    diverged = root / "runs" / "listops-baseline-s9" / "t2"  # a number, but not a result
    diverged.mkdir(parents=True)
    (diverged / "results.json").write_text(
        json.dumps({"task": "listops", "model": "baseline", "seed": 9, "test_acc": 0.12,
                    "status": "failed", "reason": "NonFiniteLossError: at step 3", "params": {},
                    "tested": None})
    )  # fmt: skip
    killed = root / "runs" / "image-igloo-s4" / "t1"
    (killed / ".hydra").mkdir(parents=True)
    (killed / "checkpoints").mkdir()
    (killed / ".hydra" / "config.yaml").write_text(
        "task:\n  name: image\nmodel:\n  name: igloo\nseed: 4\n"
    )


def test_report_reproduces_means_stds_and_lists_incomplete_runs(cli: CLI, tmp_path: Path) -> None:
    write_runs(tmp_path / "outputs")
    out = tmp_path / "report"
    proc = ok(cli.run(str(tmp_path / "outputs"), "--out", str(out), "--reference",
                      module="lra.report"))  # fmt: skip
    with open(out / "leaderboard.csv") as f:
        rows = {(r["task"], r["model"]): r for r in csv.DictReader(f)}
    assert set(rows) == set(ACC)
    for key, accs in ACC.items():
        pct = [100 * a for a in accs]
        assert float(rows[key]["mean"]) == pytest.approx(statistics.mean(pct))
        std = statistics.stdev(pct) if len(pct) > 1 else 0.0
        assert float(rows[key]["std"]) == pytest.approx(std, abs=1e-6)
        assert int(rows[key]["n"]) == len(accs)

    md = (out / "leaderboard.md").read_text()
    assert md == proc.stdout.split("wrote ")[0].rstrip("\n") + "\n"
    five = [statistics.mean(100 * a for a in ACC[(t, "baseline")]) for t in
            ("listops", "text", "retrieval", "image", "pathfinder")]  # fmt: skip
    baseline_row = next(line for line in md.splitlines() if line.startswith("| baseline |"))
    assert f"| {statistics.mean(five):.2f} |" in baseline_row, "Avg over the five tasks"
    assert baseline_row.rstrip(" |").endswith("50.00 ± 0.00 (n=1)"), "Path-X apart, after Avg"
    igloo_row = next(line for line in md.splitlines() if line.startswith("| igloo |"))
    assert "37.50 ± 3.54 (n=2)" in igloo_row and "| |" in igloo_row.replace("|  |", "| |")
    assert "S4 and later papers average six tasks" in md
    assert "Transformer (LRA paper)" in md
    assert "Incomplete runs (2)" in md and "Failed runs (1): not averaged, not ranked" in md
    assert "listops / baseline / seed 9: failed: NonFiniteLossError: at step 3" in md
    assert "text / igloo / seed 0" in md and "image / igloo / seed 4" in md
    for png in ("accuracy.png", "accuracy_vs_params.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_missing_directory_says_which(cli: CLI, tmp_path: Path) -> None:
    proc = cli.run(str(tmp_path / "nope"), module="lra.report")
    assert proc.returncode == 2 and f"{tmp_path / 'nope'} not found" in proc.stderr


def test_runs_that_tested_their_best_checkpoint_are_never_averaged_with_final_weights(
    tmp_path: Path,
) -> None:
    from lra.report import main as report_main

    # seed 2: a results.json from before test_checkpoint existed, when the best one was tested
    for seed, (acc, tested) in enumerate([(0.4, "last"), (0.5, "best"), (0.6, None)]):
        d = tmp_path / "runs" / f"s{seed}"
        d.mkdir(parents=True)
        results = {"task": "listops", "model": "baseline", "seed": seed, "test_acc": acc,
                   "params": {"total": 10}, **({"tested": tested} if tested else {})}  # fmt: skip
        (d / "results.json").write_text(json.dumps(results))
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "leaderboard.csv") as f:
        rows = {(r["task"], r["model"]): (float(r["mean"]), int(r["n"])) for r in csv.DictReader(f)}
    assert rows == {("listops", "baseline"): (pytest.approx(40.0), 1),
                    ("listops", "baseline [best]"): (pytest.approx(55.0), 2)}  # fmt: skip
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "Validated on the test split" not in md, "ListOps has a validation split"


def test_the_report_names_the_runs_validated_on_the_test_split(tmp_path: Path) -> None:
    from lra.report import main as report_main

    for seed, task in enumerate(["text", "listops"]):
        d = tmp_path / "runs" / f"s{seed}"
        d.mkdir(parents=True)
        results = {"task": task, "model": "baseline", "seed": 0, "test_acc": 0.6, "tested": "best",
                   "params": {"total": 10}, "val_is_test": task == "text"}  # fmt: skip
        (d / "results.json").write_text(json.dumps(results))
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("Validated on the test split")]
    assert "text / baseline [best]" in line and "listops" not in line


def test_reference_prints_each_recipes_published_figure_beside_its_result(
    cli: CLI, tmp_path: Path
) -> None:
    ref = {"source": "LRA (Tay et al., ICLR 2021), Table 1: Transformer", "test_acc": 36.37}
    pathx = {"source": "LRA (Tay et al., ICLR 2021), Table 1: Transformer", "test_acc": None,
             "note": "FAIL"}  # fmt: skip
    runs = [("listops", 0, 0.30, ref), ("listops", 1, 0.34, ref), ("pathx", 0, 0.5, pathx),
            ("text", 0, 0.6, None)]  # fmt: skip
    for task, seed, acc, reference in runs:
        d = tmp_path / "outputs" / f"{task}-s{seed}"
        d.mkdir(parents=True)
        results = {"task": task, "model": "baseline", "seed": seed, "test_acc": acc,
                   "tested": "last", "params": {"total": 10},
                   "config": {"reference": reference}}  # fmt: skip
        (d / "results.json").write_text(json.dumps(results))
    out = tmp_path / "report"
    proc = ok(cli.run(str(tmp_path / "outputs"), "--out", str(out), "--reference",
                      module="lra.report"))  # fmt: skip
    section = proc.stdout.split("## Reproductions", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    mean, std = statistics.fmean([30.0, 34.0]), statistics.stdev([30.0, 34.0])
    assert (
        f"| listops | baseline | 36.37 | {ref['source']} | {mean:.2f} ± {std:.2f} (n=2) "
        f"| {mean - 36.37:+.2f} |"
    ) in rows
    assert f"| pathx | baseline | FAIL | {pathx['source']} | 50.00 ± 0.00 (n=1) |  |" in rows
    assert not any(r.startswith("| text | baseline | ") for r in rows), "no recipe, no row"
    plain = ok(cli.run(str(tmp_path / "outputs"), "--out", str(out), module="lra.report"))
    assert "Reproductions" not in plain.stdout


def t_interval(xs: list[float]) -> tuple[float, float]:
    from scipy.stats import t

    n, m, s = len(xs), statistics.mean(xs), statistics.stdev(xs)
    half = t.ppf(0.975, n - 1) * s / n**0.5
    return m - half, m + half


def test_intervals_differences_and_holm_adjusted_p_values_equal_an_independent_computation(
    tmp_path: Path,
) -> None:
    from scipy.stats import t

    from lra.report import main as report_main

    acc = {  # (task, model) -> {seed: accuracy in %}
        ("listops", "baseline"): {0: 36.0, 1: 37.5, 2: 35.0},
        ("listops", "igloo"): {0: 39.0, 1: 41.0, 2: 38.5},  # paired: the same seeds
        ("text", "baseline"): {0: 64.0, 1: 66.0, 2: 61.0},
        ("text", "igloo"): {3: 62.0, 4: 60.5, 5: 63.0, 6: 59.0},  # other seeds: Welch
        ("image", "baseline"): {0: 42.0, 1: 43.0},
        ("image", "igloo"): {0: 44.0, 1: 47.0},  # two seeds: too few for a verdict
    }
    for (task, model), by_seed in acc.items():
        for seed, a in by_seed.items():
            d = tmp_path / "runs" / f"{task}-{model}-s{seed}"
            d.mkdir(parents=True)
            results = {"task": task, "model": model, "seed": seed, "test_acc": a / 100,
                       "tested": "last", "params": {"total": 10}, "flops_per_step": 2e9,
                       "train_flops": 2e12, "steps_per_s": 4.0 + seed, "peak_memory_mb": 100.0,
                       "wall_seconds": 60.0}  # fmt: skip
            (d / "results.json").write_text(json.dumps(results))
    failed = tmp_path / "runs" / "listops-igloo-s9"
    failed.mkdir()
    (failed / "results.json").write_text(json.dumps(
        {"task": "listops", "model": "igloo", "seed": 9, "test_acc": 0.99, "status": "failed",
         "reason": "NonFiniteLossError", "tested": "last", "params": {}}))  # fmt: skip
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "leaderboard.csv") as f:
        rows = {(r["task"], r["model"]): r for r in csv.DictReader(f)}

    for key, by_seed in acc.items():
        lo, hi = t_interval(list(by_seed.values()))
        assert float(rows[key]["ci_lo"]) == pytest.approx(lo, rel=1e-6)
        assert float(rows[key]["ci_hi"]) == pytest.approx(hi, rel=1e-6)
    assert int(rows[("listops", "igloo")]["n"]) == 3, "the failed run is not counted"

    # paired on ListOps: t over the per-seed differences
    d = [acc[("listops", "igloo")][s] - acc[("listops", "baseline")][s] for s in (0, 1, 2)]
    t_paired = statistics.mean(d) / (statistics.stdev(d) / 3**0.5)
    p_listops = 2 * t.sf(abs(t_paired), 2)
    lo, hi = t_interval(d)
    r = rows[("listops", "igloo")]
    assert r["test"] == "paired" and float(r["p"]) == pytest.approx(p_listops, rel=1e-6)
    assert (float(r["diff_lo"]), float(r["diff_hi"])) == (pytest.approx(lo), pytest.approx(hi))
    # Welch on Text
    a, b = list(acc[("text", "igloo")].values()), list(acc[("text", "baseline")].values())
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t_welch = (statistics.mean(a) - statistics.mean(b)) / (va + vb) ** 0.5
    p_text = 2 * t.sf(abs(t_welch), df)
    half = t.ppf(0.975, df) * (va + vb) ** 0.5
    r = rows[("text", "igloo")]
    assert r["test"] == "welch" and float(r["p"]) == pytest.approx(p_text, rel=1e-6)
    assert float(r["diff_lo"]) == pytest.approx(statistics.mean(a) - statistics.mean(b) - half)
    # Holm over igloo's three tasks: sorted p times 3, 2, 1, kept monotone
    d_img = [acc[("image", "igloo")][s] - acc[("image", "baseline")][s] for s in (0, 1)]
    p_image = 2 * t.sf(abs(statistics.mean(d_img) / (statistics.stdev(d_img) / 2**0.5)), 1)
    ordered = sorted(
        [("listops", p_listops), ("text", p_text), ("image", p_image)], key=lambda x: x[1]
    )
    expected, running = {}, 0.0
    for k, (task, p) in enumerate(ordered):
        running = max(running, min(1.0, (3 - k) * p))
        expected[task] = running
    for task, p in expected.items():
        assert float(rows[(task, "igloo")]["p_holm"]) == pytest.approx(p, rel=1e-6)
    verdicts = {task: rows[(task, "igloo")]["verdict"] for task in expected}
    assert verdicts["image"] == "too few seeds"
    for task in ("listops", "text"):
        want = "no significant difference" if expected[task] >= 0.05 else (
            "better" if float(rows[(task, "igloo")]["diff"]) > 0 else "worse")  # fmt: skip
        assert verdicts[task] == want
    assert verdicts["listops"] == "better", "3 seeds, +3.3 points, paired: significant"
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "| listops | igloo | 10 | 2.00 | 2.00 | 5.00 | 100 | 60 |" in md, "means over seeds"
    png = (tmp_path / "report" / "accuracy_vs_compute.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "listops / igloo / seed 9: failed" in md


def test_the_report_from_wandb_has_the_same_tables_from_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--wandb ENTITY/PROJECT` reads config and summary; the tables equal those from files."""
    from types import SimpleNamespace

    import wandb

    from lra.report import main as report_main

    fake = []
    for (task, model), accs in {("listops", "baseline"): [36.0, 37.5, 35.0],
                                ("listops", "igloo"): [39.0, 41.0, 38.5]}.items():  # fmt: skip
        for seed, a in enumerate(accs):
            cost = {"flops_per_step": 1e9, "train_flops": 1e12, "steps_per_s": 3.0,
                    "peak_memory_mb": 50.0, "wall_seconds": 9.0}  # fmt: skip
            config = {"task": {"name": task}, "model": {"name": model}, "seed": seed,
                      "test_checkpoint": "last", "reference": None}  # fmt: skip
            d = tmp_path / "runs" / f"{task}-{model}-s{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps(
                {"task": task, "model": model, "seed": seed, "test_acc": a / 100, "tested": "last",
                 "params": {"total": 100}, "config": config, **cost}))  # fmt: skip
            summary = {"test/acc": a / 100, "params/total": 100, **cost}
            fake.append(SimpleNamespace(config=config, summary=summary, state="finished",
                                        url=f"https://wandb.ai/x/y/{seed}"))  # fmt: skip
    monkeypatch.setattr(wandb, "Api", lambda: SimpleNamespace(runs=lambda path: fake))
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "files")]) == 0
    assert report_main(["--wandb", "x/y", "--out", str(tmp_path / "wandb")]) == 0
    from_files = (tmp_path / "files" / "leaderboard.md").read_text()
    assert from_files == (tmp_path / "wandb" / "leaderboard.md").read_text()
    assert "| listops | igloo | 39.50 |" in from_files and "paired" in from_files
    csv_files = (tmp_path / "files" / "leaderboard.csv").read_text()
    assert csv_files == (tmp_path / "wandb" / "leaderboard.csv").read_text()


def test_self_pretrained_runs_are_their_own_cells_beside_from_scratch(tmp_path: Path) -> None:
    """`pretrained` in results.json makes `<model>+mlm`, compared with baseline+mlm and with the
    same model from scratch (paired by seed); a pretraining's own results.json is no run."""
    from lra.report import main as report_main

    acc = {  # (task, model, self-pretrained?) -> {seed: accuracy in %}
        ("listops", "baseline", False): {0: 36.0, 1: 37.5, 2: 35.0},
        ("listops", "baseline", True): {0: 44.0, 1: 46.5, 2: 45.0},
        ("listops", "igloo", False): {0: 39.0, 1: 41.0, 2: 38.5},
        ("listops", "igloo", True): {0: 40.0, 1: 40.5, 2: 39.0},
        ("text", "igloo", False): {0: 60.0, 1: 61.0, 2: 59.0},
        ("text", "igloo", True): {0: 66.0, 1: 69.0, 2: 67.5},
    }
    root = tmp_path / "runs"
    for (task, model, pre), by_seed in acc.items():
        for seed, a in by_seed.items():
            d = root / f"{task}-{model}{'-mlm' if pre else ''}-s{seed}"
            d.mkdir(parents=True)
            pretrained = {"objective": "mlm", "steps": 500, "path": str(d / "pretrain")}
            (d / "results.json").write_text(json.dumps(
                {"task": task, "model": model, "seed": seed, "test_acc": a / 100,
                 "tested": "last", "params": {"total": 10},
                 "pretrained": pretrained if pre else None}))  # fmt: skip
            if pre:  # the job's first stage: no test accuracy, not a run of the table
                (d / "pretrain").mkdir()
                (d / "pretrain" / "results.json").write_text(json.dumps(
                    {"task": task, "model": model, "seed": seed, "job_type": "pretrain",
                     "status": "finished", "steps": 500, "wall_seconds": 30.0 + seed}))  # fmt: skip
    killed = root / "listops-igloo-mlm-s3"  # a pretrain=mlm job killed in its pretraining
    (killed / ".hydra").mkdir(parents=True)
    (killed / "checkpoints").mkdir()
    (killed / ".hydra" / "config.yaml").write_text(
        "task:\n  name: listops\nmodel:\n  name: igloo\nseed: 3\npretrain:\n  objective: mlm\n"
    )
    alone = root / "pretrain-listops-igloo-mlm-s0" / "t0"  # python -m lra.pretrain, cut short
    (alone / ".hydra").mkdir(parents=True)
    (alone / "checkpoints").mkdir()
    (alone / ".hydra" / "config.yaml").write_text((killed / ".hydra" / "config.yaml").read_text())
    (alone / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: pretrain\n")
    assert report_main([str(root), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    with open(tmp_path / "report" / "leaderboard.csv") as f:
        board = {(r["task"], r["model"]): r for r in csv.DictReader(f)}
    assert set(board) == {("listops", "baseline"), ("listops", "baseline+mlm"),
                          ("listops", "igloo"), ("listops", "igloo+mlm"), ("text", "igloo"),
                          ("text", "igloo+mlm")}  # fmt: skip
    assert all(int(r["n"]) == 3 for r in board.values()), "the stages and the killed are no runs"
    d = [
        acc[("listops", "igloo", True)][s] - acc[("listops", "baseline", True)][s] for s in range(3)
    ]
    assert float(board[("listops", "igloo+mlm")]["diff"]) == pytest.approx(statistics.mean(d))
    assert "| listops | baseline+mlm | " in md and "the reference" in md
    with open(tmp_path / "report" / "self_pretraining.csv") as f:
        pairs = {(r["task"], r["model"]): r for r in csv.DictReader(f)}
    assert set(pairs) == {("listops", "baseline+mlm"), ("listops", "igloo+mlm"),
                          ("text", "igloo+mlm")}  # fmt: skip
    for (task, model), r in pairs.items():
        name = model.removesuffix("+mlm")
        d = [acc[(task, name, True)][s] - acc[(task, name, False)][s] for s in range(3)]
        assert r["scratch_model"] == name and r["test"] == "paired"
        assert float(r["diff"]) == pytest.approx(statistics.mean(d))
        lo, hi = t_interval(d)
        assert (float(r["diff_lo"]), float(r["diff_hi"])) == (pytest.approx(lo), pytest.approx(hi))
        assert float(r["scratch_mean"]) == pytest.approx(
            statistics.mean(acc[(task, name, False)].values())
        )
    assert pairs[("listops", "baseline+mlm")]["verdict"] == "better", "+9 points on every seed"
    p = {t: float(pairs[(t, "igloo+mlm")]["p"]) for t in ("listops", "text")}
    assert float(pairs[("text", "igloo+mlm")]["p_holm"]) == pytest.approx(
        min(1, 2 * min(p.values()))
    )
    section = md.split("## Self-pretraining")[1].split("##")[0]
    assert "| listops | igloo | mlm | 39.50 [" in section and "(n=3) | 39.83 [" in section
    cost = md.split("## Cost")[1].split("##")[0]
    assert "pretraining s/run" in cost and "| text | igloo+mlm | 10 | 31 |" in cost, cost
    assert "| text | igloo | 10 |  |" in cost, "from scratch: no pretraining"
    incomplete = md.split("## Incomplete runs")[1]
    assert "(1)" in incomplete and "listops / igloo+mlm / seed 3" in incomplete
    assert "pretrain-listops" not in incomplete, "a pretraining alone is not a run of the table"


def test_an_encoder_pretrained_on_another_task_is_not_labelled_self_pretrained() -> None:
    from lra.report import model_label, scratch_of

    other = {"objective": "mlm", "task": "listops"}
    assert model_label({"model": "igloo", "task": "text", "pretrained": other, "tested": "last"}) \
        == "igloo+mlm@listops"  # fmt: skip
    own = {"objective": "mlm", "task": "text"}
    assert model_label({"model": "igloo", "task": "text", "pretrained": own}) == "igloo+mlm [best]"
    assert scratch_of("igloo+mlm [best]") == ("igloo [best]", "mlm")

"""`python -m lra.report [DIR ...]`: the leaderboard, task x model, from the runs' results.json.

Statistics (lra/stats.py): per cell the 95% Student t interval of the mean; per task each model's
difference from `baseline` with its 95% interval and p-value (paired by seed where both cells
hold the same seeds, else Welch), Holm–Bonferroni-adjusted across the tasks of the table, and a
verdict (better / worse / no significant difference at alpha 0.05; "too few seeds" below 3); the
average over LRA's five tasks with its interval. A self-pretrained run (`pretrain=mlm` or
`pretrained=PATH`, lra/pretraining.py) is its own model, `<model>+<objective>` (`igloo+mlm`),
compared with `baseline+<objective>`; where a model has both cells on a task, the section
"Self-pretraining" sets from scratch beside self-pretrained: the difference paired by seed, its
interval and p (Holm-adjusted across tasks per model) and a verdict. A pretraining's own
results.json (`job_type: pretrain`) holds no test accuracy and is not a run of the table. Cost
beside accuracy: parameters, training FLOPs
per step, steps/s, peak memory and wall time per run (means over seeds).

Reads every `results.json` under the given run or multirun directories (default `outputs/`), or the
runs of a W&B project (`--wandb ENTITY/PROJECT`, online). For each (task, model): mean ± sample
standard deviation (ddof=1) of the test accuracy over seeds, the number of seeds and the parameter
count; the average over LRA's five tasks (ListOps, Text, Retrieval, Image, Pathfinder) with Path-X
shown apart. Only finished runs count: failed and interrupted runs (`status` in results.json, with
the reason) and runs without a test accuracy (killed, still running) are listed apart, never
averaged or ranked.

Writes `leaderboard.md`, `leaderboard.csv`, `self_pretraining.csv` (where there are pairs),
`accuracy.png` (per task and model, with error bars),
`accuracy_vs_params.png` and `accuracy_vs_compute.png` (training FLOPs per run) into `--out`
(default `outputs/report`), and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lra import stats
from lra.io import atomic_path, write_text

LRA_FIVE = ("listops", "text", "retrieval", "image", "pathfinder")
PATHX = "pathx"
NOTE = (
    "Avg is over LRA's five tasks (ListOps, Text, Retrieval, Image, Pathfinder), as in the LRA "
    "paper; Path-X is shown apart. S4 and later papers average six tasks and count a failed Path-X "
    "as 50 (the LRA Transformer is 53.66 that way)."
)
# Published test accuracies (%), shared/LRA-REFERENCE.md: LRA paper Table 1; lra-igloo README.
REFERENCE = {
    "Transformer (LRA paper)": (36.37, 64.27, 57.46, 42.44, 71.40),
    "IGLOO (lra-igloo README, own protocol)": (39.0, 84.5, 75.5, 47.0, 76.5),
}


@dataclass(frozen=True)
class Run:
    task: str
    model: str
    seed: int
    test_acc: float | None
    params: int | None
    source: str
    status: str = "finished"  # finished | failed | interrupted | incomplete (no results.json)
    reason: str = ""
    val_is_test: bool = False  # its validation split was its test split
    # a recipe's published figure (conf/experiment/repro/*: `reference`): (source, test_acc in %
    # or None, note), None for a run without one
    reference: tuple[str, float | None, str] | None = None
    cost: tuple[tuple[str, float], ...] = ()  # (field, value) of COST, as results.json has them

    @property
    def counts(self) -> bool:
        """Only a finished run with a test accuracy reaches the leaderboard."""
        return self.status == "finished" and self.test_acc is not None


BASELINE = "baseline"


def model_label(results: dict[str, Any]) -> str:
    """The model's name in the table: `+<objective>` where its encoder was self-pretrained
    (`pretrained` in results.json), so that it is never averaged with runs from scratch; ` [best]`
    where the run tested its best-by-validation checkpoint (`test_checkpoint=best`; every run
    before the switch existed), so that it is never averaged with runs that tested their final
    weights, as LRA's code does."""
    name = results["model"] + pretrained_tag(results.get("pretrained"), results.get("task"))
    return f"{name} [best]" if results.get("tested", "best") == "best" else name


def pretrained_tag(pretrained: dict[str, Any] | None, task: str | None = None) -> str:
    """`+mlm` for a run fine-tuned from a masked-token pretraining on its own task's training
    inputs; `+mlm@<task>` from another task's (no self-pretraining); nothing from scratch."""
    if not pretrained:
        return ""
    on = pretrained.get("task")
    return f"+{pretrained.get('objective') or 'pretrained'}" + (
        f"@{on}" if on and task and on != task else ""
    )


def scratch_of(model: str) -> tuple[str, str]:
    """A model label's (label from scratch, objective): `igloo+mlm [best]` -> (`igloo [best]`,
    `mlm`); a label from scratch -> (itself, "")."""
    name, space, rest = model.partition(" ")
    base, _, objective = name.partition("+")
    return base + space + rest, objective


def reference_of_model(model: str, baseline: str = BASELINE) -> str:
    """The model each cell is compared with: `baseline`, or `baseline+mlm` for a self-pretrained
    one (the same pretraining for both)."""
    _, objective = scratch_of(model)
    return f"{baseline}+{objective}" if objective else baseline


def is_pretraining(results: dict[str, Any]) -> bool:
    """A pretraining's own results.json (lra.pretrain, or a `pretrain=mlm` job's first stage)."""
    return results.get("job_type") == "pretrain"


COST = {  # results.json field -> (column, format)
    "flops_per_step": ("train GFLOPs/step", lambda v: f"{v / 1e9:,.2f}"),
    "train_flops": ("train TFLOPs/run", lambda v: f"{v / 1e12:,.2f}"),
    "steps_per_s": ("steps/s", lambda v: f"{v:.2f}"),
    "peak_memory_mb": ("peak memory MB", lambda v: f"{v:,.0f}"),
    "wall_seconds": ("wall s/run", lambda v: f"{v:,.0f}"),
    # a self-pretrained run: its pretraining's own wall time (within wall s/run for a job of both
    # stages, `pretrain=mlm`; apart from it for `pretrained=PATH`)
    "pretrain_wall_seconds": ("pretraining s/run", lambda v: f"{v:,.0f}"),
}


def cost_of(r: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    return tuple((k, float(r[k])) for k in COST if r.get(k) is not None)


def pretraining_cost(r: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """A self-pretrained run's pretraining wall time, from the pretraining's results.json: the
    job's own stage (`RUN_DIR/pretrain/`), else the folder of the encoder it loaded."""
    pre = r.get("pretrained") or {}
    places = [run_dir / "pretrain", *([Path(pre["path"]).parent] if pre.get("path") else [])]
    for place in places:
        try:
            stage = json.loads((place / "results.json").read_text())
        except (OSError, ValueError):
            continue
        if is_pretraining(stage) and stage.get("wall_seconds") is not None:
            return {"pretrain_wall_seconds": float(stage["wall_seconds"])}
    return {}


def reference_of(cfg: dict[str, Any]) -> tuple[str, float | None, str] | None:
    """The run config's `reference` block as (source, published test accuracy, note)."""
    ref = cfg.get("reference")
    if not ref:
        return None
    acc = ref.get("test_acc")
    return (
        str(ref.get("source", "")),
        None if acc is None else float(acc),
        str(ref.get("note") or ""),
    )


def load_runs(dirs: list[Path]) -> list[Run]:
    """Every results.json below `dirs`, plus run directories that never wrote one (incomplete)."""
    runs = []
    for d in dirs:
        if not d.exists():
            raise FileNotFoundError(
                f"{d} not found: give the run or multirun directories to report"
            )
        pretrainings = set()
        for path in sorted(d.rglob("results.json")):
            r = json.loads(path.read_text())
            if is_pretraining(r):  # no test accuracy: a stage of a run, not a run of the table
                pretrainings.add(str(path.parent))
                continue
            status = r.get("status", "finished" if r.get("test_acc") is not None else "incomplete")
            if r.get("pretrained"):
                r = {**r, **pretraining_cost(r, path.parent)}
            runs.append(
                Run(r["task"], model_label(r), int(r["seed"]), r.get("test_acc"),
                    (r.get("params") or {}).get("total"), str(path.parent), status,
                    r.get("reason") or "", bool(r.get("val_is_test")),
                    reference_of(r.get("config") or {}), cost_of(r))
            )  # fmt: skip
        done = {run.source for run in runs} | pretrainings
        for cfg_path in sorted(d.rglob(".hydra/config.yaml")):
            run_dir = cfg_path.parents[1]
            if str(run_dir) in done or not (run_dir / "checkpoints").exists():
                continue  # a --cfg dry run or a data preparation, not a training run
            if hydra_job_name(cfg_path.parent) == "pretrain":
                continue  # an unfinished `python -m lra.pretrain`: no run of the table
            cfg = yaml.safe_load(cfg_path.read_text())
            objective = (cfg.get("pretrain") or {}).get("objective", "none")
            pre = objective != "none" or cfg.get("pretrained")
            tag = pretrained_tag(
                {"objective": objective if objective != "none" else None} if pre else None
            )
            runs.append(
                Run(cfg["task"]["name"], cfg["model"]["name"] + tag, int(cfg["seed"]), None, None,
                    str(run_dir), "incomplete")
            )  # fmt: skip
    return runs


def hydra_job_name(hydra_dir: Path) -> str | None:
    """The Hydra job's name (`train`, `pretrain`) from its `.hydra/hydra.yaml`, if there is one."""
    try:
        return yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]["job"]["name"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def load_wandb_runs(path: str) -> list[Run]:
    """The same from a W&B project (needs a network and `wandb login`)."""
    import wandb

    runs = []
    for r in wandb.Api().runs(path):
        cfg, summary = r.config, r.summary
        if cfg.get("job_type") == "pretrain" or getattr(r, "job_type", None) == "pretrain":
            continue  # a pretraining: no test accuracy
        status = "finished" if r.state == "finished" else r.state  # failed, crashed, running
        runs.append(
            Run(cfg["task"]["name"], model_label({"model": cfg["model"]["name"],
                                                  "tested": cfg.get("test_checkpoint", "best"),
                                                  "pretrained": cfg.get("pretrained_from"),
                                                  "task": cfg["task"]["name"]}),
                int(cfg.get("seed", 0)), summary.get("test/acc"), summary.get("params/total"),
                r.url, status,
                reference=reference_of(cfg),
                cost=cost_of({k: summary.get(k) for k in COST}))
        )  # fmt: skip
    return runs


def aggregate(runs: list[Run]) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, model) -> mean, std (ddof=1; 0 for one seed), n, seeds, params, in %."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        if run.counts:
            groups[(run.task, run.model)].append(run)
    cells = {}
    for key, group in groups.items():
        acc = [100 * r.test_acc for r in group]
        params = [r.params for r in group if r.params is not None]
        seeds = [r.seed for r in group]
        ci = stats.interval(acc)
        costs: dict[str, list[float]] = defaultdict(list)
        for r in group:
            for field, value in r.cost:
                costs[field].append(value)
        cells[key] = {
            "mean": ci.mean,
            "std": ci.std,
            "n": ci.n,
            "lo": ci.lo,
            "hi": ci.hi,
            "seeds": sorted(seeds),
            # accuracy by seed, for pairing; None where a seed ran twice (then no pairing)
            "by_seed": dict(zip(seeds, acc, strict=True))
            if len(set(seeds)) == len(seeds)
            else None,
            "values": acc,
            "params": round(statistics.fmean(params)) if params else None,
            "cost": {k: statistics.fmean(v) for k, v in costs.items()},
        }
    return cells


def by_seed(cell: dict[str, Any]) -> dict[Any, float]:
    """Accuracies keyed by seed, or by position where a seed ran twice (so never paired)."""
    return cell["by_seed"] or {("run", i): v for i, v in enumerate(cell["values"])}


def comparisons(cells: dict, baseline: str = BASELINE) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, model) -> its difference from `baseline` on the task (`baseline+mlm` for a
    self-pretrained model), Holm-adjusted p and verdict."""
    pairs = {
        (t, m): (t, reference_of_model(m, baseline))
        for t, m in cells
        if m != reference_of_model(m, baseline)
    }
    return compare(cells, pairs)


def compare(cells: dict, pairs: dict[tuple[str, str], tuple[str, str]]) -> dict:
    """For each cell -> its reference cell: the difference (paired by seed where both hold the
    same seeds, else Welch), p Holm-adjusted across the tasks of each model, and a verdict."""
    by_model: dict[str, dict[str, tuple]] = defaultdict(dict)
    for (t, m), ref in pairs.items():
        if (t, m) in cells and ref in cells:
            by_model[m][t] = ref
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for model, refs in sorted(by_model.items()):
        diffs = {t: stats.difference(by_seed(cells[(t, model)]), by_seed(cells[ref]))
                 for t, ref in refs.items()}  # fmt: skip
        adjusted = stats.holm({t: d.p for t, d in diffs.items()})
        for t, d in diffs.items():
            n_model, n_ref = cells[(t, model)]["n"], cells[refs[t]]["n"]
            call = stats.verdict(d, adjusted[t], n_model, n_ref)
            out[(t, model)] = {"d": d, "p_holm": adjusted[t], "verdict": call}
    return out


def pretraining_pairs(cells: dict) -> dict[tuple[str, str], tuple[str, str]]:
    """Each self-pretrained cell -> the same model's cell from scratch on the same task."""
    return {
        (t, m): (t, scratch_of(m)[0])
        for t, m in cells
        if scratch_of(m)[1] and (t, scratch_of(m)[0]) in cells
    }


def task_order(tasks: set[str]) -> list[str]:
    known = [t for t in (*LRA_FIVE, PATHX) if t in tasks]
    return known + sorted(tasks - set(known))


def average_five(cells: dict[tuple[str, str], dict[str, Any]], model: str) -> float | None:
    means = [cells[(t, model)]["mean"] for t in LRA_FIVE if (t, model) in cells]
    return statistics.fmean(means) if len(means) == len(LRA_FIVE) else None


def pct(v: float) -> str:
    return "–" if v != v else f"{v:.2f}"  # nan: not defined (one seed)


def p_value(v: float) -> str:
    return "–" if v != v else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


def difference_cells(v: dict[str, Any]) -> list[str]:
    """A comparison's Δ, its interval, test, p, Holm's p and verdict, as table cells."""
    d = v["d"]
    return [f"{d.diff:+.2f}", f"[{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo == d.lo else "–", d.test,
            p_value(d.p), p_value(v["p_holm"]), v["verdict"]]  # fmt: skip


def interval_cell(c: dict[str, Any]) -> str:
    return f"{pct(c['mean'])} [{pct(c['lo'])}, {pct(c['hi'])}] (n={c['n']})"


def pretraining_section(cells: dict, tasks: list[str]) -> list[str]:
    """From scratch beside self-pretrained, per task and model, the same fine-tuning."""
    pairs = pretraining_pairs(cells)
    if not pairs:
        return []
    versus = compare(cells, pairs)
    out = [
        "## Self-pretraining: from scratch vs self-pretrained (the same fine-tuning), 95% "
        "intervals; "
        f"Δ = self-pretrained − from scratch, p Holm-adjusted across tasks per model; verdict at "
        f"alpha {stats.ALPHA}",
        "",
        "| task | model | pretraining | from scratch | self-pretrained | Δ | 95% CI of Δ | test "
        "| p | p (Holm) | verdict |",
        "|---|---|---|---|---|---:|---|---|---:|---:|---|",
    ]
    for (t, m), ref in sorted(pairs.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0][1])):
        row = [t, ref[1], scratch_of(m)[1], interval_cell(cells[ref]), interval_cell(cells[(t, m)])]
        out.append("| " + " | ".join(row + difference_cells(versus[(t, m)])) + " |")
    return [*out, ""]


def statistics_section(cells: dict, tasks: list[str]) -> list[str]:
    """Per cell the interval; per task and model the difference from baseline and the verdict."""
    versus = comparisons(cells)
    out = [
        f"## Statistics: 95% intervals (Student t); differences from baseline (from baseline+mlm "
        f"where self-pretrained), p Holm-adjusted across tasks per model; verdict at alpha "
        f"{stats.ALPHA}",
        "",
        "| task | model | mean | std | n | 95% CI | Δ vs baseline | 95% CI of Δ | test | p "
        "| p (Holm) | verdict |",
        "|---|---|---:|---:|---:|---|---:|---|---|---:|---:|---|",
    ]
    for (t, m), c in sorted(cells.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0][1])):
        row = [
            t,
            m,
            pct(c["mean"]),
            pct(c["std"]),
            str(c["n"]),
            f"[{pct(c['lo'])}, {pct(c['hi'])}]",
        ]
        if (t, m) in versus:
            row += difference_cells(versus[(t, m)])
        else:
            reference = m == reference_of_model(m)
            row += ["", "", "", "", "", "the reference" if reference else "no baseline"]
        out.append("| " + " | ".join(row) + " |")
    averages = []
    for m in sorted({m for _, m in cells}):
        if all((t, m) in cells for t in LRA_FIVE):
            a = stats.average_interval([by_seed(cells[(t, m)]) for t in LRA_FIVE])
            averages.append(f"| {m} | {a.mean:.2f} | [{pct(a.lo)}, {pct(a.hi)}] |")
    if averages:
        out += ["", "Average over LRA's five tasks, with its 95% interval:", "",
                "| model | Avg (5) | 95% CI |", "|---|---:|---|", *averages]  # fmt: skip
    return [*out, ""]


def cost_section(cells: dict, tasks: list[str]) -> list[str]:
    fields = [f for f in COST if any(f in c["cost"] for c in cells.values())]
    if not fields:
        return []
    out = ["## Cost: means over each cell's runs", "",
           "| task | model | parameters | " + " | ".join(COST[f][0] for f in fields) + " |",
           "|---|---|---:|" + "---:|" * len(fields)]  # fmt: skip
    for (t, m), c in sorted(cells.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0][1])):
        params = "" if c["params"] is None else f"{c['params']:,}"
        vals = [COST[f][1](c["cost"][f]) if f in c["cost"] else "" for f in fields]
        out.append(f"| {t} | {m} | {params} | " + " | ".join(vals) + " |")
    return [*out, ""]


def markdown(runs: list[Run], cells: dict, reference: bool) -> str:
    tasks = task_order({t for t, _ in cells})
    models = sorted({m for _, m in cells})
    head = [
        "model",
        *[t for t in tasks if t != PATHX],
        "Avg (5)",
        *([PATHX] if PATHX in tasks else []),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        row = [model]
        for t in head[1:]:
            if t == "Avg (5)":
                avg = average_five(cells, model)
                row.append("" if avg is None else f"{avg:.2f}")
            elif (t, model) in cells:
                c = cells[(t, model)]
                row.append(f"{c['mean']:.2f} ± {c['std']:.2f} (n={c['n']})")
            else:
                row.append("")
        lines.append("| " + " | ".join(row) + " |")
    if reference:
        for name, accs in REFERENCE.items():
            by_task = dict(zip(LRA_FIVE, accs, strict=True))
            row = [f"*{name}*"]
            for t in head[1:]:
                if t == "Avg (5)":
                    row.append(f"{statistics.fmean(accs):.2f}")
                else:
                    row.append(f"{by_task[t]:.2f}" if t in by_task else "")
            lines.append("| " + " | ".join(row) + " |")
    out = ["## Test accuracy (%), mean ± std over seeds", "", *lines, "", NOTE, ""]
    if reference:
        out += reproductions(runs)
    on_test = sorted({(r.task, r.model) for r in runs if r.counts and r.val_is_test})
    if on_test:
        out += [
            "Validated on the test split (the task has no validation set of its own): "
            + ", ".join(f"{t} / {m}" for t, m in on_test)
            + ". Where such a run tested its best checkpoint (`[best]`), the test split chose it.",
            "",
        ]
    out += statistics_section(cells, tasks)
    out += pretraining_section(cells, tasks)
    out += cost_section(cells, tasks)
    out += ["## Parameters", "", "| task | model | parameters | seeds |", "|---|---|---|---|"]
    for (t, m), c in sorted(cells.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0][1])):
        params = "" if c["params"] is None else f"{c['params']:,}"
        out.append(f"| {t} | {m} | {params} | {', '.join(map(str, c['seeds']))} |")
    failed = [r for r in runs if r.status in ("failed", "interrupted", "crashed")]
    out += ["", f"## Failed runs ({len(failed)}): not averaged, not ranked", ""]
    out += [
        f"- {r.task} / {r.model} / seed {r.seed}: {r.status}: {r.reason or 'no reason recorded'} "
        f"({r.source})"
        for r in failed
    ] or ["- none"]
    incomplete = [r for r in runs if not r.counts and r not in failed]
    out += ["", f"## Incomplete runs ({len(incomplete)}): no test accuracy, not averaged", ""]
    out += [f"- {r.task} / {r.model} / seed {r.seed}: {r.source}" for r in incomplete] or ["- none"]
    return "\n".join(out) + "\n"


def reproductions(runs: list[Run]) -> list[str]:
    """Each recipe's published figure beside what its finished runs reached here."""
    groups: dict[tuple[str, str, tuple], list[float]] = defaultdict(list)
    for run in runs:
        if run.counts and run.reference is not None:
            groups[(run.task, run.model, run.reference)].append(100 * run.test_acc)
    if not groups:
        return []
    out = [
        "## Reproductions: each recipe's published figure beside the result here",
        "",
        "| task | model | published | source | here | here − published |",
        "|---|---|---|---|---|---|",
    ]
    for (task, model, (source, published, note)), accs in sorted(groups.items()):
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        shown = (note or "—") if published is None else f"{published:.2f}"
        delta = "" if published is None else f"{mean - published:+.2f}"
        out.append(
            f"| {task} | {model} | {shown} | {source} | {mean:.2f} ± {std:.2f} (n={len(accs)}) "
            f"| {delta} |"
        )
    return [*out, ""]


def csv_difference(v: dict[str, Any] | None) -> str:
    if not v:
        return ",,,,,,"
    d = v["d"]
    return (f"{d.diff:.6f},{d.lo:.6f},{d.hi:.6f},{d.test},{d.p:.10g},{v['p_holm']:.10g},"
            f"{v['verdict']}")  # fmt: skip


def csv_cell(c: dict[str, Any]) -> str:
    return f"{c['mean']:.6f},{c['std']:.6f},{c['n']},{c['lo']:.6f},{c['hi']:.6f}"


def write_csv(path: Path, cells: dict) -> None:
    versus = comparisons(cells)
    rows = ["task,model,mean,std,n,ci_lo,ci_hi,diff,diff_lo,diff_hi,test,p,p_holm,verdict,params"]
    for (t, m), c in sorted(cells.items()):
        rows.append(f"{t},{m},{csv_cell(c)},{csv_difference(versus.get((t, m)))},"
                    f"{c['params'] or ''}")  # fmt: skip
    write_text(path, "\n".join(rows) + "\n")


def write_pretraining_csv(path: Path, cells: dict) -> bool:
    """self_pretraining.csv: per task and model, from scratch, self-pretrained, the difference."""
    pairs = pretraining_pairs(cells)
    if not pairs:
        return False
    versus = compare(cells, pairs)
    cols = "mean,std,n,ci_lo,ci_hi"
    rows = [f"task,model,scratch_model,{cols.replace(',', ',scratch_').join(['scratch_', ''])},"
            f"{cols},diff,diff_lo,diff_hi,test,p,p_holm,verdict"]  # fmt: skip
    for (t, m), ref in sorted(pairs.items()):
        rows.append(f"{t},{m},{ref[1]},{csv_cell(cells[ref])},{csv_cell(cells[(t, m)])},"
                    f"{csv_difference(versus[(t, m)])}")  # fmt: skip
    write_text(path, "\n".join(rows) + "\n")
    return True


def plot(out: Path, cells: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = task_order({t for t, _ in cells})
    models = sorted({m for _, m in cells})
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.6))
    for i, model in enumerate(models):
        xs = [
            j + (i - (len(models) - 1) / 2) * width
            for j, t in enumerate(tasks)
            if (t, model) in cells
        ]
        cs = [cells[(t, model)] for t in tasks if (t, model) in cells]
        ax.bar(
            xs, [c["mean"] for c in cs], width, yerr=[c["std"] for c in cs], capsize=3, label=model
        )
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

    scatter(plt, out / "accuracy_vs_params.png", cells, tasks, lambda c: c["params"],
            "trainable parameters")  # fmt: skip
    scatter(plt, out / "accuracy_vs_compute.png", cells, tasks,
            lambda c: c["cost"].get("train_flops"),
            "training FLOPs per run (torch.utils.flop_counter)")  # fmt: skip


def scatter(plt: Any, path: Path, cells: dict, tasks: list[str], x_of: Any, xlabel: str) -> None:
    """Accuracy (mean ± std) against x_of(cell) on a log axis, a series per task, each point
    named by its model; not written where no cell has an x."""
    points = {k: c for k, c in cells.items() if x_of(c)}
    if not points:
        return
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for task in tasks:
        cs = [(m, c) for (t, m), c in sorted(points.items()) if t == task]
        if cs:
            ax.errorbar([x_of(c) for _, c in cs], [c["mean"] for _, c in cs],
                        yerr=[c["std"] for _, c in cs], fmt="o", capsize=3, label=task)  # fmt: skip
            for m, c in cs:
                ax.annotate(m, (x_of(c), c["mean"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs", nargs="*", type=Path, help="run/multirun directories (default outputs/)"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/report"))
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="add published LRA rows, and each recipe's published figure beside its result",
    )
    args = parser.parse_args(argv)
    try:
        runs = (
            load_wandb_runs(args.wandb) if args.wandb else load_runs(args.dirs or [Path("outputs")])
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells = aggregate(runs)
    if not cells and not runs:
        print(
            "error: no results.json found under " + ", ".join(map(str, args.dirs)), file=sys.stderr
        )
        return 2
    text = markdown(runs, cells, args.reference)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "leaderboard.md", text)
    write_csv(args.out / "leaderboard.csv", cells)
    pretraining = write_pretraining_csv(args.out / "self_pretraining.csv", cells)
    if cells:
        plot(args.out, cells)
    print(text)
    print(
        f"wrote {args.out}/leaderboard.md, leaderboard.csv, "
        + ("self_pretraining.csv, " if pretraining else "")
        + "accuracy.png, accuracy_vs_params.png, accuracy_vs_compute.png (where the runs counted "
        "FLOPs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

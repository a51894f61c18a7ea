"""`python -m lra.report [DIR ...]`: the leaderboard, task x model, from the runs' results.json.

Reads every `results.json` under the given run or multirun directories (default `outputs/`), or the
runs of a W&B project (`--wandb ENTITY/PROJECT`, online). For each (task, model): mean ± sample
standard deviation (ddof=1) of the test accuracy over seeds, the number of seeds and the parameter
count; the average over LRA's five tasks (ListOps, Text, Retrieval, Image, Pathfinder) with Path-X
shown apart. Only finished runs count: failed and interrupted runs (`status` in results.json, with
the reason) and runs without a test accuracy (killed, still running) are listed apart, never
averaged or ranked.

Writes `leaderboard.md`, `leaderboard.csv`, `accuracy.png` (per task and model, with error bars)
and `accuracy_vs_params.png` into `--out` (default `outputs/report`), and prints the markdown.
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

    @property
    def counts(self) -> bool:
        """Only a finished run with a test accuracy reaches the leaderboard."""
        return self.status == "finished" and self.test_acc is not None


def model_label(results: dict[str, Any]) -> str:
    """The model's name in the table: with ` [best]` where the run tested its best-by-validation
    checkpoint (`test_checkpoint=best`; every run before the switch existed), so that it is never
    averaged with runs that tested their final weights, as LRA's code does."""
    tested = results.get("tested", "best")
    return f"{results['model']} [best]" if tested == "best" else results["model"]


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
        for path in sorted(d.rglob("results.json")):
            r = json.loads(path.read_text())
            status = r.get("status", "finished" if r.get("test_acc") is not None else "incomplete")
            runs.append(
                Run(r["task"], model_label(r), int(r["seed"]), r.get("test_acc"),
                    (r.get("params") or {}).get("total"), str(path.parent), status,
                    r.get("reason") or "", bool(r.get("val_is_test")),
                    reference_of(r.get("config") or {}))
            )  # fmt: skip
        done = {run.source for run in runs}
        for cfg_path in sorted(d.rglob(".hydra/config.yaml")):
            run_dir = cfg_path.parents[1]
            if str(run_dir) in done or not (run_dir / "checkpoints").exists():
                continue  # a --cfg dry run or a data preparation, not a training run
            cfg = yaml.safe_load(cfg_path.read_text())
            runs.append(
                Run(cfg["task"]["name"], cfg["model"]["name"], int(cfg["seed"]), None, None,
                    str(run_dir), "incomplete")
            )  # fmt: skip
    return runs


def load_wandb_runs(path: str) -> list[Run]:
    """The same from a W&B project (needs a network and `wandb login`)."""
    import wandb

    runs = []
    for r in wandb.Api().runs(path):
        cfg, summary = r.config, r.summary
        status = "finished" if r.state == "finished" else r.state  # failed, crashed, running
        runs.append(
            Run(cfg["task"]["name"], cfg["model"]["name"], int(cfg.get("seed", 0)),
                summary.get("test/acc"), summary.get("params/total"), r.url, status,
                reference=reference_of(cfg))
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
        cells[key] = {
            "mean": statistics.fmean(acc),
            "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "n": len(acc),
            "seeds": sorted(r.seed for r in group),
            "params": round(statistics.fmean(params)) if params else None,
        }
    return cells


def task_order(tasks: set[str]) -> list[str]:
    known = [t for t in (*LRA_FIVE, PATHX) if t in tasks]
    return known + sorted(tasks - set(known))


def average_five(cells: dict[tuple[str, str], dict[str, Any]], model: str) -> float | None:
    means = [cells[(t, model)]["mean"] for t in LRA_FIVE if (t, model) in cells]
    return statistics.fmean(means) if len(means) == len(LRA_FIVE) else None


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


def write_csv(path: Path, cells: dict) -> None:
    rows = ["task,model,mean,std,n,params"]
    for (t, m), c in sorted(cells.items()):
        rows.append(f"{t},{m},{c['mean']:.6f},{c['std']:.6f},{c['n']},{c['params'] or ''}")
    write_text(path, "\n".join(rows) + "\n")


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

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for task in tasks:
        cs = [
            (m, cells[(task, m)])
            for m in models
            if (task, m) in cells and cells[(task, m)]["params"]
        ]
        if cs:
            ax.errorbar([c["params"] for _, c in cs], [c["mean"] for _, c in cs],
                        yerr=[c["std"] for _, c in cs], fmt="o", capsize=3, label=task)  # fmt: skip
            for m, c in cs:
                ax.annotate(m, (c["params"], c["mean"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "accuracy_vs_params.png") as tmp:
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
    if cells:
        plot(args.out, cells)
    print(text)
    print(f"wrote {args.out}/leaderboard.md, leaderboard.csv, accuracy.png, accuracy_vs_params.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lra.verdict`: the parameter-matched grid, task x model x seed, then its report.

    python -m lra.verdict --preset cpu                        # conf/verdict/cpu.yaml, run here
    python -m lra.verdict --preset cpu_pretrain               # from scratch and self-pretrained
    python -m lra.verdict --tasks listops,text --models baseline,igloo,disentangled \\
        --seeds 0,1,2 --launcher slurm --out outputs/verdict/lra -- trainer=slurm

Every run is a job of a Hydra multirun of `python -m lra.train` (the basic launcher runs them one
after another; `--launcher slurm` submits them through hydra/launcher=slurm), in a directory of
its own, `OUT/runs/<task>-<model>-s<seed>/`, with `resume=true`: a rerun of the same command skips
every run whose results.json holds a finished result, resumes an interrupted one from its
last.ckpt, and starts the missing ones. All runs of one verdict share one W&B group
(`experiment_name`, default `verdict-<name of OUT>`). Then `lra.report` writes the report, with
its statistics, into `OUT/report/`.

`--pretrain none,mlm` (or a preset's `pretrain:`) adds one more axis: `none` trains from
scratch, `mlm` self-pretrains the encoder on the task's training inputs first (`pretrain=mlm`,
both stages in one job, lra/pretraining.py) and fine-tunes for the same steps, in
`OUT/runs/<task>-<model>-mlm-s<seed>/`; a preset's `pretrain_overrides` (per task) and the
overrides of `pretrain.` keys given after `--` apply to those runs only. A whole network with
its own head (`igloo_lra`) cannot be self-pretrained: its
`mlm` cells are left out, and said so. Exit 0 when every run of the grid finished, else 1 (the
report still lists what finished, and the failed runs apart).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lra.config import CONF_DIR, pretrain_tag

PRESETS = CONF_DIR / "verdict"
LAUNCHERS = {"local": [], "slurm": ["hydra/launcher=slurm"]}


SCRATCH = "none"
# the run folder's name, as lra.train names the run (conf/config.yaml run_name, lra.pretrain_tag)
# (quoted for Hydra's override grammar)
SUBDIR = (
    "'${task.name}-${model.name}${lra.pretrain_tag:${pretrain.objective},${pretrained}}-s${seed}'"
)


def run_dir(out: Path, task: str, model: str, seed: int, pretrain: str = SCRATCH) -> Path:
    return out / "runs" / f"{task}-{model}{pretrain_tag(pretrain)}-s{seed}"


def pretrainable(model: str) -> bool:
    """Can `model` be self-pretrained: is it the shared encoder (not a whole network)?"""
    path = CONF_DIR / "model" / f"{model}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise SystemExit(f"error: --models {model}: no {path}; models: {known}")
    return OmegaConf.load(path).get("architecture", "encoder") == "encoder"


def finished(path: Path) -> bool:
    """Does `path` hold a finished run's results.json (with a test accuracy)?"""
    try:
        r = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return r.get("status", "finished") == "finished" and r.get("test_acc") is not None


def cells(tasks: list[str], models: list[str], pretrains: list[str]) -> list[tuple]:
    """The grid's (task, model, pretrain) cells in run order; whole networks skip pretraining."""
    return [
        (task, model, p)
        for task in tasks
        for p in pretrains
        for model in models
        if p == SCRATCH or pretrainable(model)
    ]


def missing(out: Path, tasks: list[str], models: list[str], seeds: list[int],
            pretrains: tuple[str, ...] | list[str] = (SCRATCH,)) -> dict:  # fmt: skip
    """(task, model, pretrain) -> the seeds whose run has not finished, in grid order."""
    todo: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for task, model, p in cells(tasks, models, list(pretrains)):
        for seed in seeds:
            if not finished(run_dir(out, task, model, seed, p)):
                todo[(task, model, p)].append(seed)
    return dict(todo)


def command(out: Path, task: str, model: str, seeds: list[int], group: str, launcher: str,
            overrides: list[str], pretrain: str = SCRATCH) -> list[str]:  # fmt: skip
    """One multirun: one task, model and pretraining, the seeds still to run, each in its own
    directory."""
    return [
        sys.executable, "-m", "lra.train", "--multirun", f"task={task}", f"model={model}",
        f"pretrain={pretrain}", "seed=" + ",".join(map(str, seeds)), "resume=true",
        f"experiment_name={group}", f"hydra.sweep.dir={out / 'runs'}",
        f"hydra.sweep.subdir={SUBDIR}", *LAUNCHERS[launcher], *overrides,
    ]  # fmt: skip


def for_pretraining(override: str) -> bool:
    """Does an override set the pretraining (`pretrain.steps=500`), not a group (`pretrain=mlm`)?"""
    return override.lstrip("+~").startswith("pretrain.")


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise SystemExit(f"error: no verdict preset '{name}' ({path}); presets: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.verdict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        help="a conf/verdict/<preset>.yaml (tasks, models, seeds, pretrain, overrides, "
        "task_overrides, pretrain_overrides); "
        "the options below replace its values",
    )
    parser.add_argument("--tasks", help="comma-separated conf/task names")
    parser.add_argument("--models", help="comma-separated conf/model names")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--pretrain", help="comma-separated conf/pretrain names: none (from "
                        "scratch, the default), mlm (self-pretrained)")  # fmt: skip
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default=None)
    parser.add_argument("--out", type=Path, help="the verdict's folder (default outputs/verdict/"
                        "<preset or 'grid'>)")  # fmt: skip
    parser.add_argument("--group", help="the W&B group (default verdict-<name of --out>)")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run (after --)")
    args = parser.parse_args(argv)

    preset = load_preset(args.preset) if args.preset else {}
    tasks = split(args.tasks) or preset.get("tasks")
    models = split(args.models) or preset.get("models")
    seeds = [int(s) for s in (split(args.seeds) or preset.get("seeds") or [0, 1, 2])]
    pretrains = split(args.pretrain) or preset.get("pretrain") or [SCRATCH]
    if not tasks or not models:
        parser.error("give --tasks and --models, or a --preset that names them")
    unknown = [p for p in pretrains if not (CONF_DIR / "pretrain" / f"{p}.yaml").exists()]
    if unknown:
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "pretrain").glob("*.yaml")))
        parser.error(
            f"--pretrain {','.join(unknown)}: no conf/pretrain/ of that name; known: {known}"
        )
    launcher = args.launcher or preset.get("launcher", "local")
    out = (args.out or Path("outputs/verdict") / (args.preset or "grid")).resolve()
    group = args.group or f"verdict-{out.name}"
    overrides = [*preset.get("overrides", []), *args.overrides]
    per_task = preset.get("task_overrides") or {}
    per_task_pretrain = preset.get("pretrain_overrides") or {}
    if any(p != SCRATCH for p in pretrains):
        for model in models:
            if not pretrainable(model):
                print(f"verdict: {model} is a whole network with its own head (model."
                      "architecture): it cannot be self-pretrained, so it runs from scratch only",
                      flush=True)  # fmt: skip

    todo = missing(out, tasks, models, seeds, pretrains)
    total = len(cells(tasks, models, pretrains)) * len(seeds)
    print(f"verdict {out}: {total - sum(map(len, todo.values()))} of {total} runs finished; "
          f"running {sum(map(len, todo.values()))}", flush=True)  # fmt: skip
    start = time.time()
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    for (task, model, p), todo_seeds in todo.items():
        extra = [*overrides, *per_task.get(task, [])]
        if p != SCRATCH:
            extra += per_task_pretrain.get(task, [])
        else:  # from scratch there is no pretraining to set
            extra = [o for o in extra if not for_pretraining(o)]
        cmd = command(out, task, model, todo_seeds, group, launcher, extra, p)
        print("+ " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, env=env, check=False)  # a failed run is in its results.json
    left = missing(out, tasks, models, seeds, pretrains)
    done = total - sum(map(len, left.values()))
    print(
        f"verdict: ran for {time.time() - start:.0f} s; {done} of {total} runs finished", flush=True
    )
    report = [sys.executable, "-m", "lra.report", str(out / "runs"), "--out", str(out / "report")]
    code = subprocess.run(report, env=env, check=False).returncode
    if left:
        undone = ", ".join(
            f"{t}/{m}{pretrain_tag(p)}/s{s}" for (t, m, p), ss in left.items() for s in ss
        )
        print(f"verdict: not finished: {undone} (rerun the same command to resume)",
              file=sys.stderr)  # fmt: skip
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())

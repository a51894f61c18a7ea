"""`python -m lra.data.prepare TASK [--seed S] [--out DIR] [key=value ...]`: make a task's data.

The generator settings are the task's own (`conf/task/TASK.yaml`, `task.data`), so a generated
dataset is exactly what `python -m lra.train task=TASK` would make; `key=value` overrides them,
as on the training command line (e.g. `task.data.generator.num_train=1000`).

Pathfinder (lra/data/snakes.py) takes the task from the resolution (32: `pathfinder`, 128:
`pathx`) and writes into `--out` (default: the task's `task.data.dir`), in the release layout:

    python -m lra.data.prepare pathfinder --resolution {32,128} --difficulty {easy,intermediate,hard}
        [--n N] [--seed S] [--workers W] [--grid PNG]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lra.build import build_datamodule, compose

PATHFINDER_TASKS = {32: "pathfinder", 128: "pathx"}  # --resolution -> task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.data.prepare", description=__doc__)
    parser.add_argument("task", help="a generated task: listops, listops_small or pathfinder")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (task default: 0)")
    parser.add_argument(
        "--out", default=None,
        help="output folder (default: the task's task.data.generated_dir; Pathfinder: task.data.dir)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="ListOps: write into a folder that holds other files (they are left as they are)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.data_dir=/data")
    snakes = parser.add_argument_group("pathfinder")
    snakes.add_argument("--resolution", type=int, choices=sorted(PATHFINDER_TASKS), default=32)
    snakes.add_argument("--difficulty", choices=["easy", "intermediate", "hard"], default=None)
    snakes.add_argument("--n", type=int, default=None, help="images (task default: 200,000)")
    snakes.add_argument("--workers", type=int, default=None, help="processes (task default: 1)")
    snakes.add_argument("--grid", default=None, help="also write a PNG grid of samples here")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    task = PATHFINDER_TASKS[args.resolution] if args.task == "pathfinder" else args.task
    overrides = [f"task={task}", *args.overrides]
    if args.seed is not None:
        overrides.append(f"task.data.seed={args.seed}")
    if args.out is not None:
        key = "dir" if task in PATHFINDER_TASKS.values() else "generated_dir"
        overrides.append(f"task.data.{key}={Path(args.out).resolve()}")
    for flag, key in (
        ("difficulty", "difficulty"),
        ("n", "generator.n"),
        ("workers", "generator.workers"),
    ):
        if getattr(args, flag) is not None:
            overrides.append(f"task.data.{key}={getattr(args, flag)}")
    try:
        cfg = compose(overrides)
    except Exception as e:  # hydra's own message names the bad group/option
        print(f"error: {e}", file=sys.stderr)
        return 2

    dm = build_datamodule(cfg)
    if not hasattr(dm, "generate_files"):
        print(f"error: task '{args.task}' has no generator; see data/README.md", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        manifest = dm.generate_files(**({"force": True} if args.force else {}))  # ListOps only
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=2))
    where = dm.folder if hasattr(dm, "folder") else dm.generated
    print(f"wrote {where} in {time.time() - t0:.1f} s")
    if args.grid:
        from lra.data.snakes import sample_grid

        print(f"wrote {sample_grid(dm.folder, args.grid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m lra.params [--check] [task=NAME] [model=NAME] [key=value ...]`: the matched counts.

For every task x model (or the ones named), the parameter budget, the total the model reaches by
turning its `match.knobs`, the deviation, the knob values and the mixers' share, as a markdown
table; `--check` exits 1 if any is outside `params.tolerance`. A combination that cannot be counted
at all (a knob that names no integer) is an error row, said on stderr too, and exits 1 with or
without `--check`. How matching works: lra/matching.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from lra.build import compose, configs
from lra.matching import ParameterBudgetError, match_parameters, matched_facts


def knob_cell(knobs: dict[str, int]) -> str:
    return ", ".join(f"`{path}` = {value}" for path, value in knobs.items()) or "(equal dimensions)"


def table(rows: list[dict[str, Any]]) -> str:
    """One row per (task, model); a row whose matching failed shows the closest total in bold, or
    the error itself where nothing could be counted (a knob that names no integer)."""
    head = "| task | model | budget | total | deviation | knobs | mixer share |"
    lines = [head, "|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        f, off = r.get("facts", r), "error" in r
        if off and "total" not in f:
            lines.append(f"| {r['task']} | {r['model']} | | | | **error**: {r['error']} | |")
            continue
        bold = (lambda x: f"**{x}**") if off else (lambda x: x)  # noqa: E731
        note = ": closest reachable total, outside tolerance" if off else ""
        total, deviation = f"{f['total']:,}", f"{100 * f['deviation']:+.2f}%"
        lines.append(
            f"| {r['task']} | {r['model']} | {f['budget']:,} | {bold(total)} | {bold(deviation)} | "
            f"{knob_cell(f['knobs'])}{note} | {100 * f['mixer'] / f['total']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.params",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if any is off tolerance")
    parser.add_argument("overrides", nargs="*", help="task=NAME model=NAME params.tolerance=..")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    picked = {k: v for k, v in (o.split("=", 1) for o in args.overrides if "=" in o)}
    tasks = [picked["task"]] if "task" in picked else configs("task")
    models = [picked["model"]] if "model" in picked else configs("model")
    rest = [o for o in args.overrides if o.split("=", 1)[0] not in ("task", "model")]
    rows, bad, broken = [], 0, 0
    for task in tasks:
        for model in models:
            try:
                cfg = match_parameters(compose([f"task={task}", f"model={model}", *rest]))
                rows.append({"task": task, "model": model, **matched_facts(cfg)})
            except ParameterBudgetError as e:
                bad += 1
                broken += "total" not in e.facts  # nothing counted: a config error
                rows.append({"task": task, "model": model, "error": str(e), "facts": e.facts})
                print(f"task={task} model={model}: {e}", file=sys.stderr)
    print(table(rows))
    if bad:
        print(f"\n{bad} combination(s) not matched within tolerance", file=sys.stderr)
    return 1 if broken or (bad and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())

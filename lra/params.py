"""Matched parameter counts: every backbone at its task's budget, by turning the model's own knob.

Comparisons of token mixers are only fair at equal parameter counts (LRA allows +10% over its base
Transformer; the IGLOO paper's figures are doubted because its counts could not be aligned). So:

- the **budget** of a task is the trainable-parameter count of the `baseline` model at the task's
  encoder shape, computed by building it (`params.budget=N` overrides it);
- each model config names the **knobs** it may turn (`match.knobs`: config paths of integer
  widths, each with a `min` and a `max`; by default the MLP width `task.encoder.mlp_dim`). Turned in
  order, each to the integer value whose total is closest to the budget, the ones before it held
  where they came closest; the first that brings the total within `params.tolerance` (relative,
  default 1%) ends the search, so a later knob moves only when the earlier ones cannot meet the
  budget on their own. Outside tolerance after the last knob, the run stops before training;
- `params.match=false` compares at equal dimensions instead, and says so.

Counts are of what trains: every parameter with requires_grad (embeddings, mixers, MLPs, head,
position tables), never buffers such as IGLOO's index tables.

    python -m lra.params [--check] [task=NAME] [model=NAME] [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import lra.config  # noqa: F401  (resolvers)
from lra.models.classifier import count_parameters

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
BASELINE = "baseline"


class ParameterBudgetError(ValueError):
    def __init__(self, message: str, facts: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.facts = facts or {}


def count(cfg: DictConfig) -> dict[str, int]:
    """Trainable parameters of the network `cfg` builds; on the meta device when it can (free)."""
    from lra.train import build_net

    try:
        with torch.device("meta"):
            net = build_net(cfg)
    except Exception:  # a model that draws buffers with a CPU generator: build it for real
        net = build_net(cfg)
    return count_parameters(net)


def with_model(cfg: DictConfig, model_name: str) -> DictConfig:
    """`cfg` with `model` replaced by `conf/model/<model_name>.yaml`."""
    other = copy.deepcopy(cfg)
    with open_dict(other):
        other.model = OmegaConf.load(CONF_DIR / "model" / f"{model_name}.yaml")
    return other


def budget(cfg: DictConfig) -> int:
    if cfg.params.get("budget"):
        return int(cfg.params.budget)
    return count(with_model(cfg, BASELINE))["total"]


WIDEST = 1 << 24  # a knob's default max: no width the solver tries is larger


def closest_value(
    total: Callable[[int], int], target: int, start: int, low: int = 1, high: int = WIDEST
) -> int:
    """The integer v in [low, high] whose total(v) is closest to target, total non-decreasing in v.

    Totals are (nearly) linear in a width, so a secant through two builds predicts v; a bracket
    around the prediction, widened until it holds the target, is then bisected (few builds)."""
    clip = lambda v: min(max(v, low), high)  # noqa: E731
    start = clip(start)
    other = clip(2 * start) if clip(2 * start) != start else clip(start // 2)
    a, b = total(start), total(other)
    guess = start + round((target - a) * (other - start) / (b - a)) if b != a else start
    lo, hi = clip(guess - 1), clip(guess + 1)
    while lo > low and total(lo) >= target:  # widen down: total(lo) < target, or lo == low
        lo = clip(lo - 2 * max(hi - lo, 1))
    while hi < high and total(hi) < target:  # widen up: total(hi) >= target, or hi == high
        lo, hi = hi, clip(2 * hi)
    while hi - lo > 1:  # invariant: total(lo) < target <= total(hi), unless at a bound
        mid = (lo + hi) // 2
        if total(mid) < target:
            lo = mid
        else:
            hi = mid
    return min({lo, hi}, key=lambda v: (abs(total(v) - target), v))


DEFAULT_KNOBS = [{"path": "task.encoder.mlp_dim"}]


def knobs_of(cfg: DictConfig) -> list[dict[str, Any]]:
    """The model's `match.knobs`, each {path, min, max}, checked: every path an integer in `cfg`."""
    knobs = OmegaConf.select(cfg, "model.match.knobs")
    knobs = (
        copy.deepcopy(DEFAULT_KNOBS)
        if knobs is None
        else OmegaConf.to_container(knobs, resolve=True)
    )
    for knob in knobs:
        value = OmegaConf.select(cfg, knob["path"])
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParameterBudgetError(
                f"model '{cfg.model.name}': match.knobs path '{knob['path']}' is not an integer "
                f"in the config (found {value!r}); name an integer width in "
                f"conf/model/{cfg.model.name}.yaml"
            )
        knob.setdefault("min", 1)
        knob.setdefault("max", WIDEST)
    return knobs


def solve(cfg: DictConfig) -> dict[str, Any]:
    """The knob values and counts that bring `cfg`'s model closest to its task's budget."""
    target = budget(cfg)
    trial = copy.deepcopy(cfg)
    cache: dict[tuple, dict[str, int]] = {}
    chosen: dict[str, int] = {}

    def counts_at(path: str, v: int) -> dict[str, int]:
        key = (*chosen.items(), (path, v))
        if key not in cache:
            OmegaConf.update(trial, path, v, merge=False)
            cache[key] = count(trial)
        return cache[key]

    for knob in knobs_of(cfg):
        path = knob["path"]
        start = OmegaConf.select(cfg, path)
        value = closest_value(
            lambda v, p=path: counts_at(p, v)["total"], target, start, knob["min"], knob["max"]
        )
        counts = counts_at(path, value)
        chosen[path] = value
        OmegaConf.update(trial, path, value, merge=False)
        if abs(counts["total"] - target) <= cfg.params.tolerance * target:
            break
    return {
        "match": True,
        "budget": target,
        "knobs": chosen,
        "total": counts["total"],
        "mixer": counts["mixer"],
        "deviation": (counts["total"] - target) / target,
    }


def match_parameters(cfg: DictConfig) -> dict[str, Any]:
    """Set the model's knob in `cfg` so it meets the budget; returns the facts for the record."""
    if not cfg.params.match:
        counts = count(cfg)
        target = budget(cfg)
        log.warning(
            "params.match=false: comparing at equal dimensions, %s has %d parameters (budget %d)",
            cfg.model.name, counts["total"], target,
        )  # fmt: skip
        return {"match": False, "budget": target, "knobs": {}, **counts,
                "deviation": (counts["total"] - target) / target}  # fmt: skip
    facts = solve(cfg)
    turned = ", ".join(f"{path}={value}" for path, value in facts["knobs"].items())
    if abs(facts["deviation"]) > cfg.params.tolerance:
        raise ParameterBudgetError(
            f"model={cfg.model.name} task={cfg.task.name}: the closest reachable total is "
            f"{facts['total']:,} parameters with {turned}, "
            f"{100 * facts['deviation']:+.2f}% from the budget {facts['budget']:,} (tolerance "
            f"{100 * cfg.params.tolerance:g}%). Widen params.tolerance, set params.budget, change "
            f"match.knobs in conf/model/{cfg.model.name}.yaml, or params.match=false",
            facts,
        )
    for path, value in facts["knobs"].items():
        OmegaConf.update(cfg, path, value, merge=False)
    log.info(
        "matched %s to the %s budget %d: %s gives %d (%+.2f%%)", cfg.model.name,
        cfg.task.name, facts["budget"], turned, facts["total"], 100 * facts["deviation"],
    )  # fmt: skip
    return facts


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def configs(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def knob_cell(knobs: dict[str, int]) -> str:
    return ", ".join(f"`{path}` = {value}" for path, value in knobs.items()) or "(equal dimensions)"


def table(rows: list[dict[str, Any]]) -> str:
    head = "| task | model | budget | total | deviation | knobs | mixer share |"
    lines = [head, "|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        f, off = r.get("facts", r), "error" in r
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
    tasks = (
        [picked["task"]]
        if "task" in picked
        else sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
    )
    models = (
        [picked["model"]]
        if "model" in picked
        else sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    )
    rest = [o for o in args.overrides if o.split("=", 1)[0] not in ("task", "model")]
    rows, bad = [], 0
    for task in tasks:
        for model in models:
            try:
                cfg = compose([f"task={task}", f"model={model}", *rest])
                facts = match_parameters(cfg)
                rows.append({"task": task, "model": model, **facts})
            except ParameterBudgetError as e:
                bad += 1
                rows.append({"task": task, "model": model, "error": str(e), "facts": e.facts})
    print(table(rows))
    if bad:
        print(f"\n{bad} combination(s) outside tolerance", file=sys.stderr)
    return 1 if (bad and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Matched parameter counts: every backbone at its task's budget, by turning the model's own knobs.

Comparisons of token mixers are only fair at equal parameter counts (LRA allows +10% over its base
Transformer; the IGLOO paper's figures are doubted because its counts could not be aligned). So:

- the **budget** of a task is the trainable-parameter count of the `baseline` model at the task's
  own encoder shape, computed by building it (`params.budget=N` overrides it);
- each model config names the **knobs** it may turn (`match.knobs`: config paths of integer
  widths, each with a `min` and a `max`; without the key, the MLP width `task.encoder.mlp_dim`;
  `[]`: none). Turned in order, each to the integer value whose total is closest to the budget,
  the ones before it held where they came closest; the first that brings the total within
  `params.tolerance` (relative, default 1%) ends the search, so a later knob moves only when the
  earlier ones cannot meet the budget on their own. A knob whose value is null in the config
  (`model.net.embedding_dim=null`) is off in that configuration and is skipped. Outside tolerance
  after the last knob, the run stops before training;
- `params.match=false` compares at equal dimensions instead, and says so.

`match_parameters(cfg)` takes a composed config and returns the run config: the knobs set, the
facts in `params.*` (match, budget, knobs, total, mixer, deviation), and `task.encoder` resolved
to the encoder the network is built with. The run config carries its budget in `params.budget`,
so matching it again gives the same run. Counts are of what trains: every parameter with
requires_grad (embeddings, mixers, MLPs, head, position tables), never buffers such as IGLOO's
index tables; they are taken on the meta device (`lra.build.count`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lra.build import ABSENT, count, resolve_encoder, with_model

log = logging.getLogger(__name__)

BASELINE = "baseline"
WIDEST = 1 << 24  # a knob's default max: no width the solver tries is larger
DEFAULT_KNOBS = [{"path": "task.encoder.mlp_dim"}]
FACTS = ("match", "budget", "knobs", "total", "mixer", "deviation")  # what a run records


class ParameterBudgetError(ValueError):
    def __init__(self, message: str, facts: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.facts = facts or {}


def budget(cfg: DictConfig) -> int:
    """`params.budget`, else the baseline's count at the task's own encoder."""
    given = cfg.params.get("budget")
    if given is None:
        return count(with_model(cfg, BASELINE))["total"]
    if not isinstance(given, int) or isinstance(given, bool) or given <= 0:
        raise ValueError(
            f"params.budget={given!r}: a budget is a positive parameter count "
            "(or null: the baseline's count at the task's encoder)"
        )
    return given


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


def knobs_of(cfg: DictConfig) -> list[dict[str, Any]]:
    """The model's `match.knobs` that are on, each {path, min, max}, checked: every path names an
    integer in `cfg` (or null: that knob is off in this configuration and left out)."""
    declared = OmegaConf.select(cfg, "model.match.knobs", default=ABSENT)
    knobs = (
        copy.deepcopy(DEFAULT_KNOBS)
        if declared is ABSENT or declared is None
        else OmegaConf.to_container(declared, resolve=True)
    )
    on = []
    for knob in knobs:
        value = OmegaConf.select(cfg, knob["path"], default=ABSENT)
        if value is None:
            log.info("match.knobs: %s is null in this configuration, so not turned", knob["path"])
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            found = "no such key" if value is ABSENT else f"found {value!r}"
            raise ParameterBudgetError(
                f"model '{cfg.model.name}': match.knobs path '{knob['path']}' is not an integer "
                f"in the config ({found}); give it an integer width (or null, to leave it out of "
                f"matching) on the command line or in conf/model/{cfg.model.name}.yaml"
            )
        on.append({"min": 1, "max": WIDEST, **knob})
    return on


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

    knobs = knobs_of(cfg)
    counts = count(cfg)  # with no knob to turn, the model as it is
    for knob in knobs:
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


def equal_dimensions(cfg: DictConfig) -> dict[str, Any]:
    """The facts of `params.match=false`: the model as configured, against the budget."""
    counts, target = count(cfg), budget(cfg)
    log.warning(
        "params.match=false: comparing at equal dimensions, %s has %d parameters (budget %d)",
        cfg.model.name, counts["total"], target,
    )  # fmt: skip
    return {"match": False, "budget": target, "knobs": {}, **counts,
            "deviation": (counts["total"] - target) / target}  # fmt: skip


def match_parameters(cfg: DictConfig) -> DictConfig:
    """The run config of the composed `cfg`: its model's knobs set to meet the budget, the facts
    in `params.*`, the encoder resolved. `cfg` itself is left as it was."""
    facts = solve(cfg) if cfg.params.match else equal_dimensions(cfg)
    if facts["match"] and abs(facts["deviation"]) > cfg.params.tolerance:
        turned = ", ".join(f"{path}={value}" for path, value in facts["knobs"].items())
        how = (
            f"with {turned}"
            if turned
            else "with no knob to turn (match.knobs is empty, or each knob is null here)"
        )
        raise ParameterBudgetError(
            f"model={cfg.model.name} task={cfg.task.name}: the closest reachable total is "
            f"{facts['total']:,} parameters {how}, "
            f"{100 * facts['deviation']:+.2f}% from the budget {facts['budget']:,} (tolerance "
            f"{100 * cfg.params.tolerance:g}%). Widen params.tolerance, set params.budget, change "
            f"match.knobs in conf/model/{cfg.model.name}.yaml, or params.match=false",
            facts,
        )
    matched = copy.deepcopy(cfg)
    for path, value in facts["knobs"].items():
        OmegaConf.update(matched, path, value, merge=False)
    with open_dict(matched):
        for key, value in facts.items():  # replaced whole: no knob of an earlier match stays
            OmegaConf.update(matched, f"params.{key}", value, merge=False)
    if facts["match"]:
        log.info(
            "matched %s to the %s budget %d: %s gives %d (%+.2f%%)", cfg.model.name,
            cfg.task.name, facts["budget"], dict(facts["knobs"]), facts["total"],
            100 * facts["deviation"],
        )  # fmt: skip
    return resolve_encoder(matched)


def matched_facts(cfg: DictConfig) -> dict[str, Any]:
    """The facts a matched config holds in `params.*`, as a plain dict for the record."""
    params = OmegaConf.to_container(cfg.params, resolve=True)
    return {key: params[key] for key in FACTS}

"""LRA's learning-rate schedules, as multipliers of the base lr at optimizer step s (1-based).

rsqrt:  min(1, s/w) / sqrt(max(s, w))
cosine: min(1, s/w) * 0.5 * (1 + cos(pi * (s - w) / (S - w)))   for s > w
constant: min(1, s/w)
inverse_time: min(1, s/w) / (1 + r (s - 1))   Keras' Adam(lr, decay=r): lr / (1 + r * iterations)
"""

from __future__ import annotations

import math
from collections.abc import Callable


def rsqrt(warmup: int) -> Callable[[int], float]:
    w = max(1, warmup)
    return lambda s: min(1.0, s / w) / math.sqrt(max(s, w))


def cosine(warmup: int, total: int) -> Callable[[int], float]:
    w = max(1, warmup)

    def factor(s: int) -> float:
        if s <= w:
            return s / w
        progress = min(1.0, (s - w) / max(1, total - w))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def constant(warmup: int) -> Callable[[int], float]:
    w = max(1, warmup)
    return lambda s: min(1.0, s / w)


def inverse_time(warmup: int, rate: float) -> Callable[[int], float]:
    """Keras' legacy `decay`: its update k (from 0) runs at lr / (1 + rate * k), k = s - 1."""
    w = max(1, warmup)
    return lambda s: min(1.0, s / w) / (1.0 + rate * (s - 1))


def schedule(name: str, warmup: int, total: int, rate: float = 0.0) -> Callable[[int], float]:
    """The multiplier of schedule `name`; `rate` (task.optim.decay_rate) only for inverse_time."""
    if name == "rsqrt":
        return rsqrt(warmup)
    if name == "cosine":
        return cosine(warmup, total)
    if name == "constant":
        return constant(warmup)
    if name == "inverse_time":
        return inverse_time(warmup, rate)
    raise ValueError(f"unknown lr schedule '{name}': use rsqrt, cosine, constant or inverse_time")

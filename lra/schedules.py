"""LRA's learning-rate schedules, as multipliers of the base lr at optimizer step s (1-based).

rsqrt:  min(1, s/w) / sqrt(max(s, w))
cosine: min(1, s/w) * 0.5 * (1 + cos(pi * (s - w) / (S - w)))   for s > w
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


def schedule(name: str, warmup: int, total: int) -> Callable[[int], float]:
    if name == "rsqrt":
        return rsqrt(warmup)
    if name == "cosine":
        return cosine(warmup, total)
    if name == "constant":
        return constant(warmup)
    raise ValueError(f"unknown lr schedule '{name}': use rsqrt, cosine or constant")

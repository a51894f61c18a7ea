"""Time and peak memory of one benchmark point, each point in a fresh process.

A point is a factory `module:function` that builds a model and inputs from keyword arguments and
returns a zero-argument `step()` (e.g. forward + backward). The child process builds it, runs
`warmup` untimed steps, then `repeats` timed ones, and reports the median time and the peak memory:
on CUDA `torch.cuda.max_memory_allocated` over the timed steps; on CPU the growth of the process's
peak resident set (ru_maxrss) over what it held after building, so points don't pollute each other.

    python -m lra.bench.measure MODULE:FUNCTION '{"n": 1024}' [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_point(step: Callable[[], Any], device: str, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per step and peak memory (MiB) above the state after building."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max(0.0, peak_rss_mb() - base)  # statm and ru_maxrss round differently
    return {"seconds": statistics.median(times), "peak_mb": peak}


def measure_here(
    factory: str, kwargs: dict[str, Any], device: str = "cpu", warmup: int = 1, repeats: int = 3
) -> dict[str, Any]:
    """One point in this process (what the fresh process of `measure` runs): build the factory's
    step with torch seeded, then `run_point`. Here, memory includes whatever the process holds."""
    module, name = factory.split(":")
    torch.manual_seed(0)
    step = getattr(importlib.import_module(module), name)(**kwargs, device=device)
    return {**kwargs, **run_point(step, device, warmup, repeats)}


def measure(
    factory: str,
    kwargs: dict[str, Any],
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    timeout: float = 900,
) -> dict[str, Any]:
    """Run one point in a fresh Python process; returns kwargs + seconds + peak_mb (+ error)."""
    cmd = [
        sys.executable, "-m", "lra.bench.measure", factory, json.dumps(kwargs),
        "--device", device, "--warmup", str(warmup), "--repeats", str(repeats),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {**kwargs, "seconds": float("nan"), "peak_mb": float("nan"), "error": tail[0]}
    return {**kwargs, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.bench.measure", description=__doc__)
    parser.add_argument("factory", help="module:function returning step()")
    parser.add_argument("kwargs", help="JSON keyword arguments for the factory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    point = measure_here(args.factory, json.loads(args.kwargs), args.device, args.warmup,
                         args.repeats)  # fmt: skip
    print(json.dumps({k: point[k] for k in ("seconds", "peak_mb")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

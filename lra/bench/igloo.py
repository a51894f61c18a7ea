"""Forward + backward time and peak memory of the `igloo` mixer against `baseline` as n grows.

Each point (mixer, n) runs in a fresh process (`lra.bench.measure`): one mixer layer built with the
options of its `conf/model/<name>.yaml` and max_len = n, input x [B, n, D] with no padding, one step
= forward, sum, backward. Prints a table, igloo's time(4096)/time(1024) and the crossover length
from which igloo is faster than baseline.

    python -m lra.bench.igloo [--lengths 256 512 1024 2048 4096 8192] [--d-model 256]
                              [--batch 2] [--heads 4] [--device cpu] [--threads 1]
                              [--repeats 3] [--json FILE]

One CPU thread by default: on a shared machine, two OpenMP threads mostly measure the others'
load (spin-waits). 256 and 512 are in the default lengths to locate the crossover.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lra.bench.measure import measure
from lra.config import CONF_DIR
from lra.models.encoder import mixer_factory

MODELS = ("igloo", "baseline")


def mixer_step(
    model: str, n: int, d_model: int, batch: int, heads: int, threads: int, device: str = "cpu"
):
    """The factory `lra.bench.measure` calls in the child process: build once, return step()."""
    if threads:
        torch.set_num_threads(threads)
    cfg = OmegaConf.create(
        {"task": {"max_len": n}, "model": OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")}
    )
    options = OmegaConf.to_container(cfg.model.mixer, resolve=True)  # ${task.max_len} is n
    name = options.pop("name")
    _, make = mixer_factory(name, options, d_model=d_model, num_heads=heads, qkv_dim=d_model,
                            attn_dropout=0.0, max_len=n)  # fmt: skip
    mixer = make().to(device)
    x = torch.randn(batch, n, d_model, device=device, requires_grad=True)
    mask = torch.ones(batch, n, dtype=torch.bool, device=device)

    def step() -> None:
        mixer(x, mask).sum().backward()

    return step


def crossover(points: dict[str, dict[int, dict[str, Any]]], lengths: list[int]) -> str:
    """The length from which igloo stays faster, log-interpolated from the last one it was not."""
    log_ratio = [  # log(igloo / baseline): < 0 where igloo is faster
        math.log(points["igloo"][n]["seconds"] / points["baseline"][n]["seconds"]) for n in lengths
    ]
    k = len(lengths)
    while k > 0 and log_ratio[k - 1] < 0:
        k -= 1
    if k == len(lengths):
        return f"igloo is not faster than baseline at n = {lengths[-1]}"
    if k == 0:
        return f"igloo is faster at every measured length (n >= {lengths[0]})"
    a, b, t = lengths[k - 1], lengths[k], log_ratio[k - 1] / (log_ratio[k - 1] - log_ratio[k])
    n_star = math.exp(math.log(a) + t * (math.log(b) - math.log(a)))
    return f"igloo is faster from n = {b} on; log-interpolated crossover n ≈ {n_star:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.bench.igloo", description=__doc__)
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192]
    )
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4, help="baseline's heads (igloo has none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 0: torch's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the points to this file")
    args = parser.parse_args(argv)
    lengths = sorted(args.lengths)

    points: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in MODELS}
    for n in lengths:
        for model in MODELS:
            kwargs = dict(
                model=model, n=n, d_model=args.d_model, batch=args.batch, heads=args.heads,
                threads=args.threads,
            )  # fmt: skip
            points[model][n] = measure(
                "lra.bench.igloo:mixer_step", kwargs, device=args.device, repeats=args.repeats
            )
            p = points[model][n]
            print(f"  {model} n={n}: {p['seconds']:.3f} s, {p['peak_mb']:.0f} MiB", file=sys.stderr)

    print(
        f"forward+backward of one mixer, {args.device}, B={args.batch}, D={args.d_model}, "
        f"{args.threads or torch.get_num_threads()} thread(s), median of {args.repeats} "
        f"(baseline: {args.heads} heads)\n"
    )
    print("| n | igloo s | igloo peak MiB | baseline s | baseline peak MiB | baseline / igloo |")
    print("|---|---|---|---|---|---|")
    for n in lengths:
        i, b = points["igloo"][n], points["baseline"][n]
        print(
            f"| {n} | {i['seconds']:.3f} | {i['peak_mb']:.0f} | {b['seconds']:.3f} "
            f"| {b['peak_mb']:.0f} | {b['seconds'] / i['seconds']:.2f} |"
        )
    errors = [
        f"{m} n={n}: {p['error']}" for m in MODELS for n, p in points[m].items() if "error" in p
    ]
    for error in errors:
        print(f"error: {error}")
    print()
    if {1024, 4096} <= set(lengths):
        ratio = points["igloo"][4096]["seconds"] / points["igloo"][1024]["seconds"]
        print(f"igloo time(4096) / time(1024) = {ratio:.2f} (target <= 4.5)")
    print(crossover(points, lengths))
    if args.json:
        args.json.write_text(json.dumps({m: list(p.values()) for m, p in points.items()}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

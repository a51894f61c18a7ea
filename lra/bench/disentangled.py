"""One encoder layer, forward + backward: disentangled vs baseline vs transformers' DeBERTa-v2.

    python -m lra.bench.disentangled [--n 512 1024 2048] [--device cpu] [--threads N] [--repeats 3]

Every point runs in a fresh process (`lra.bench.measure`): B=2, D=256, 4 heads, MLP 1024,
dropout 0, fp32 on CPU (bf16 on CUDA), all keys real. Rows:
- `disentangled`: this harness's pre-LN block with `model=disentangled`'s defaults (c2p + p2c,
  share_att_key, LayerNorm-ed E, 256 log buckets, max_relative_positions = n), E's LayerNorm
  included; `disentangled-eager` is the same block on the reference path.
- `baseline`: the same block with the softmax mixer (SDPA).
- `transformers`: `DebertaV2Layer` with the same attention settings, the relative positions and E's
  LayerNorm included, as DebertaV2Encoder computes them once per forward.
- `torch`: `torch.nn.TransformerEncoderLayer` (pre-LN), a common yardstick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

from lra.bench.measure import measure
from lra.models.encoder import Block, mixer_factory

SHAPE = dict(B=2, D=256, heads=4, mlp=1024)
ROWS = ("disentangled", "disentangled-eager", "baseline", "transformers", "torch")
DEFAULTS = dict(pos_att_type=["c2p", "p2c"], share_att_key=True, position_buckets=256)


def dtype_for(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def harness_layer(
    n: int,
    mixer: str,
    impl: str = "auto",
    device: str = "cpu",
    B: int = SHAPE["B"],
    D: int = SHAPE["D"],
    heads: int = SHAPE["heads"],
    mlp: int = SHAPE["mlp"],
) -> Callable[[], None]:
    """This harness's block (pre-LN, mixer, MLP) with `mixer`; step() = forward + backward."""
    options = (
        {**DEFAULTS, "max_relative_positions": n, "impl": impl} if mixer == "disentangled" else {}
    )
    shared, make = mixer_factory(mixer, options, d_model=D, num_heads=heads, qkv_dim=D,
                                 attn_dropout=0.0, max_len=n)  # fmt: skip
    block = Block(make(), D, mlp, dropout=0.0)
    dtype = dtype_for(device)
    modules = torch.nn.ModuleList([block] + ([shared] if shared else [])).to(device, dtype)
    x = torch.randn(B, n, D, device=device, dtype=dtype, requires_grad=True)
    mask = torch.ones(B, n, dtype=torch.bool, device=device)

    def step() -> None:
        modules.zero_grad(set_to_none=True)
        block(x, mask, **(shared() if shared else {})).float().sum().backward()

    return step


def transformers_layer(
    n: int,
    device: str = "cpu",
    B: int = SHAPE["B"],
    D: int = SHAPE["D"],
    heads: int = SHAPE["heads"],
    mlp: int = SHAPE["mlp"],
) -> Callable[[], None]:
    """transformers' DebertaV2Layer; step() also builds the relative positions and LN(E)."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import (
        DebertaV2Config,
        DebertaV2Layer,
        build_relative_position,
    )

    config = DebertaV2Config(
        hidden_size=D,
        num_attention_heads=heads,
        intermediate_size=mlp,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        relative_attention=True,
        max_relative_positions=n,
        max_position_embeddings=n,
        norm_rel_ebd="layer_norm",
        **DEFAULTS,
    )
    dtype = dtype_for(device)
    layer = DebertaV2Layer(config)
    E = torch.nn.Embedding(2 * config.position_buckets, D)
    norm = torch.nn.LayerNorm(D)
    modules = torch.nn.ModuleList([layer, E, norm]).to(device, dtype)
    x = torch.randn(B, n, D, device=device, dtype=dtype, requires_grad=True)
    keep = torch.ones(B, n, dtype=torch.long, device=device)
    mask = keep[:, None, None, :] * keep[:, None, :, None]  # DebertaV2Encoder.get_attention_mask

    def step() -> None:
        modules.zero_grad(set_to_none=True)
        rel = build_relative_position(
            x, x, bucket_size=config.position_buckets, max_position=config.max_relative_positions
        )
        y, _ = layer(x, mask, relative_pos=rel, rel_embeddings=norm(E.weight))
        y.float().sum().backward()

    return step


def torch_layer(
    n: int,
    device: str = "cpu",
    B: int = SHAPE["B"],
    D: int = SHAPE["D"],
    heads: int = SHAPE["heads"],
    mlp: int = SHAPE["mlp"],
) -> Callable[[], None]:
    layer = torch.nn.TransformerEncoderLayer(
        D, heads, mlp, dropout=0.0, batch_first=True, norm_first=True
    )
    dtype = dtype_for(device)
    layer = layer.to(device, dtype)
    x = torch.randn(B, n, D, device=device, dtype=dtype, requires_grad=True)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).float().sum().backward()

    return step


POINTS: dict[str, tuple[str, dict]] = {
    "disentangled": ("harness_layer", {"mixer": "disentangled"}),
    "disentangled-eager": ("harness_layer", {"mixer": "disentangled", "impl": "eager"}),
    "baseline": ("harness_layer", {"mixer": "baseline"}),
    "transformers": ("transformers_layer", {}),
    "torch": ("torch_layer", {}),
}


def table(results: list[dict], rows: list[str], lengths: list[int]) -> str:
    """Markdown: time (ms) and peak memory (MiB) per row and length, and time / transformers."""
    by = {(r["row"], r["n"]): r for r in results}
    head = "| layer | " + " | ".join(f"n={n} ms | MiB | × tf" for n in lengths) + " |"
    lines = [head, "|---" * (1 + 3 * len(lengths)) + "|"]
    for row in rows:
        cells = []
        for n in lengths:
            r, ref = by[(row, n)], by.get(("transformers", n))
            if "error" in r:
                cells += ["error", "", ""]
                continue
            ratio = r["seconds"] / ref["seconds"] if ref and "error" not in ref else float("nan")
            cells += [f"{1000 * r['seconds']:.0f}", f"{r['peak_mb']:.0f}", f"{ratio:.2f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.bench.disentangled", description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every point")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the points' processes inherit it
    threads = os.environ.get("OMP_NUM_THREADS", f"{torch.get_num_threads()} (torch default)")
    load = os.getloadavg()[0]
    results = []
    for n in args.n:
        for row in args.rows:
            factory, kwargs = POINTS[row]
            point = measure(
                f"lra.bench.disentangled:{factory}",
                {"n": n, **kwargs},
                device=args.device,
                repeats=args.repeats,
            )
            point["row"] = row
            results.append(point)
            status = point.get("error") or f"{point['seconds']:.3f} s, {point['peak_mb']:.0f} MiB"
            print(f"n={n} {row}: {status}", file=sys.stderr, flush=True)
    print(f"{args.device}, threads {threads}, load average {load:.1f} at start; {SHAPE}")
    print(table(results, args.rows, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())

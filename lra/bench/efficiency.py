"""LRA's efficiency table (Table 2) from this harness: training steps/s and peak memory vs length.

For every backbone (`conf/model/*.yaml`) at matched parameters on a task's shape (default `text`),
and for peers at the same shape (a stack of `torch.nn.TransformerEncoderLayer`; `transformers`'
DebertaV2 encoder when installed), each point runs in a fresh process (`lra.bench.measure`): one
training step is forward + backward + AdamW step on random tokens, after warm-up, timed with
synchronisation, median of repeats. Points are measured in `--rounds` rounds, every point once
per round, each round in a rotated order, so a ratio compares points measured side by side: a
point's time is its median over rounds, and its speed relative to baseline (× baseline) is the
median over rounds of that round's ratio, with the lowest and highest round beside it. On CPU
the memory is the growth of the process's peak resident set over what it held before the timed
steps; on CUDA `torch.cuda.max_memory_allocated`, under bf16 autocast, and the model FLOPs
utilisation against the device's measured bf16 matmul peak.

    python -m lra.bench [--task text] [--lengths 1024 2048 3072 4096] [--batch 2]
                        [--models baseline igloo ...] [--peers transformer deberta]
                        [--device cpu|cuda] [--repeats 3] [--rounds 3] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lra.bench.measure import measure
from lra.build import build_net, compose, configs
from lra.io import atomic_path, write_text
from lra.matching import match_parameters

PEERS = ("transformer", "deberta")


def task_config(task: str, model: str, n: int, overrides: list[str]):
    """The run config for (task, model) at length n, parameters matched."""
    overrides = [f"task={task}", f"model={model}", f"task.max_len={n}", *overrides]
    return match_parameters(compose(overrides))


def random_batch(cfg, batch: int, n: int, device: str) -> dict[str, torch.Tensor]:
    tokens = lambda: torch.randint(1, cfg.task.vocab_size, (batch, n), device=device)  # noqa: E731
    out = {
        "input_ids": tokens(),
        "label": torch.randint(0, cfg.task.num_classes, (batch,), device=device),
    }
    if cfg.task.get("head") == "dual":
        out = {"input_ids_1": out["input_ids"], "input_ids_2": tokens(), "label": out["label"]}
    return out


def step_fn(net: nn.Module, forward: Callable[[], torch.Tensor], device: str) -> Callable[[], None]:
    """One training step: forward, cross-entropy, backward, AdamW; bf16 autocast on CUDA."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    def step() -> None:
        with autocast:
            loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def backbone_step(task: str, model: str, n: int, batch: int, overrides: list[str], device: str):
    """Factory (run in the child process): a step of the harness's own network for `model`."""
    cfg = task_config(task, model, n, overrides)
    net = build_net(cfg).to(device).train()
    data = random_batch(cfg, batch, n, device)
    return step_fn(net, lambda: nn.functional.cross_entropy(net(data), data["label"]), device)


class TorchTransformer(nn.Module):
    """Peer: embedding + positions + stock pre-LN `nn.TransformerEncoderLayer`s + LRA's head."""

    def __init__(self, vocab: int, n: int, enc: Any, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, enc.d_model, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(n, enc.d_model))
        layer = nn.TransformerEncoderLayer(
            enc.d_model, enc.num_heads, enc.mlp_dim, enc.dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.layers = nn.TransformerEncoder(layer, enc.num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(enc.d_model, enc.mlp_dim), nn.ReLU(),
                                  nn.Linear(enc.mlp_dim, num_classes))  # fmt: skip

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embed(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=ids == 0)
        return self.head(x.mean(1))


def deberta_encoder(vocab: int, n: int, enc: Any) -> nn.Module:
    from transformers import DebertaV2Config, DebertaV2Model

    config = DebertaV2Config(
        vocab_size=vocab, hidden_size=enc.d_model, num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads, intermediate_size=enc.mlp_dim,
        hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attn_dropout,
        max_position_embeddings=n, relative_attention=True, position_buckets=256,
        max_relative_positions=n, pos_att_type=["c2p", "p2c"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False,
    )  # fmt: skip
    return DebertaV2Model(config)


def peer_step(task: str, peer: str, n: int, batch: int, overrides: list[str], device: str):
    """Factory (run in the child process): a step of a peer implementation at the task's shape."""
    cfg = task_config(task, "baseline", n, overrides)
    enc, vocab, classes = cfg.task.encoder, cfg.task.vocab_size, cfg.task.num_classes
    ids = torch.randint(1, vocab, (batch, n), device=device)
    label = torch.randint(0, classes, (batch,), device=device)
    if peer == "transformer":
        net = TorchTransformer(vocab, n, enc, classes).to(device).train()
        return step_fn(net, lambda: nn.functional.cross_entropy(net(ids), label), device)
    if peer == "deberta":
        body = deberta_encoder(vocab, n, enc).to(device).train()
        head = nn.Linear(enc.d_model, classes).to(device)
        net = nn.ModuleList([body, head])

        def forward() -> torch.Tensor:
            h = body(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
            return nn.functional.cross_entropy(head(h[:, 0]), label)

        return step_fn(net, forward, device)
    raise ValueError(f"unknown peer '{peer}': choose from {', '.join(PEERS)}")


def bf16_peak_tflops(device: str) -> float:
    """Measured bf16 matmul throughput of the device (TFLOP/s), 8192^3, median of 10."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times = []
    for _ in range(12):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * 8192**3 / statistics.median(times[2:]) / 1e12


def step_flops(factory: Callable[..., Callable[[], None]], **kwargs: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    step = factory(**kwargs)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def markdown(rows: list[dict[str, Any]], lengths: list[int]) -> str:
    """LRA Table 2's form: steps/s (× baseline, its range over rounds) and peak memory."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    at = {(r["name"], r["n"]): r for r in rows}
    head = [
        "model",
        "params",
        *[f"steps/s {n}" for n in lengths],
        *[f"memory MB {n}" for n in lengths],
    ]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in names:
        cells = [
            name,
            next((f"{r['params']:,}" for r in rows if r["name"] == name and r["params"]), ""),
        ]
        for n in lengths:
            r = at.get((name, n))
            if r is None or r.get("error"):
                cells.append("–")
                continue
            rel = ""
            if r.get("vs_baseline") is not None:
                rel = f" ({r['vs_baseline']:.2f}×"
                if r.get("rounds", 1) > 1 and r["name"] != "baseline":
                    rel += f", {r['vs_baseline_lo']:.2f}–{r['vs_baseline_hi']:.2f}"
                rel += ")"
            cells.append(f"{r['steps_per_s']:.3g}{rel}")
        for n in lengths:
            r = at.get((name, n))
            cells.append("–" if r is None or r.get("error") else f"{r['peak_mb']:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name in dict.fromkeys(r["name"] for r in rows):
        ok = [r for r in rows if r["name"] == name and not r.get("error")]
        if ok:
            ax_t.plot([r["n"] for r in ok], [r["seconds"] for r in ok], "o-", label=name)
            ax_m.plot([r["n"] for r in ok], [max(r["peak_mb"], 1e-3) for r in ok], "o-", label=name)
    for ax, label in ((ax_t, "seconds per training step"), (ax_m, "peak memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def point_kwargs(args: argparse.Namespace, factory: str, name: str, n: int) -> dict[str, Any]:
    return {"task": args.task, ("model" if factory == "backbone_step" else "peer"): name, "n": n,
            "batch": args.batch, "overrides": args.overrides}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--task", default="text")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 3072, 4096])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=None, help="default: every conf/model")
    parser.add_argument("--peers", nargs="*", default=list(PEERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each point, "
                        "interleaved: every point once per round")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. task.encoder.num_layers=2"
    )
    args = parser.parse_intermixed_args(argv)
    from rich.progress import track

    models = args.models or configs("model")
    peers = [p for p in args.peers if p != "deberta" or importlib.util.find_spec("transformers")]
    if len(peers) < len(args.peers):
        print("transformers is not installed: the deberta peer is skipped", file=sys.stderr)
    points = [("backbone_step", m, n) for n in args.lengths for m in models]
    points += [("peer_step", p, n) for n in args.lengths for p in peers]
    peak = bf16_peak_tflops(args.device) if args.device.startswith("cuda") else None

    measured: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(points))}
    order = list(range(len(points)))
    schedule = [order[r % len(order) :] + order[: r % len(order)] for r in range(args.rounds)]
    for i in track([i for rnd in schedule for i in rnd], description="benchmark points"):
        factory, name, n = points[i]
        point = measure(f"lra.bench.efficiency:{factory}", point_kwargs(args, factory, name, n),
                        device=args.device, warmup=args.warmup, repeats=args.repeats)  # fmt: skip
        measured[i].append(point)

    rows = []
    for i, (factory, name, n) in enumerate(points):
        kwargs = point_kwargs(args, factory, name, n)
        times = [p["seconds"] for p in measured[i]]
        errors = [p["error"] for p in measured[i] if p.get("error")]
        params = None
        if factory == "backbone_step":
            params = task_config(args.task, name, n, args.overrides).params.total
        seconds = statistics.median(times) if not errors else float("nan")
        row = {
            "name": name if factory == "backbone_step" else f"peer:{name}",
            "n": n,
            "batch": args.batch,
            "device": args.device,
            "params": params,
            "seconds": seconds,
            "steps_per_s": 1 / seconds,
            "peak_mb": max(p["peak_mb"] for p in measured[i]),
            "mfu": None,
            "rounds": len(times),
            "seconds_lo": min(times),
            "seconds_hi": max(times),
            "vs_baseline": None,
            "vs_baseline_lo": None,
            "vs_baseline_hi": None,
            "error": errors[0] if errors else "",
        }
        base = points.index(("backbone_step", "baseline", n)) if "baseline" in models else None
        if base is not None and not row["error"]:
            ratios = [
                b["seconds"] / p["seconds"]
                for b, p in zip(measured[base], measured[i], strict=True)
            ]
            if all(r == r for r in ratios):  # no NaN: baseline measured in every round
                row["vs_baseline"] = statistics.median(ratios)
                row["vs_baseline_lo"], row["vs_baseline_hi"] = min(ratios), max(ratios)
        if peak and not row["error"]:
            flops = step_flops(globals()[factory], **kwargs, device=args.device)
            row["mfu"] = flops / seconds / (peak * 1e12)
        rows.append(row)

    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "efficiency.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, args.lengths)
    header = (f"{args.task} shape, batch {args.batch}, {args.device}, {args.rounds} interleaved "
              f"rounds of {args.warmup} warm-up + {args.repeats} timed steps a point")  # fmt: skip
    if peak:
        header += f", bf16 matmul peak {peak:.0f} TFLOP/s"
    write_text(args.out / "efficiency.md", f"{header}\n\n{table}")
    plot(args.out / "efficiency.png", rows)
    print(f"{header}\n\n{table}")
    for r in rows:
        if r["error"]:
            print(f"{r['name']} at n={r['n']}: {r['error']}", file=sys.stderr)
    print(f"wrote {args.out}/efficiency.csv, efficiency.md, efficiency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

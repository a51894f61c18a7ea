"""`python -m lra.gpucheck`: a staged self-check of one GPU, meant to finish within 8 minutes on
one H100/H200 (a target: no GPU has run it yet).

    train         every task x backbone, parameters matched, at the task's protocol shape and
                  global batch: bf16-mixed training steps through the LightningModule and Trainer
                  that training uses, on random batches (right-padded with 0, as the DataModules
                  pad, for the tasks whose sequences vary in length), then one validation step.
                  Reports s/step, peak GiB, the disentangled attention run in training / eval
                  (`choose_impl`), parameters left without a gradient and non-finite gradients;
                  an OOM is retried at half the batch until one fits, and fails the point.
    disentangled  impl=sdpa and impl=flex against impl=eager in fp32 (the reference): the output at
                  real positions, every parameter's gradient and the input's, in fp32 and under
                  bf16 autocast, on a right-padded batch at each task's matched head shape
                  (attention dropout 0, where outputs are comparable); flex is skipped where
                  `choose_impl` refuses it. Then the compiled flex path at several lengths: how
                  many frames torch.compile compiles at each new length.
    bench         `python -m lra.bench --device cuda` at the text shape, n = 1024 and 4096,
                  run as `python -m lra.bench`: steps/s, peak memory and MFU as the bench
                  computes them (read back from its efficiency.csv).
    cli           the real command line: `python -m lra.train task=T trainer=gpu
                  ++trainer.fast_dev_run=true logger=none` for every task on a few rows in the
                  official layouts (lra.data.samples), and one `trainer=ddp trainer.devices=1`
                  run that checkpoints and tests.

Each point has a time budget (`--budget-s`); a point past it is `timeout`. Prints one table
(stage, check, status, figure; status ok / fail / timeout / skip) and writes it as markdown with
a JSON of every row to `--out`. Exits 0 iff nothing failed or timed out, else 1; 2 without CUDA
unless `--dry-run`, which runs the same code on the CPU at toy sizes (width 16, 2 heads, 1 layer,
n = 64, batch 2, fp32 training, trainer=cpu and ddp_sim, one thread), to check the code where no
GPU is.

    python -m lra.gpucheck [--dry-run] [--stages train disentangled bench cli]
                           [--budget-s S] [--out outputs/gpucheck]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from lra.build import (
    build_datamodule,
    build_module,
    build_net,
    compose,
    configs,
    per_device_batch,
    sample_tasks,
)
from lra.data.samples import write_all_tasks
from lra.io import write_json, write_text
from lra.matching import match_parameters
from lra.models.attention.disentangled import FLEX_MIN_HEAD, DisentangledAttention, choose_impl

STATUSES = ("ok", "fail", "timeout", "skip")
PADDED = ("listops", "text", "retrieval")  # families of varying length; pixels fill max_len
# max |impl - eager fp32| / max |eager fp32| allowed; under bf16 also 4x eager's own bf16 error
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
BF16_OVER_EAGER = 4
NO_CUDA = "no CUDA device: run with --dry-run to check the code on CPU"
TOY = (  # the dry run's sizes; tiny widths meet the budget only within a few percent
    "task.max_len=64",
    "task.encoder.num_layers=1",
    "task.encoder.num_heads=2",
    "task.encoder.d_model=16",
    "task.encoder.qkv_dim=16",
    "task.encoder.mlp_dim=32",
    "task.optim.batch_size=2",
    "params.tolerance=0.05",
)


@dataclass(frozen=True)
class Profile:
    """What the check runs at: one GPU, or the CPU at toy sizes (--dry-run)."""

    name: str
    device: str  # cuda | cpu
    trainer: str  # conf/trainer option of the train and cli stages
    ddp_trainer: str  # conf/trainer option of the DDP run
    overrides: tuple[str, ...]  # on every composed config and command line
    budget_s: float  # default time budget of one point
    warmup_steps: int  # training steps not timed (compilation, allocator warm-up)
    timed_steps: int
    dtypes: tuple[str, ...]  # of the disentangled comparisons
    mixer_n: int  # the disentangled comparisons' length (at most the task's)
    recompile_lengths: tuple[int, ...]
    bench_lengths: tuple[int, ...]
    bench_models: tuple[str, ...] | None  # None: every conf/model
    bench_peers: tuple[str, ...]
    bench: tuple[str, ...]  # lra.bench's other arguments
    cli: tuple[str, ...]  # more overrides of the cli stage's runs
    cli_jobs: int  # cli runs at a time
    threads: int | None = None  # torch threads here and in child processes; None: torch's default


GPU = Profile(
    name="gpu", device="cuda", trainer="gpu", ddp_trainer="ddp", overrides=(), budget_s=90,
    warmup_steps=2, timed_steps=3, dtypes=("fp32", "bf16"), mixer_n=256,
    recompile_lengths=(256, 320, 384, 448), bench_lengths=(1024, 4096), bench_models=None,
    bench_peers=("transformer",),
    bench=("--batch", "2", "--warmup", "1", "--repeats", "3", "--rounds", "2"),
    cli=("task.optim.batch_size=2",),  # the sample files hold a few rows: a batch must fit them
    cli_jobs=2,
)  # fmt: skip
DRY_RUN = Profile(
    name="dry-run", device="cpu", trainer="cpu", ddp_trainer="ddp_sim", overrides=TOY,
    budget_s=60, warmup_steps=1, timed_steps=2, dtypes=("fp32", "bf16"), mixer_n=64,
    recompile_lengths=(), bench_lengths=(32, 64), bench_models=("baseline",), bench_peers=(),
    bench=("--batch", "2", "--warmup", "0", "--repeats", "1", "--rounds", "1"),
    cli=("task.data.num_workers=0",), cli_jobs=2,
    threads=1,  # toy sizes gain nothing from threads, and OpenMP's spin when others hold the CPU
)  # fmt: skip


@dataclass
class Row:
    stage: str
    check: str
    status: str  # ok | fail | timeout | skip
    figure: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Point:
    """One check: `run()` gives its row(s) within `budget_s`. A `subprocess` point keeps that
    limit itself (the child's timeout); such points run side by side."""

    stage: str
    check: str
    run: Callable[[], Row | list[Row]]
    budget_s: float
    subprocess: bool = False


@dataclass(frozen=True)
class Run:
    """What every stage is handed."""

    profile: Profile
    work: Path  # a temporary folder: sample data, run directories
    out: Path  # --out: the bench's own table lands in out/bench
    budget_s: float  # per point


class PointTimeout(BaseException):
    """A point ran past its budget. Not an Exception: library code that catches those (compile
    fallbacks, Lightning's teardown) re-raises it rather than carrying on."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise PointTimeout in this (main) thread after `seconds`. Python code is interrupted
    between bytecodes, so a point stuck in one long C call ends when the call returns."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise PointTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(e: BaseException, width: int = 160) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= width else text[: width - 1] + "…"


def free_memory() -> None:
    """What one point held, released before the next: objects, CUDA blocks, compiled code (so no
    point inherits another's compilations or meets torch.compile's recompile limit)."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_point(point: Point) -> list[Row]:
    t0 = time.perf_counter()
    try:
        with time_limit(None if point.subprocess else point.budget_s):
            out = point.run()
        rows = out if isinstance(out, list) else [out]
    except PointTimeout:
        rows = [Row(point.stage, point.check, "timeout", f"over its {point.budget_s:g} s budget")]
    except Exception as e:
        rows = [Row(point.stage, point.check, "fail", one_line(e))]
    finally:
        if not point.subprocess:
            free_memory()
    seconds = time.perf_counter() - t0
    for row in rows:
        row.detail["point_seconds"] = round(seconds, 3)  # the whole point, building included
    statuses = ", ".join(f"{n} {s}" for s in STATUSES if (n := sum(r.status == s for r in rows)))
    statuses = rows[0].status if len(rows) == 1 else statuses
    print(f"gpucheck: {point.stage} {point.check}: {statuses} ({seconds:.1f} s)", file=sys.stderr)
    return rows


def run_stage(points: list[Point], jobs: int) -> list[Row]:
    """The points in order; those that keep their own limit `jobs` at a time."""
    if jobs > 1 and points and all(p.subprocess for p in points):
        with ThreadPoolExecutor(jobs) as pool:
            return [row for rows in pool.map(run_point, points) for row in rows]
    return [row for p in points for row in run_point(p)]


def run_config(profile: Profile, task: str, model: str, *extra: str) -> DictConfig:
    overrides = [f"task={task}", f"model={model}", f"trainer={profile.trainer}"]
    return match_parameters(compose([*overrides, *profile.overrides, *extra]))


# --- train: steps of every task x backbone ----------------------------------------------------


def random_batch(cfg: DictConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`batch` random examples, collated by the task's own DataModule (its padding, its
    inputs): random lengths for the families of varying length, the first at max_len."""
    rng = np.random.default_rng(seed)
    datamodule = build_datamodule(cfg)
    n = cfg.task.max_len
    padded = cfg.task.family in PADDED
    rows = []
    for i in range(batch):
        row: dict[str, Any] = {"label": int(rng.integers(cfg.task.num_classes))}
        for name in datamodule.inputs:
            length = int(rng.integers(max(1, n // 8), n + 1)) if padded and i else n
            row[name] = rng.integers(1, cfg.task.vocab_size, length)
        rows.append(row)
    return datamodule.collate(rows)


def attention_impls(net: torch.nn.Module, device: str) -> set[tuple[str, str]]:
    """(training, eval) implementation of each disentangled mixer in `net`, as it chooses."""
    return {
        (choose_impl(m.impl, device, m.d, m.dropout), choose_impl(m.impl, device, m.d, 0.0))
        for m in net.modules()
        if isinstance(m, DisentangledAttention)
    }


class Probe(pl.Callback):
    """Times each training step (synchronised) and inspects every step's gradients."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: list[float] = []
        self.unused: list[str] | None = None
        self.finite: torch.Tensor | None = None  # per parameter with a gradient, on the device
        self.names: list[str] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, i: int) -> None:
        self.sync()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self.t0)

    def on_after_backward(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if self.unused is None:
            self.unused = [n for n, p in params if p.grad is None]
        self.names = [n for n, p in params if p.grad is not None]
        finite = torch.stack([p.grad.isfinite().all() for _, p in params if p.grad is not None])
        self.finite = finite if self.finite is None else self.finite & finite  # no sync here

    def nonfinite(self) -> list[str]:
        if self.finite is None:
            return []
        return [n for n, ok in zip(self.names, self.finite.tolist(), strict=True) if not ok]


def fit_steps(cfg: DictConfig, batch: int, profile: Profile, root: Path) -> dict[str, Any]:
    """Warm-up + timed training steps and one validation step of `cfg`'s LightningModule, with
    the Trainer of cfg.trainer (precision, clipping) at `batch` examples per step."""
    cuda = profile.device == "cuda"
    module = build_module(cfg)
    data = random_batch(cfg, batch)
    steps = profile.warmup_steps + profile.timed_steps
    probe = Probe(cuda)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=False, callbacks=[probe], enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(root),
        max_steps=steps, val_check_interval=steps, limit_val_batches=1, num_sanity_val_steps=0,
        fast_dev_run=False,
    )  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train = DataLoader([data] * steps, batch_size=None)
    trainer.fit(
        module, train_dataloaders=train, val_dataloaders=DataLoader([data], batch_size=None)
    )
    return {
        "batch": batch,
        "n": int(next(iter(data.values())).shape[1]),
        "seconds_per_step": statistics.median(probe.seconds[profile.warmup_steps :]),
        "step_seconds": probe.seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "impls": sorted(attention_impls(module.net, profile.device)),
        "unused": probe.unused or [],
        "nonfinite": probe.nonfinite(),
        "steps": trainer.global_step,
    }


def train_point(profile: Profile, task: str, model: str, root: Path) -> Row:
    cfg = run_config(profile, task, model)
    batch = per_device_batch(cfg)  # the global batch, on one device
    oom_at: list[int] = []
    while True:
        try:
            facts = fit_steps(cfg, batch, profile, root)
            break
        except torch.cuda.OutOfMemoryError:
            oom_at.append(batch)
        free_memory()  # outside the except block: the traceback no longer holds the tensors
        if batch == 1:
            return Row("train", f"{task}/{model}", "fail", "OOM even at batch 1",
                       {"oom_at": oom_at})  # fmt: skip
        batch //= 2
    facts.update(oom_at=oom_at, params=int(cfg.params.total))
    status = "fail" if oom_at or facts["unused"] or facts["nonfinite"] else "ok"
    return Row("train", f"{task}/{model}", status, train_figure(facts), facts)


def train_figure(f: dict[str, Any]) -> str:
    parts = [f"B={f['batch']} n={f['n']}: {f['seconds_per_step']:.3g} s/step"]
    if f["peak_gib"] is not None:
        parts.append(f"{f['peak_gib']:.1f} GiB")
    if f["impls"]:
        parts.append("attn " + ", ".join(f"{t}/{e}" for t, e in f["impls"]))
    if f["oom_at"]:
        parts.append(f"OOM at B={f['oom_at'][0]}, largest that fits {f['batch']}")
    if f["unused"]:
        parts.append(f"no grad: {', '.join(f['unused'][:3])}" + ("…" * (len(f["unused"]) > 3)))
    if f["nonfinite"]:
        parts.append(f"non-finite grad: {', '.join(f['nonfinite'][:3])}")
    return ", ".join(parts)


def train_stage(run: Run) -> list[Point]:
    return [
        Point(
            "train",
            f"{task}/{model}",
            lambda t=task, m=model: train_point(run.profile, t, m, run.work),
            run.budget_s,
        )  # fmt: skip
        for task in configs("task")
        for model in configs("model")
    ]


# --- disentangled: sdpa and flex against eager ------------------------------------------------


def mixer_at(profile: Profile, task: str) -> tuple[DisentangledAttention, torch.nn.Module]:
    """The first layer's mixer and the shared table E of `task`'s matched disentangled network,
    on the device, attention dropout off (with dropout the outputs are not comparable). Its
    weights are seeded, so a check's figures are the same on every run. Unseeded, the dry run's
    worst bf16 gradient error on Path-X was 0.017-0.047 over 12 seeds against limits of
    0.050-0.073, and once 0.0500017 against 0.05: the dry run failed at random."""
    torch.manual_seed(0)
    net = build_net(run_config(profile, task, "disentangled"))
    mixer, table = net.encoder.blocks[0].mixer, net.encoder.shared
    mixer.dropout = 0.0
    return mixer.to(profile.device), table.to(profile.device)


def padded_inputs(mixer: DisentangledAttention, table: torch.nn.Module, n: int, device: str):
    """x [3, n, D], mask [3, n] (lengths n, 5n/8, n/4: right-padded) and the loss weights."""
    g = torch.Generator().manual_seed(0)
    D = table.E.shape[1]
    x = torch.randn(3, n, D, generator=g)
    lengths = torch.tensor([n, max(1, 5 * n // 8), max(1, n // 4)])
    mask = torch.arange(n)[None] < lengths[:, None]
    w = torch.randn(3, n, D, generator=g)
    return x.to(device), mask.to(device), w.to(device)


def forward_backward(mixer, table, x, mask, w, impl: str, dtype: str) -> dict[str, torch.Tensor]:
    """The output at real positions and the gradients of x and of every parameter (fp32)."""
    mixer.impl = impl
    for p in [*mixer.parameters(), *table.parameters()]:
        p.grad = None
    x = x.clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        out = mixer(x, mask, **table())
    (out.float() * w)[mask].sum().backward()
    named = [*mixer.named_parameters(), *(("E." + n, p) for n, p in table.named_parameters())]
    grads = {f"grad {n}": p.grad.float() for n, p in named if p.grad is not None}
    return {"out": out[mask].detach().float(), "grad x": x.grad.float(), **grads}


def worst_error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, str]:
    """max |got - ref| / max |ref| over the tensors; a tensor missing from `got` is an error."""
    missing = ref.keys() - got.keys()
    if missing:
        raise AssertionError(f"no {sorted(missing)[0]} from this implementation")
    errors = {
        k: ((got[k] - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
        for k, r in ref.items()
    }
    name = max(errors, key=errors.get)
    return errors[name], name


def flex_refusal(profile: Profile, head: int) -> str | None:
    """Why flex cannot run here (a skip), or None."""
    if profile.device != "cuda":
        return "flex runs compiled on CUDA only (its CPU reference has no backward)"
    try:
        choose_impl("flex", "cuda", head, 0.0)
    except ValueError:
        return f"head size {head} < {FLEX_MIN_HEAD}: choose_impl refuses flex on CUDA"
    return None


def compare_point(profile: Profile, task: str, impl: str) -> Row:
    check = f"{impl} vs eager: {task}"
    mixer, table = mixer_at(profile, task)
    n = min(profile.mixer_n, mixer.max_position)
    shape = f"heads {mixer.h}×{mixer.d} n={n}"
    why = flex_refusal(profile, mixer.d) if impl == "flex" else None
    if why:
        return Row("disentangled", check, "skip", f"{shape}: {why}", {"head": mixer.d})
    inputs = padded_inputs(mixer, table, n, profile.device)
    ref = forward_backward(mixer, table, *inputs, "eager", "fp32")
    errors, worst, limits, fails = {}, {}, {}, []
    for dtype in profile.dtypes:
        errors[dtype], worst[dtype] = worst_error(
            forward_backward(mixer, table, *inputs, impl, dtype), ref
        )
        limits[dtype] = TOLERANCE[dtype]
        if dtype == "bf16":  # bf16's own rounding, for scale: eager under bf16
            errors["eager bf16"], _ = worst_error(
                forward_backward(mixer, table, *inputs, "eager", dtype), ref
            )
            limits[dtype] = max(limits[dtype], BF16_OVER_EAGER * errors["eager bf16"])
        if not errors[dtype] <= limits[dtype]:
            fails.append(f"{dtype} {worst[dtype]} off by {errors[dtype]:.1e} > {limits[dtype]:.1e}")
    figure = f"{shape}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    if fails:
        figure += "; " + "; ".join(fails)
    detail = {"heads": mixer.h, "head": mixer.d, "n": n, "errors": errors, "worst": worst,
              "limits": limits}  # fmt: skip
    return Row("disentangled", check, "fail" if fails else "ok", figure, detail)


def recompile_point(profile: Profile, task: str = "text") -> Row:
    """Frames torch.compile compiles at each new length of the compiled flex path (forward +
    backward under bf16 autocast), counted by torch._dynamo.utils.counters["frames"]["total"]. The
    first length compiles and the second may recompile with dynamic shapes; a later length that
    compiles again means every length does, until the recompile limit sends flex to eager."""
    from torch._dynamo.utils import counters

    check = f"flex recompiles: {task}"
    mixer, table = mixer_at(profile, task)
    why = flex_refusal(profile, mixer.d) if profile.recompile_lengths else "no lengths to vary"
    if why:
        return Row("disentangled", check, "skip", why)
    torch._dynamo.reset()
    per_length = []
    for n in profile.recompile_lengths:
        before = counters["frames"]["total"]
        inputs = padded_inputs(mixer, table, n, profile.device)
        forward_backward(mixer, table, *inputs, "flex", "bf16")
        per_length.append(counters["frames"]["total"] - before)
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or getattr(
        torch._dynamo.config, "cache_size_limit", None
    )
    lengths = ", ".join(map(str, profile.recompile_lengths))
    figure = f"frames compiled at n = {lengths}: {per_length} (recompile limit {limit})"
    late = len(per_length) > 2 and per_length[-1] > 0
    detail = {"lengths": list(profile.recompile_lengths), "frames": per_length, "limit": limit}
    return Row("disentangled", check, "fail" if late else "ok", figure, detail)


def disentangled_stage(run: Run) -> list[Point]:
    points = [
        Point(
            "disentangled",
            f"{impl} vs eager: {task}",
            lambda t=task, i=impl: compare_point(run.profile, t, i),
            run.budget_s,
        )  # fmt: skip
        for task in configs("task")
        for impl in ("sdpa", "flex")
    ]
    recompiles = Point("disentangled", "flex recompiles: text",
                       lambda: recompile_point(run.profile), run.budget_s)  # fmt: skip
    return [*points, recompiles]


# --- bench: lra.bench at the text shape -------------------------------------------------------


def bench_rows(profile: Profile, out: Path) -> list[Row]:
    """`python -m lra.bench` (a command of its own: a process); its table is in out/bench."""
    overrides = [o for o in profile.overrides if not o.startswith("task.max_len=")]  # bench's n
    argv = ["--task", "text", "--device", profile.device,
            "--lengths", *map(str, profile.bench_lengths),
            "--models", *(profile.bench_models or configs("model")),
            "--peers", *profile.bench_peers, *profile.bench, "--out", str(out),
            *overrides]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "lra.bench", *argv], capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"lra.bench exited {proc.returncode}: {proc.stderr.strip()[-200:]}")
    with open(out / "efficiency.csv") as f:
        points = list(csv.DictReader(f))
    rows = []
    for p in points:
        check = f"text n={p['n']} {p['name']}"
        if p["error"]:
            rows.append(Row("bench", check, "fail", p["error"][:200], dict(p)))
            continue
        mfu = f"MFU {100 * float(p['mfu']):.1f}%" if p["mfu"] else "MFU n/a (CPU)"
        figure = f"B={p['batch']}: {float(p['steps_per_s']):.3g} steps/s, "
        figure += f"{float(p['peak_mb']):.0f} MiB, {mfu}"
        rows.append(Row("bench", check, "ok", figure, dict(p)))
    return rows


def bench_stage(run: Run) -> list[Point]:
    """One point, the whole bench: its budget is one point's per bench point."""
    p = run.profile
    points = len(p.bench_lengths) * (len(p.bench_models or configs("model")) + len(p.bench_peers))
    return [Point("bench", "lra.bench", lambda: bench_rows(p, run.out / "bench"),
                  run.budget_s * points)]  # fmt: skip


# --- cli: the real command line ----------------------------------------------------------------


def run_command(args: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """(exit code, stderr) of a command in its own session; past `timeout` the whole session is
    killed (data-loader workers too) and the code is None."""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HYDRA_FULL_ERROR": "1",  # so stderr ends with the error, not Hydra's hint
    }
    proc = subprocess.Popen(
        list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err
    return proc.returncode, err


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output on stderr)"


def cli_row(check: str, args: list[str], run_dir: Path, timeout: float, ddp: bool) -> Row:
    t0 = time.perf_counter()
    code, err = run_command(args, timeout)
    detail = {"command": " ".join(args[1:]), "exit": code, "stderr_tail": err[-2000:]}
    if code is None:
        return Row("cli", check, "timeout", f"over its {timeout:g} s budget", detail)
    if code != 0:
        return Row("cli", check, "fail", f"exit {code}: {last_line(err)}", detail)
    results = json.loads((run_dir / "results.json").read_text())
    detail["results"] = {k: results.get(k) for k in ("status", "steps", "test_acc", "reason")}
    figure = f"{results['steps']} steps, {time.perf_counter() - t0:.0f} s"
    if results.get("status") != "finished":
        return Row("cli", check, "fail", f"results.json status {results.get('status')}", detail)
    if ddp:
        ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
        detail["checkpoints"] = ckpts
        if "last.ckpt" not in ckpts or results.get("test_acc") is None:
            return Row("cli", check, "fail", f"checkpoints {ckpts}, test_acc "
                       f"{results.get('test_acc')}", detail)  # fmt: skip
        figure += f", tested, {', '.join(ckpts)}"
    return Row("cli", check, "ok", figure, detail)


def cli_stage(run: Run) -> list[Point]:
    profile, work, budget_s = run.profile, run.work, run.budget_s
    data = work / "data"
    write_all_tasks(data)
    base = [sys.executable, "-m", "lra.train", "logger=none", "trainer.enable_progress_bar=false",
            f"paths.data_dir={data}", f"paths.log_dir={work / 'outputs'}", *profile.overrides,
            *profile.cli]  # fmt: skip
    points = []
    for task in sample_tasks():
        run_dir = work / "runs" / task
        args = [*base, f"task={task}", f"trainer={profile.trainer}", "++trainer.fast_dev_run=true",
                f"hydra.run.dir={run_dir}"]  # fmt: skip
        points.append(Point("cli", f"train task={task}",
                            lambda a=args, r=run_dir, c=f"train task={task}":
                            cli_row(c, a, r, budget_s, ddp=False),
                            budget_s, subprocess=True))  # fmt: skip
    run_dir = work / "runs" / "ddp"
    check = f"trainer={profile.ddp_trainer} devices=1"
    args = [*base, "task=listops_small", f"trainer={profile.ddp_trainer}", "trainer.devices=1",
            "trainer.max_steps=2", "trainer.val_check_interval=1", "trainer.num_sanity_val_steps=0",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    ddp = Point("cli", check, lambda: cli_row(check, args, run_dir, budget_s, ddp=True), budget_s,
                subprocess=True)  # fmt: skip
    points.append(ddp)
    return points


STAGES: dict[str, Callable[[Run], list[Point]]] = {  # name -> the stage's points
    "train": train_stage,
    "disentangled": disentangled_stage,
    "bench": bench_stage,
    "cli": cli_stage,
}


# --- the table ----------------------------------------------------------------------------------


def markdown(rows: list[Row]) -> str:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| stage | check | status | figure |", "|---|---|---|---|"]
    lines += [f"| {r.stage} | {cell(r.check)} | {r.status} | {cell(r.figure)} |" for r in rows]
    return "\n".join(lines) + "\n"


def device_name(profile: Profile) -> str:
    if profile.device == "cuda":
        return torch.cuda.get_device_name(0)
    threads = profile.threads or torch.get_num_threads()
    return f"cpu ({threads} thread{'s' * (threads > 1)})"


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Lightning's per-Trainer banners and the warnings of toy runs (few workers, tiny batches)
    would bury the progress lines; the table and JSON say what matters."""
    lightning = logging.getLogger("pytorch_lightning")
    level = lightning.level
    lightning.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"pytorch_lightning\..*")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            yield
    finally:
        lightning.setLevel(level)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """`threads` torch threads in this process and (OMP_NUM_THREADS) in the processes it starts."""
    if threads is None:
        yield
        return
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


def check(profile: Profile, stages: Sequence[str], budget_s: float, out: Path) -> list[Row]:
    """The rows of `stages`, in order."""
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="gpucheck-") as tmp,
        quiet_libraries(),
        torch_threads(profile.threads),
    ):
        run = Run(profile, Path(tmp), out, budget_s)
        for name in stages:
            rows += run_stage(STAGES[name](run), profile.cli_jobs)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.gpucheck", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="the CPU at toy sizes")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds per point (gpu: 90, dry run: 60)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs/gpucheck"))
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    profile = DRY_RUN if args.dry_run else GPU
    budget_s = args.budget_s or profile.budget_s
    t0 = time.perf_counter()
    stages = [s for s in STAGES if s in args.stages]
    rows = check(profile, stages, budget_s, args.out)
    seconds = time.perf_counter() - t0
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    caption = (
        f"python -m lra.gpucheck{' --dry-run' if args.dry_run else ''}: {device_name(profile)}, "
        f"torch {torch.__version__}, {seconds:.0f} s; "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    )
    table = markdown(rows)
    write_text(args.out / "gpucheck.md", f"{caption}\n\n{table}")
    write_json(args.out / "gpucheck.json", {
        "profile": profile.name, "device": device_name(profile), "torch": torch.__version__,
        "stages": stages, "budget_s": budget_s, "seconds": seconds, "counts": counts,
        "rows": [dataclasses.asdict(r) for r in rows],
    })  # fmt: skip
    print(f"{caption}\n\n{table}", end="")
    print(f"wrote {args.out}/gpucheck.md, gpucheck.json")
    return 0 if counts["fail"] == counts["timeout"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

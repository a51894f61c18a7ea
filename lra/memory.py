"""Will this run fit on its GPU? Measured before training, so a run that cannot fit stops with the
settings that do, not with an out-of-memory error minutes in.

One training step (forward, loss, backward) of the run's own network is measured at per-device
batches of 1 and 2 at the task's full length, under the run's precision; the peak allocated memory
is affine in the batch (weights, gradients and optimizer state are fixed, activations grow with
it), so the peak at the run's per-device batch is the line through the two points, plus the
optimizer's state (AdamW: two fp32 copies of the weights). On CPU nothing is measured (the OS
reports no peak that the allocator's cache does not blur); the bounded-memory attention paths
keep the CPU runs within this machine's memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HEADROOM = 0.9  # of the free memory a run may plan to use: fragmentation, the CUDA context, NCCL


@dataclass(frozen=True)
class Estimate:
    per_sample: float  # bytes of activation per example of the per-device batch
    fixed: float  # bytes that do not grow with the batch: weights, gradients, optimizer state
    free: float  # bytes free on the device now

    def peak(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch

    def largest_batch(self) -> int:
        """The largest per-device batch that fits in HEADROOM of the free memory."""
        room = HEADROOM * self.free - self.fixed
        return max(0, math.floor(room / self.per_sample)) if self.per_sample > 0 else 1 << 30


def from_points(b1: float, b2: float, weights: int, free: float) -> Estimate:
    """The line through the peaks measured at batches 1 and 2, with AdamW's state added."""
    per_sample = max(0.0, b2 - b1)
    return Estimate(per_sample=per_sample, fixed=b1 - per_sample + 8 * weights, free=free)


def check_fits(est: Estimate, per_device: int, global_batch: int, accumulate: int) -> None:
    """Raise MemoryError naming settings that fit, if `per_device` does not."""
    gib = 2**30
    if est.peak(per_device) <= HEADROOM * est.free:
        return
    fits = est.largest_batch()
    hint = "no batch fits: use a smaller model, trainer.precision=bf16-mixed or more devices"
    if fits >= 1:
        k = math.ceil(per_device / fits) * accumulate
        hint = (f"a per-device batch of {fits} fits: keep task.optim.batch_size={global_batch} and "
                f"set trainer.accumulate_grad_batches={k} (the same global batch in {k} "
                "micro-batches), or add devices")  # fmt: skip
    raise MemoryError(
        f"this run needs about {est.peak(per_device) / gib:.1f} GiB on its GPU at a per-device "
        f"batch of {per_device} ({est.fixed / gib:.1f} GiB fixed + {est.per_sample / gib:.2f} GiB "
        f"per example), but {est.free / gib:.1f} GiB is free: {hint}"
    )


def measure_step_peak(net: nn.Module, batch: dict[str, torch.Tensor], precision: str) -> float:
    """Peak bytes allocated on CUDA by one forward + backward of `net` on `batch`."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in str(precision))
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with autocast:
        loss = nn.functional.cross_entropy(net(batch).float(), batch["label"])
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    net.zero_grad(set_to_none=True)
    return float(peak)


def full_length_batch(inputs: tuple[str, ...], batch: int, n: int, vocab: int, device: Any):
    """Random real tokens (no padding: the longest case) at the task's full length."""
    out = {k: torch.randint(1, vocab, (batch, n), device=device) for k in inputs}
    out["label"] = torch.zeros(batch, dtype=torch.long, device=device)
    return out


def estimate_cuda(
    net: nn.Module,
    inputs: tuple[str, ...],
    n: int,
    vocab: int,
    precision: str,
    device: torch.device,
) -> Estimate:
    """Measure `net` (already on `device`) at batches 1 and 2; leaves it as it was."""
    net.train()
    peaks = [
        measure_step_peak(net, full_length_batch(inputs, b, n, vocab, device), precision)
        for b in (1, 2)
    ]
    free, _ = torch.cuda.mem_get_info(device)
    weights = sum(p.numel() for p in net.parameters() if p.requires_grad)
    base = torch.cuda.memory_allocated(device)
    return from_points(peaks[0], peaks[1], weights, free + base)


def check_run(
    net: nn.Module,
    device: torch.device,
    *,
    inputs: tuple[str, ...],
    n: int,
    vocab: int,
    precision: str,
    per_device: int,
    global_batch: int,
    accumulate: int,
) -> Estimate:
    """Measure the run's network on its GPU and raise MemoryError if its batch cannot fit. The
    network goes back where it was (Lightning moves it when training starts)."""
    home = next(net.parameters()).device
    net.to(device)
    try:
        est = estimate_cuda(net, inputs, n, vocab, precision, device)
    finally:
        net.to(home)
        torch.cuda.empty_cache()
    check_fits(est, per_device, global_batch, accumulate)
    return est


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory: on CUDA the most the caching allocator held (max_memory_allocated),
    elsewhere the process's peak resident set (ru_maxrss), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
